"""Log-mel normalisation statistics: one scalar mean and std, as the official recipe."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np


@dataclasses.dataclass(frozen=True)
class NormStats:
    """Dataset statistics of log-mel values; normalised = (lms - mean) / std."""

    mean: float
    std: float

    def __post_init__(self):
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise ValueError(f"invalid normalisation statistics mean={self.mean} std={self.std}")

    def to_dict(self) -> dict[str, float]:
        return {"mean": float(self.mean), "std": float(self.std)}

    @classmethod
    def from_dict(cls, d) -> NormStats:
        return cls(mean=float(d["mean"]), std=float(d["std"]))

    @classmethod
    def from_values(cls, values) -> NormStats:
        """Statistics of an array (or list of arrays) of log-mel values."""
        if isinstance(values, (list, tuple)):
            values = np.concatenate([np.asarray(v, np.float64).ravel() for v in values])
        v = np.asarray(values, np.float64)
        return cls(mean=float(v.mean()), std=float(v.std()))

    def save(self, path: str) -> None:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_dict(), f)
        os.replace(tmp, path)  # atomic: never a half-written file

    @classmethod
    def load(cls, path: str) -> NormStats:
        with open(path) as f:
            return cls.from_dict(json.load(f))


def normalize(lms, stats: NormStats):
    """(lms - mean) / std; works on numpy, jax and tf tensors."""
    return (lms - stats.mean) / stats.std
