"""AdamW (or SGD) with layer-wise learning-rate decay, warm-up and half-cycle cosine.

Layer-wise decay as MAE's `util/lr_decay.py` (BEiT, ELECTRA), which AudioMAE's
`main_finetune_as.py` uses: with L = depth + 1, a parameter of layer id l gets the learning
rate lr x decay^(L - l); layer ids: patch embedding and [CLS] 0, block i: i + 1, everything
else (the encoder's final norm, the head) L, i.e. the full rate. Weight decay (decoupled, and
scaled by the same per-parameter rate, as torch's AdamW with parameter groups) applies to
every parameter of rank >= 2 except [CLS] (timm's `no_weight_decay`); biases and norms are not
decayed. A frozen encoder has rate 0, so neither updates nor decay touch it.

Schedule (MAE's `adjust_learning_rate`, per step): linear warm-up from 0, then half-cycle
cosine to min_lr at the last step; train.optim's `lr_schedule`.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.core.key_paths import key_names
from msm_mae_jax.train import optim

OPTIMIZERS = ("adamw", "sgd")
NO_DECAY_NAMES = ("cls_token",)


def layer_id(names: tuple[str, ...], depth: int) -> int:
    """MAE's `get_layer_id_for_vit` on our parameter paths ('encoder'/'head' first)."""
    if names and names[0] == "encoder":
        top = names[1] if len(names) > 1 else ""
        if top in ("cls_token", "patch_embed"):
            return 0
        if top.startswith("blocks_"):
            return int(top.split("_")[1]) + 1
    return depth + 1


def lr_scales(params: Any, depth: int, layer_decay: float, freeze_encoder: bool = False) -> Any:
    """Per-leaf learning-rate factors decay^(depth + 1 - layer id); 0 for a frozen encoder."""

    def scale(path, _):
        names = key_names(path)
        if freeze_encoder and names[0] == "encoder":
            return 0.0
        return float(layer_decay ** (depth + 1 - layer_id(names, depth)))

    return jax.tree_util.tree_map_with_path(scale, params)


def weight_decay_mask(params: Any) -> Any:
    """True where weight decay applies: rank >= 2 and not the [CLS] token."""

    def decay(path, x) -> bool:
        return len(jax.numpy.shape(x)) >= 2 and not set(key_names(path)) & set(NO_DECAY_NAMES)

    return jax.tree_util.tree_map_with_path(decay, params)


def scale_by_tree(factors: Any) -> optax.GradientTransformation:
    """Multiplies each update leaf by a fixed per-leaf factor."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, f: u * f, updates, factors), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def base_learning_rate(config) -> float:
    """optim.lr when > 0, else optim.blr x batch_size / 256 (MAE/AudioMAE fine-tuning rule)."""
    if config.optim.lr > 0:
        return float(config.optim.lr)
    return float(config.optim.blr) * int(config.batch_size) / 256


def schedule(config, steps_per_epoch: int) -> optim.Schedule:
    """Steps of one run: epochs x steps per epoch; warm-up in epochs."""
    if config.epochs <= 0:
        raise ConfigError(f"config.epochs={config.epochs} must be > 0")
    total = max(1, round(float(config.epochs) * steps_per_epoch))
    warmup = round(float(config.warmup_epochs) * steps_per_epoch)
    if warmup < 0 or warmup > total:
        raise ConfigError(
            f"config.warmup_epochs={config.warmup_epochs} must be in [0, config.epochs]"
        )
    return optim.Schedule(
        total_steps=total,
        steps_per_epoch=steps_per_epoch,
        warmup_steps=warmup,
        base_lr=base_learning_rate(config),
        min_lr=float(config.optim.min_lr),
    )


def make_optimizer(
    config, sched: optim.Schedule, params: Any, depth: int
) -> optax.GradientTransformation:
    """clip (optional) -> Adam moments (or momentum) -> decoupled decay -> lr(step) -> layer
    factors. `params` may be abstract (shapes only)."""
    o = config.optim
    if o.name not in OPTIMIZERS:
        raise ConfigError(f"config.optim.name={o.name!r}; expected one of {OPTIMIZERS}")
    if not 0 < o.layer_decay <= 1:
        raise ConfigError(f"config.optim.layer_decay={o.layer_decay} must be in (0, 1]")
    if o.weight_decay < 0 or o.grad_clip_norm < 0:
        raise ConfigError("config.optim.weight_decay and grad_clip_norm must be >= 0")
    factors = lr_scales(params, depth, float(o.layer_decay), bool(config.freeze_encoder))
    parts = [optax.clip_by_global_norm(o.grad_clip_norm)] if o.grad_clip_norm > 0 else []
    decay = optax.add_decayed_weights(float(o.weight_decay), mask=weight_decay_mask)
    if o.name == "adamw":
        parts += [optax.scale_by_adam(b1=float(o.b1), b2=float(o.b2), eps=1e-8), decay]
    else:  # torch SGD: L2 decay added to the gradient before the momentum
        parts += [decay, optax.trace(decay=float(o.momentum))]
    parts += [optax.scale_by_learning_rate(optim.lr_schedule(sched)), scale_by_tree(factors)]
    return optax.chain(*parts)
