"""AdamW as MAE: scaled lr, per-step linear warm-up, half-cycle cosine, masked weight decay."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.core.key_paths import key_names
from msm_mae_jax.model.state_dict import official_name


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Step counts of a run, resolved from the config (epochs -> steps)."""

    total_steps: int
    steps_per_epoch: int
    warmup_steps: int
    base_lr: float
    min_lr: float


def base_learning_rate(config) -> float:
    """optim.lr when > 0, else optim.blr x batch_size / 128 (the MAE scaling rule)."""
    if config.optim.lr > 0:
        return float(config.optim.lr)
    return float(config.optim.blr) * config.batch_size / 128


def resolve_schedule(config, num_clips: Callable[[], int] | int | None = None) -> Schedule:
    """Steps from config.total_steps, or epochs x steps/epoch (from the dataset size).

    `num_clips` (an int or a callable, called only when needed) gives the training set size.
    """
    spe = int(config.steps_per_epoch)
    need_spe = spe <= 0 and (config.total_steps <= 0 or config.warmup_steps < 0)
    if need_spe:
        if num_clips is None:
            raise ConfigError("config.steps_per_epoch is 0 and the dataset size is unknown")
        n = num_clips() if callable(num_clips) else int(num_clips)
        spe = n // config.batch_size
        if spe <= 0:
            raise ConfigError(
                f"config.batch_size={config.batch_size} is larger than the "
                f"training set ({n} clips from config.data.source="
                f"{config.data.source!r}): not even one step per epoch"
            )
    total = int(config.total_steps) if config.total_steps > 0 else round(config.epochs * spe)
    if total <= 0:
        raise ConfigError(
            f"config.total_steps={config.total_steps} / config.epochs="
            f"{config.epochs}: the run has no steps"
        )
    warmup = (
        int(config.warmup_steps) if config.warmup_steps >= 0 else round(config.warmup_epochs * spe)
    )
    return Schedule(
        total_steps=total,
        steps_per_epoch=max(spe, 0),
        warmup_steps=warmup,
        base_lr=base_learning_rate(config),
        min_lr=float(config.optim.min_lr),
    )


def lr_schedule(s: Schedule) -> optax.Schedule:
    """lr(step) = base x step / W for step < W, then half-cycle cosine from base to min_lr
    reached at total_steps (MAE's `adjust_learning_rate`, evaluated per step)."""
    warm = max(s.warmup_steps, 0)
    decay = max(s.total_steps - warm, 1)

    def fn(step):
        step = jnp.asarray(step, jnp.float32)
        warm_lr = s.base_lr * step / max(warm, 1)
        t = jnp.clip((step - warm) / decay, 0.0, 1.0)
        cos_lr = s.min_lr + (s.base_lr - s.min_lr) * 0.5 * (1.0 + jnp.cos(math.pi * t))
        return jnp.where(step < warm, warm_lr, cos_lr)

    return fn


def decays(official: str, ndim: int) -> bool:
    """The official parameter groups (timm's `add_weight_decay`, used by MAE's
    main_pretrain.py): no decay for 1-D tensors (LayerNorm weights, biases, q_bias/v_bias)
    and names ending in `.bias`; every other trainable tensor is decayed, the [1, 1, D]
    `cls_token` and `mask_token` included. (Fixed positional tables are not parameters.)"""
    return ndim > 1 and not official.endswith(".bias")


def weight_decay_mask(params: Any) -> Any:
    """True where weight decay applies: `decays` of each leaf's official state-dict name."""

    def decay(path, x) -> bool:
        names = key_names(path)
        return decays(official_name(names) if names else "", len(jnp.shape(x)))

    return jax.tree_util.tree_map_with_path(decay, params)


def make_optimizer(config, schedule: Schedule) -> optax.GradientTransformation:
    """Optional global-norm clipping, then AdamW with the masked decoupled weight decay."""
    o = config.optim
    if not (0 <= o.b1 < 1 and 0 <= o.b2 < 1):
        raise ConfigError(f"config.optim.b1={o.b1} / b2={o.b2} must be in [0, 1)")
    if o.grad_clip_norm < 0 or o.weight_decay < 0:
        raise ConfigError("config.optim.grad_clip_norm and weight_decay must be >= 0")
    parts = []
    if o.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(o.grad_clip_norm))
    parts.append(
        optax.adamw(
            lr_schedule(schedule),
            b1=o.b1,
            b2=o.b2,
            eps=1e-8,
            weight_decay=o.weight_decay,
            mask=weight_decay_mask,
        )
    )
    return optax.chain(*parts)
