"""The classifier: the pre-trained encoder's clip features and a linear head.

Clip features, per the runtime's one frame layout (`model.frames.encode_frames`):
- 'mean' (default, EVAR's M2D fine-tuning): the frame features [T', F'*D] averaged over the
  time steps that hold audio (a step is kept when any of its frames is real).
- 'cls': the [CLS] token [D] of each unit averaged over the units that hold audio (AudioMAE's
  `--cls_token` option); the model must have one.
Head: an optional LayerNorm (AudioMAE's `fc_norm` on its pooled features; parameter-free at
initialisation, it standardises each clip's feature vector, a stateless stand-in for EVAR's
BatchNorm1d(affine=False) that needs no batch statistics across devices) and a Dense layer
with truncated-normal kernel (AudioMAE: std 2e-5) and zero bias.

Evaluation of a clip of any length runs the whole clip, cut into units, and averages the frame
features of all its real time steps before the head: the same quantity the training crops
produce (a time average of frame features), so training and evaluation see one feature; with a
linear head this equals the frame-weighted mean of the units' logits, and it is EVAR's choice.

Shape letters: B batch, F mel bins, T frames, T' time steps, U units, D width, C classes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.model.config import ModelConfig
from msm_mae_jax.model.frames import encode_frames
from msm_mae_jax.model.mae import Encoder

POOLINGS = ("mean", "cls")
HEAD_NORMS = ("layernorm", "none")


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    num_classes: int
    pooling: str = "mean"
    norm: str = "layernorm"
    init_std: float = 2e-5

    @classmethod
    def from_config(cls, h, num_classes: int, model_config: ModelConfig) -> HeadConfig:
        if h.pooling not in POOLINGS:
            raise ConfigError(f"config.head.pooling={h.pooling!r}; expected one of {POOLINGS}")
        if h.norm not in HEAD_NORMS:
            raise ConfigError(f"config.head.norm={h.norm!r}; expected one of {HEAD_NORMS}")
        if h.pooling == "cls" and not model_config.use_cls_token:
            raise ConfigError("config.head.pooling='cls': this encoder has no [CLS] token")
        if not h.init_std > 0:
            raise ConfigError(f"config.head.init_std={h.init_std} must be > 0")
        return cls(int(num_classes), str(h.pooling), str(h.norm), float(h.init_std))

    def feature_dim(self, mc: ModelConfig) -> int:
        return mc.feature_dim if self.pooling == "mean" else mc.embed_dim


class Head(nn.Module):
    """[B, D] clip features -> float32 logits [B, C]."""

    config: HeadConfig

    @nn.compact
    def __call__(self, x_BD: jax.Array) -> jax.Array:
        x_BD = x_BD.astype(jnp.float32)
        if self.config.norm == "layernorm":
            x_BD = nn.LayerNorm(epsilon=1e-6, name="norm")(x_BD)
        init = nn.initializers.truncated_normal(stddev=self.config.init_std)
        return nn.Dense(self.config.num_classes, kernel_init=init, name="fc")(x_BD)


def step_mask(valid_BT: jax.Array, patch_frames: int) -> jax.Array:
    """[B, T] real frames -> [B, T / pw] time steps holding at least one real frame."""
    B, T = valid_BT.shape
    return valid_BT.reshape(B, T // patch_frames, patch_frames).any(-1)


def masked_mean(x_BTD: jax.Array, m_BT: jax.Array) -> jax.Array:
    w = m_BT.astype(jnp.float32)[..., None]
    return jnp.sum(x_BTD.astype(jnp.float32) * w, 1) / jnp.maximum(jnp.sum(w, 1), 1.0)


def clip_features(
    enc_params: Any,
    x_BFT: jax.Array,
    valid_BT: jax.Array,
    mc: ModelConfig,
    pooling: str = "mean",
    **encoder_kw: Any,
) -> jax.Array:
    """Normalised, zero-padded log-mels [B, F, U*fu] -> clip features float32 [B, D']."""
    if pooling == "mean":
        f_BTD = encode_frames(enc_params, x_BFT, mc, **encoder_kw)
        return masked_mean(f_BTD, step_mask(valid_BT, mc.patch_size[1]))
    B, F, T = x_BFT.shape
    fu = mc.input_size[1]
    U = T // fu
    x = x_BFT.reshape(B, F, U, fu).transpose(0, 2, 1, 3).reshape(B * U, 1, F, fu)
    cls_UD = Encoder(mc).apply({"params": enc_params}, x, **encoder_kw).x_BKD[:, 0]
    return masked_mean(cls_UD.reshape(B, U, -1), step_mask(valid_BT, fu))


def logits(
    params: Any,
    x_BFT: jax.Array,
    valid_BT: jax.Array,
    mc: ModelConfig,
    head: HeadConfig,
    *,
    freeze_encoder: bool = False,
    drop_path_rate: float = 0.0,
    drop_path_key: jax.Array | None = None,
) -> jax.Array:
    """{'encoder', 'head'} params -> float32 logits [B, C]. A frozen encoder gets no gradient
    (stop_gradient: its backward pass is not computed at all)."""
    enc = jax.lax.stop_gradient(params["encoder"]) if freeze_encoder else params["encoder"]
    kw = {}
    if drop_path_rate > 0:
        kw = {"drop_path_rate": drop_path_rate, "drop_path_key": drop_path_key}
    f_BD = clip_features(enc, x_BFT, valid_BT, mc, head.pooling, **kw)
    return Head(head).apply({"params": params["head"]}, f_BD)


def init_head(key: jax.Array, head: HeadConfig, mc: ModelConfig) -> Any:
    return Head(head).init(key, jnp.zeros((1, head.feature_dim(mc)), jnp.float32))["params"]
