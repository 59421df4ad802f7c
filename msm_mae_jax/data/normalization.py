"""Log-mel normalisation statistics: one scalar mean and std, as the official recipe.

`NormAccumulator` computes them in one streaming pass over chunks of values (float64 count,
mean and sum of squared deviations, merged with Chan et al.'s parallel update), so a corpus
never has to fit in memory and per-shard statistics combine exactly. `NormStats.normalize`
is the one place `(lms - mean) / std` is written for host code.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np

from msm_mae_jax.core import fs, json_files
from msm_mae_jax.core.errors import DataError

F32_EPS = float(np.finfo(np.float32).eps)  # torch.finfo().eps, added to the official std
# How pre-training estimates them (config.data.norm_stats_method; data/pipeline.py): the
# official definition (crops with their zero padding) or the crops' real frames only.
NORM_STATS_METHODS = ("official", "frames")


@dataclasses.dataclass(frozen=True)
class NormStats:
    """Dataset statistics of log-mel values; normalised = (lms - mean) / std."""

    mean: float
    std: float

    def __post_init__(self):
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise ValueError(f"invalid normalisation statistics mean={self.mean} std={self.std}")

    def normalize(self, lms: Any) -> Any:
        """(lms - mean) / std for numpy arrays, jax arrays and tf tensors (dtype kept)."""
        # Python floats are weakly typed in numpy, jax and tf: a float32 input stays float32.
        return (lms - float(self.mean)) / float(self.std)

    def to_dict(self) -> dict[str, float]:
        return {"mean": float(self.mean), "std": float(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> NormStats:
        return cls(mean=float(d["mean"]), std=float(d["std"]))

    def save(self, path: str) -> None:
        """Atomic: never a half-written file (local path or URL)."""
        fs.write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str, hint: str = "") -> NormStats:
        """From a JSON file; a DataError naming it (and `hint`: what to do) when damaged."""
        d = json_files.read_object(path, "the normalisation statistics", ("mean", "std"), hint)
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as e:
            hint = f"; {hint}" if hint else ""
            raise DataError(
                f"{path}: the normalisation statistics are damaged ({e}){hint}"
            ) from None


@dataclasses.dataclass
class NormAccumulator:
    """Streaming mean/std of values: `add` chunks, `merge` other accumulators, `stats()`.

    State: the number of values, their mean and the sum of squared deviations from it (m2),
    all float64. A chunk's own (n, mean, m2) is computed in two passes over the chunk, then
    merged (Chan, Golub & LeVeque), which stays accurate where sum / sum-of-squares cancels.
    """

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: Any) -> NormAccumulator:
        """Adds every element of `values` (any shape); returns self."""
        x = np.asarray(values, np.float64).ravel()
        if x.size:
            mean_b = float(x.mean())
            self.merge(NormAccumulator(int(x.size), mean_b, float(np.square(x - mean_b).sum())))
        return self

    def merge(self, other: NormAccumulator) -> NormAccumulator:
        """Adds the values another accumulator has seen; returns self."""
        if other.count == 0:
            return self
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean += delta * other.count / total
        self.m2 += other.m2 + delta * delta * self.count * other.count / total
        self.count = total
        return self

    def stats(self, unbiased: bool = False, eps: float = 0.0) -> NormStats:
        """Mean and std of everything added: the population std (ddof=0), or with `unbiased`
        the sample std (ddof=1, torch's default); `eps` is added to the std (the official
        statistics add float32's eps, `F32_EPS`). ValueError when empty (or one value with
        `unbiased`)."""
        ddof = int(unbiased)
        if self.count <= ddof:
            raise ValueError("no values to compute normalisation statistics from")
        std = math.sqrt(max(self.m2, 0.0) / (self.count - ddof))
        return NormStats(float(self.mean), std + float(eps))

    def to_dict(self) -> dict[str, Any]:
        return {"count": int(self.count), "mean": float(self.mean), "m2": float(self.m2)}

    @classmethod
    def from_dict(cls, d: dict) -> NormAccumulator:
        return cls(int(d["count"]), float(d["mean"]), float(d["m2"]))
