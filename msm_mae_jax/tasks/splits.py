"""Train/valid/test assignments of a task's clips: folds, stratified seeded splits, and the
validation set held out of training when a task has none (EVAR's 10 %)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

SPLIT_NAMES = ("train", "valid", "test")
VALID_FRACTION = 0.1


@dataclasses.dataclass(frozen=True)
class Fold:
    """One train/valid/test assignment: indices into the task's clips."""

    name: str
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)}


def stratified_split(strata: Sequence, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Splits positions 0..N-1 into len(fractions)+1 parts, stratified, with a seeded shuffle.

    Part k gets round(fractions[k] * N) items in all, shared among the strata in proportion
    to their sizes (largest remainders); the last part (training) gets the rest, and every
    stratum keeps at least one item there.
    """
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    keys = sorted(set(strata.tolist()), key=str)
    members = [np.flatnonzero(strata == s) for s in keys]
    members = [idx[rng.permutation(len(idx))] for idx in members]
    sizes = np.array([len(m) for m in members])
    left = sizes - 1  # items each stratum can still give away
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    start = np.zeros(len(keys), np.int64)
    for k, frac in enumerate(fractions):
        quota = frac * sizes
        take = np.minimum(np.floor(quota).astype(np.int64), left)
        extra = int(round(frac * len(strata))) - int(take.sum())
        # hand the remaining items to the largest remainders (random tie-break)
        order = np.lexsort((rng.random(len(keys)), -(quota - np.floor(quota))))
        for j in order:
            if extra <= 0:
                break
            if take[j] < left[j]:
                take[j] += 1
                extra -= 1
        for j, idx in enumerate(members):
            parts[k].extend(idx[start[j] : start[j] + take[j]].tolist())
        start += take
        left -= take
    for j, idx in enumerate(members):
        parts[-1].extend(idx[start[j] :].tolist())
    return [np.sort(np.asarray(p, np.int64)) for p in parts]


def valid_from_train(
    train: np.ndarray, strata: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train, valid): a stratified VALID_FRACTION of the training clips held out."""
    # at least one validation clip: early stopping needs a validation score
    frac = max(VALID_FRACTION, 1.0 / len(train)) if len(train) >= 2 else 0.0
    valid, rest = stratified_split(strata[train], [frac], seed)
    return train[rest], train[valid]


def strata_of(y: np.ndarray, multilabel: bool) -> np.ndarray:
    """What stratified splits keep in proportion: the class, or a multi-label clip's label set."""
    if multilabel:
        return np.array([";".join(map(str, np.flatnonzero(r))) for r in y])
    return y
