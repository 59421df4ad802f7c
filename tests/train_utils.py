"""The small training set-up shared by the trainer tests (in-process and multi-process)."""

import json
import os

from msm_mae_jax.core.config_files import load_config
from msm_mae_jax.train import checkpoints

# configs/msm_mae.py:tiny shrunk to seconds per run (dotted keys, as --config.key=value).
TINY_OVERRIDES = {
    "batch_size": 8,
    "warmup_steps": 1,
    "log_every_steps": 1,
    "ckpt_every_steps": 2,
    "figure_every_steps": 0,
    "probe.every_steps": 0,
    "data.synthetic_clips": 64,
    "data.synthetic_seconds": 2.5,
    "data.norm_stats_crops": 16,
}


def tiny_config(steps: int = 3, **overrides):
    """The tiny config with TINY_OVERRIDES, `steps` total steps and further dotted overrides."""
    return load_config("tiny", {**TINY_OVERRIDES, "total_steps": steps, **overrides})


def read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def final_params(workdir: str, step: int):
    return checkpoints.load_state_numpy(workdir, step)[0]["params"]
