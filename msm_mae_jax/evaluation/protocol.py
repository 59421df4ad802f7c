"""What the linear evaluation evaluates (`Model`) and how (`Protocol`): the arguments that
`linear.evaluate` and a suite (`suite.run_suite`) take alike, and the identities that key a
suite's finished results.

    result = linear.evaluate(task, Model(checkpoint="runs/base"), Protocol(seeds=(42,)))
"""

from __future__ import annotations

import dataclasses

from msm_mae_jax.evaluation.embeddings import CACHE_VERSION, FIT, model_identity
from msm_mae_jax.model.config import ModelConfig, load_model_config

EVAR_SEEDS = (42, 43, 44)  # EVAR's 2pass_lineareval.py: seed 42, then 43 and 44


@dataclasses.dataclass(frozen=True)
class Model:
    """What is evaluated: a checkpoint, or a baseline (with the random one's model config)."""

    checkpoint: str | None = None
    baseline: str | None = None
    config: str | ModelConfig | None = None  # the random baseline's (default: ViT-B 80x208)

    def label(self) -> str:
        if self.checkpoint:
            return self.checkpoint
        return f"baseline {self.baseline}" + (f" ({self.config})" if self.config else "")

    def identity(self) -> str | dict:
        return model_identity(self.checkpoint, self.baseline, self.config, 0)

    def input_prefix(self) -> str | None:
        """The random baseline's input and patch size (a checkpoint's comes with results)."""
        if self.baseline == "random":
            return load_model_config(self.config).run_name_prefix
        return None


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The evaluation settings every task shares (unit_sec comes from each task); `label` and
    `split_seed` say how a suite reads its task CSVs."""

    seeds: tuple[int, ...] = EVAR_SEEDS
    norm: str = "task"
    layers: str | None = None
    layer_mode: str = "separate"
    probe_kw: dict = dataclasses.field(default_factory=dict)
    label: str = "label"
    split_seed: int = 0

    def identity(self) -> dict:
        return {
            "fit": FIT,
            "cache_version": CACHE_VERSION,
            **{k: v for k, v in dataclasses.asdict(self).items() if k != "seeds"},
            "seeds": list(self.seeds),
        }
