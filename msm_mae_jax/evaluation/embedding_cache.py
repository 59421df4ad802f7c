"""Clip embeddings of a task, and their cache on disk.

`Features` (a dict: feature set -> [N, D], each clip's test fit, or its training fit when it is
never tested) carries beside it the training fit of the clips that are tested in one fold,
trained on in another and longer than the unit (`alt_index` [K], `alt`: set -> [K, D]).

A cache entry is one .npz keyed by (model identity, clips, settings), written atomically.
An entry that cannot be read, or that does not hold what the key promises (a row per clip of
the task, 2-D arrays of one width per feature set, finite values, training rows of existing
clips), is a miss: recomputed and replaced.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zipfile

import numpy as np

from msm_mae_jax.core import fs

logger = logging.getLogger(__name__)

META, ALT_INDEX, ALT_SUFFIX = "__meta__", "__alt_index__", "@train"


class Features(dict):
    """Feature set name -> [N, D] (see the module docstring)."""

    def __init__(
        self,
        feats: dict[str, np.ndarray],
        alt_index: np.ndarray | None = None,
        alt: dict[str, np.ndarray] | None = None,
    ):
        super().__init__(feats)
        self.alt_index = np.zeros(0, np.int64) if alt_index is None else np.asarray(alt_index)
        self.alt = dict(alt or {})

    def train_rows(self, name: str) -> np.ndarray:
        """[N, D] with every clip in its training fit."""
        x = self[name]
        if len(self.alt_index) == 0:
            return x
        x = x.copy()
        x[self.alt_index] = self.alt[name]
        return x


def cache_path(cache_dir: str, key: dict) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return fs.join(cache_dir, f"{digest}.npz")


def save(path: str, feats: Features, meta: dict) -> None:
    """Writes an entry atomically (a reader never sees a partial file); a cache that cannot
    be written is reported, not an error: the results do not depend on it."""
    arrays = {META: np.array(json.dumps(meta)), ALT_INDEX: feats.alt_index, **feats}
    for name, x in feats.items():  # every set has its training rows, [0, D] when there are none
        arrays[name + ALT_SUFFIX] = feats.alt.get(name, np.zeros((0, x.shape[1]), x.dtype))
    try:
        fs.makedirs(fs.dirname(path))
        with fs.atomic_write(path, "wb") as f:
            np.savez(f, **arrays)
    except OSError as e:
        logger.warning("could not write the embedding cache entry %s: %s", path, e)


# What a damaged entry raises: zip structure (truncated, overwritten), a cut member (EOF), bad
# JSON or a missing member, an unreadable file.
_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def load(path: str, clips: int) -> tuple[Features, dict] | None:
    """The entry at `path` for a task of `clips` clips, or None when there is none or it is
    unreadable or invalid (a miss)."""
    if not fs.isfile(path):
        return None
    try:
        with np.load(io.BytesIO(fs.read_bytes(path))) as z:
            meta = json.loads(str(z[META]))
            arrays = {k: z[k] for k in z.files if k != META}
        feats = _features(arrays, clips)
        _check_meta(meta, clips)
    except _READ_ERRORS as e:
        logger.warning("embedding cache entry %s is unusable (%s); recomputing", path, e)
        return None
    return feats, meta


def _check_meta(meta: object, clips: int) -> None:
    if not isinstance(meta, dict) or not isinstance(meta.get("skipped", []), list):
        raise ValueError("metadata is not a dict with a list of skipped clips")
    for s in meta.get("skipped", []):
        if not (
            isinstance(s, dict) and isinstance(s.get("index"), int) and 0 <= s["index"] < clips
        ):
            raise ValueError(f"skipped clip {s!r} is not a clip of the task")


def _features(arrays: dict[str, np.ndarray], clips: int) -> Features:
    """Features from an entry's arrays; ValueError naming what does not fit."""
    alt_index = arrays.pop(ALT_INDEX)
    alt = {k[: -len(ALT_SUFFIX)]: arrays.pop(k) for k in list(arrays) if k.endswith(ALT_SUFFIX)}
    if not arrays:
        raise ValueError("no feature set")
    k = len(alt_index)
    if alt_index.ndim != 1 or not np.issubdtype(alt_index.dtype, np.integer):
        raise ValueError(f"training-row index of shape {alt_index.shape}")
    if k and (alt_index.min() < 0 or alt_index.max() >= clips or len(np.unique(alt_index)) < k):
        raise ValueError("training-row index outside the task's clips")
    if set(alt) != set(arrays):
        raise ValueError(f"training rows of {sorted(alt)} for feature sets {sorted(arrays)}")
    for name, x in arrays.items():
        rows = alt.get(name)
        if x.ndim != 2 or x.shape[0] != clips:
            raise ValueError(f"{name!r} has shape {x.shape}; the task has {clips} clips")
        if rows is not None and rows.shape != (k, x.shape[1]):
            raise ValueError(
                f"{name!r} training rows have shape {rows.shape}, not {(k, x.shape[1])}"
            )
        if not (np.isfinite(x).all() and (rows is None or np.isfinite(rows).all())):
            raise ValueError(f"{name!r} holds NaN or Inf")
    return Features(arrays, alt_index.astype(np.int64), alt)
