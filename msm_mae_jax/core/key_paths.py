"""The name of a leaf of a pytree from its key path: 'params/encoder/blocks_0/attn/qkv/kernel'.

jax names a step of a key path by the container it goes through: a dict key (`DictKey.key`),
a dataclass or named-tuple field (`GetAttrKey.name`), a list index (`SequenceKey.idx`). The
names here take whichever the step has, so a tree reads the same as a dataclass or as the
plain dicts it is restored to (checksums recorded at a save match at a restore).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def key_names(path: Sequence[Any]) -> tuple[str, ...]:
    """The name of each step of a jax key path (str of the step where it has none)."""
    names = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                names.append(str(getattr(k, attr)))
                break
        else:
            names.append(str(k))
    return tuple(names)


def path_name(path: Sequence[Any]) -> str:
    """'params/encoder/blocks_0/attn/qkv/kernel': the key path's names joined by '/'."""
    return "/".join(key_names(path))
