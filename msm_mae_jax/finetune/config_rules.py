"""What each numeric key of a fine-tuning config (configs/finetune.py) may be.

Checked before jax starts (`msm-mae finetune`) and again by `run.finetune`; the sentinels
are the config file's own ("optim.lr 0: from blr", "early_stop_patience -1: never stop").
"""

from __future__ import annotations

import ml_collections

from msm_mae_jax.core.config_checks import (
    ANY,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    Rule,
    at_least,
    check,
    each,
    in_range,
    interval,
)

RULES: dict[str, Rule] = {
    "seed": ANY,
    "num_seeds": POSITIVE,
    "batch_size": POSITIVE,
    "grad_accum_steps": POSITIVE,
    "epochs": POSITIVE,
    "warmup_epochs": NON_NEGATIVE,
    "eval_every_steps": at_least(0, " (0: every epoch)"),
    "early_stop_patience": at_least(-1, " (-1: never stop)"),
    "optim.lr": at_least(0, " (0: from optim.blr)"),
    "optim.blr": POSITIVE,
    "optim.min_lr": NON_NEGATIVE,
    "optim.b1": FRACTION,
    "optim.b2": FRACTION,
    "optim.momentum": FRACTION,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.layer_decay": in_range(0, 1, lo_open=True),
    "optim.grad_clip_norm": at_least(0, " (0: off)"),
    "model.drop_path": FRACTION,
    "head.init_std": POSITIVE,
    "label_smoothing": FRACTION,
    "augment.mixup": at_least(0, " (0: off)"),
    "augment.freq_mask": at_least(0, " (0: off)"),
    "augment.time_mask": at_least(0, " (0: off)"),
    "augment.rrc_canvas": each(at_least(1), 2),
    "augment.rrc_freq_scale": interval(),
    "augment.rrc_time_scale": interval(),
    "data.crop_frames": at_least(0, " (0: the model's input width)"),
    "data.unit_sec": at_least(0, " (0: whole clips)"),
    "data.eval_batch_size": POSITIVE,
    "log_every_steps": POSITIVE,
    "ckpt_every_steps": at_least(0, " (0: after every evaluation)"),
    "keep_checkpoints": POSITIVE,
    "num_processes": at_least(0, " (0: detected)"),
    "process_id": at_least(-1, " (-1: detected)"),
}


def check_config(config: ml_collections.ConfigDict) -> None:
    """ConfigError naming the first key whose value is invalid."""
    check(config, RULES)
