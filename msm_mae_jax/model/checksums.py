"""Checksums of arrays: what a checkpoint or an export records at save and checks at load.

The checksum of an array is 64 bits computed from its bit pattern (the bytes as stored):
the elements as unsigned integers u_i (8/16-bit types widened, PRNG keys as their key data)
and two sums mod 2^32, `sum u_i (2 i + 1)` and `sum u_i`. A flipped bit changes u_i by +-2^b
and so the first sum by an odd multiple of 2^b: every single-bit flip is detected (and other
damage but for a ~2^-32 chance). Arrays in host memory (numpy, jax on CPU) are summed by
numpy in blocks (~1 ns per element); arrays on accelerators or sharded over processes in one
jitted pass where they live (every process gets the same value), so a GPU/TPU state is never
copied to the host for it. Both give the same numbers (integer sums wrap exactly alike).

`tree_checksums(tree)` -> {path: 16 hex digits}; `first_mismatch(tree, recorded)` names the
first array whose checksum differs from the recorded one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from msm_mae_jax.core.key_paths import path_name

_BLOCK = 1 << 18  # elements per numpy step: the temporaries stay in the cache
_MASK = 0xFFFFFFFF


def _uint_view(dtype: Any) -> Any:
    return {1: np.uint8, 2: np.uint16, 4: np.uint32}.get(np.dtype(dtype).itemsize)


def _host_sums(a: np.ndarray) -> tuple[int, int]:
    """(sum u_i (2 i + 1), sum u_i) mod 2^32 of a host array's bit patterns."""
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    view = _uint_view(a.dtype)
    if view is None:
        raise TypeError(f"checksums of {a.dtype} arrays are not supported")
    u_all = np.ascontiguousarray(a).reshape(-1).view(view)
    base = 2 * np.arange(min(_BLOCK, max(u_all.shape[0], 1)), dtype=np.uint32) + 1
    w, tmp = np.empty_like(base), np.empty_like(base)
    h1 = h2 = 0
    for s in range(0, u_all.shape[0], _BLOCK):
        u = u_all[s : s + _BLOCK].astype(np.uint32, copy=view is not np.uint32)
        k = u.shape[0]
        np.add(base[:k], np.uint32((2 * s) & _MASK), out=w[:k])
        np.multiply(u, w[:k], out=tmp[:k])
        h1 = (h1 + int(np.add.reduce(tmp[:k], dtype=np.uint32))) & _MASK
        h2 = (h2 + int(np.add.reduce(u, dtype=np.uint32))) & _MASK
    return h1, h2


def _words(x: jax.Array) -> jax.Array:
    """The elements' bit patterns as uint32 [n]."""
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    view = _uint_view(x.dtype)
    if view is None:
        raise TypeError(f"checksums of {x.dtype} arrays are not supported")
    return jax.lax.bitcast_convert_type(x, view).reshape(-1).astype(jnp.uint32)


@jax.jit
def _device_sums(leaves: list[jax.Array]) -> jax.Array:
    out = []
    for x in leaves:
        u = _words(x)
        i = jnp.arange(u.shape[0], dtype=jnp.uint32)
        out += [jnp.sum(u * (2 * i + 1), dtype=jnp.uint32), jnp.sum(u, dtype=jnp.uint32)]
    return jnp.stack(out) if out else jnp.zeros(0, jnp.uint32)


def _on_host(x: Any) -> bool:
    if isinstance(x, np.ndarray | np.generic):
        return True
    return bool(
        isinstance(x, jax.Array)
        and x.is_fully_addressable
        and all(d.platform == "cpu" for d in x.devices())
    )


def tree_checksums(tree: Any) -> dict[str, str]:
    """{path_name(path): 16 hex digits} of every array leaf of `tree` (jax or numpy arrays)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    leaves = [
        jax.random.key_data(x)
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
        else x
        for _, x in flat
    ]
    if all(_on_host(x) for x in leaves):
        sums = [h for x in leaves for h in _host_sums(np.asarray(x))]
    else:
        sums = [int(h) for h in np.asarray(_device_sums([jnp.asarray(x) for x in leaves]))]
    return {
        path_name(path): f"{sums[2 * k]:08x}{sums[2 * k + 1]:08x}"
        for k, (path, _) in enumerate(flat)
    }


def first_mismatch(tree: Any, recorded: dict[str, str] | None) -> str | None:
    """'checksum mismatch in PATH' for the first array of `tree` whose checksum differs from
    `recorded` (arrays `recorded` lacks are not checked); None if all agree or nothing was
    recorded (saved before checksums were)."""
    if not recorded:
        return None
    for path, value in tree_checksums(tree).items():
        if path in recorded and recorded[path] != value:
            return f"checksum mismatch in {path} (the data changed since it was saved)"
    return None
