"""What each numeric key of a pre-training config (configs/msm_mae.py) may be.

Checked before jax starts (`msm-mae train`) and again by `train_and_evaluate`; the sentinels
are the config file's own ("total_steps 0: from epochs", "warmup_steps -1: from
warmup_epochs", "optim.lr 0: from blr").
"""

from __future__ import annotations

import os
import re

import ml_collections

from msm_mae_jax.core import fs
from msm_mae_jax.core.config_checks import (
    ANY,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    Rule,
    at_least,
    check,
    each,
)
from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.data.normalization import NORM_STATS_METHODS
from msm_mae_jax.model.config import ModelConfig

RULES: dict[str, Rule] = {
    "seed": ANY,
    "batch_size": POSITIVE,
    "grad_accum_steps": POSITIVE,
    "total_steps": at_least(0, " (0: from epochs)"),
    "epochs": NON_NEGATIVE,
    "steps_per_epoch": at_least(0, " (0: from the dataset size)"),
    "warmup_epochs": NON_NEGATIVE,
    "warmup_steps": at_least(-1, " (-1: from warmup_epochs)"),
    "optim.blr": POSITIVE,
    "optim.lr": at_least(0, " (0: from optim.blr)"),
    "optim.min_lr": NON_NEGATIVE,
    "optim.b1": FRACTION,
    "optim.b2": FRACTION,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.grad_clip_norm": at_least(0, " (0: off)"),
    "model.input_size": each(POSITIVE, 2),
    "model.patch_size": each(POSITIVE, 2),
    "model.embed_dim": POSITIVE,
    "model.depth": POSITIVE,
    "model.num_heads": POSITIVE,
    "model.mlp_ratio": POSITIVE,
    "model.decoder_embed_dim": POSITIVE,
    "model.decoder_depth": POSITIVE,
    "model.decoder_num_heads": POSITIVE,
    "model.mask_ratio": FRACTION,
    "data.shuffle_buffer": POSITIVE,
    "data.max_clip_seconds": at_least(0, " (0: whole files)"),
    "data.norm_stats_crops": POSITIVE,
    "data.norm_mean": ANY,
    "data.norm_std": at_least(0, " (0: estimated from the data)"),
    "data.tfds_sample_rate": at_least(0, " (0: the dataset's)"),
    "data.synthetic_clips": POSITIVE,
    "data.synthetic_seconds": POSITIVE,
    "data.synthetic_seed": ANY,
    "data.prefetch": at_least(-1, " (-1: TensorFlow's autotune)"),
    "num_processes": at_least(0, " (0: detected)"),
    "process_id": at_least(-1, " (-1: detected)"),
    "log_every_steps": POSITIVE,
    "ckpt_every_steps": POSITIVE,
    "keep_checkpoints": POSITIVE,
    "figure_every_steps": at_least(0, " (0: off)"),
    "figure_clips": POSITIVE,
    "probe.every_steps": at_least(0, " (0: off)"),
    "probe.max_train": POSITIVE,
    "probe.max_test": POSITIVE,
}


_AT_STEP = re.compile(r"^(?P<path>.+)@(?P<step>\d+)$")


def split_init_from(spec: str) -> tuple[str, int | None]:
    """`config.init_from` 'DIR@STEP' -> (DIR, STEP); anything else -> (spec, None)."""
    m = _AT_STEP.match(spec)
    return (m["path"], int(m["step"])) if m else (spec, None)


def check_init_from(config: ml_collections.ConfigDict, workdir: str) -> None:
    """The init source exists where the run starts fresh (a resumed run never reads it);
    ConfigError otherwise. What it holds is checked when training starts."""
    spec = str(config.init_from)
    if not spec:
        return
    path, _ = split_init_from(spec)
    if fs.exists(path):
        return
    ckpts = fs.join(workdir, "checkpoints")
    if fs.isdir(ckpts) and any(n.isdigit() for n in fs.listdir(ckpts)):
        return  # resuming
    raise ConfigError(
        f"config.init_from={spec!r}: {path} does not exist (relative paths start at {os.getcwd()})"
    )


def check_config(config: ml_collections.ConfigDict) -> None:
    """ConfigError naming the first key whose value is invalid (the model's keys as
    `ModelConfig` checks them too, the statistics' method and the init source's spelling)."""
    check(config, RULES)
    method = config.data.norm_stats_method
    if method not in NORM_STATS_METHODS:
        raise ConfigError(
            f"config.data.norm_stats_method={method!r}; expected one of {NORM_STATS_METHODS}"
        )
    if not isinstance(config.init_from, str):
        raise ConfigError(f"config.init_from={config.init_from!r} must be a path or URL ('': none)")
    if config.data.norm_from_init and not config.init_from:
        raise ConfigError(
            "config.data.norm_from_init=True keeps the statistics of config.init_from, "
            "which is not set (--init-from SRC)"
        )
    if config.data.norm_from_init and config.data.norm_std > 0:
        raise ConfigError(
            "config.data.norm_from_init=True and config.data.norm_std > 0 both give the "
            "statistics; set one"
        )
    ModelConfig.from_dict(config.model)
