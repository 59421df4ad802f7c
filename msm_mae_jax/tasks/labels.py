"""A task's label strings -> class ids (single-label) or multi-hot rows (multi-label).

A label holding a `,` or a `;` makes the task multi-label: EVAR's metadata CSVs write a
clip's labels comma-separated in one quoted field (`"Bark,Dog"`, FSD50K); `;` is accepted
too. Label names are stripped of surrounding spaces; classes are sorted by name (as EVAR's
`sorted(df.label.unique())` and `MultiLabelBinarizer`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from msm_mae_jax.core.errors import TaskError

SEPARATORS = ",;"
_SPLIT = re.compile(f"[{re.escape(SEPARATORS)}]")


def is_multilabel(raw: Sequence[str]) -> bool:
    return any(_SPLIT.search(str(r)) for r in raw)


def encode_labels(raw: Sequence[str], where: str) -> tuple[np.ndarray, list[str], bool]:
    """(y, class names, multilabel): y int64 [N] class ids, or int32 [N, C] multi-hot."""
    raw = [str(r).strip() for r in raw]
    empty = [i for i, r in enumerate(raw) if not r]
    if empty:
        raise TaskError(
            f"{where}: empty label in {len(empty)} row(s), first at data row {empty[0] + 1}"
        )
    if is_multilabel(raw):
        sets = [[t.strip() for t in _SPLIT.split(r) if t.strip()] for r in raw]
        bare = [i for i, s in enumerate(sets) if not s]
        if bare:
            raise TaskError(
                f"{where}: label {raw[bare[0]]!r} at data row {bare[0] + 1} names no class"
            )
        names = sorted({t for s in sets for t in s})
        index = {n: k for k, n in enumerate(names)}
        y = np.zeros((len(raw), len(names)), np.int32)
        for i, s in enumerate(sets):
            y[i, [index[t] for t in s]] = 1
        return y, names, True
    names = sorted(set(raw))
    index = {n: k for k, n in enumerate(names)}
    return np.array([index[r] for r in raw], np.int64), names, False
