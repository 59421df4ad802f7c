"""Frame features of the encoder, as the official feature extractor lays them out.

A normalised log-mel of U units (each the model's input width, `fu` frames) runs through the
encoder without masking, one unit at a time (batched); per unit the [CLS] token is dropped and
the tokens are rearranged '(f t) d -> t (f d)'; the units are concatenated along time.
Every user of encoder features (the runtime, the in-training probe, fine-tuning) goes
through `encode_frames`, so they all see the same features.

Shape letters: B batch, F mel bins, T frames, U units, K tokens, D width, L layers.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from msm_mae_jax.model.config import ModelConfig
from msm_mae_jax.model.mae import Encoder


def tokens_to_frames(x_BKD: jax.Array, config: ModelConfig, batch: int, units: int) -> jax.Array:
    """Encoder tokens of B*U units -> float32 [B, U*T', F'*D]: '(f t) d -> t (f d)' per unit."""
    gf, gt = config.grid_size
    if config.use_cls_token:
        x_BKD = x_BKD[:, 1:]
    x = x_BKD.reshape(batch, units, gf, gt, config.embed_dim).transpose(0, 1, 3, 2, 4)
    return x.reshape(batch, units * gt, gf * config.embed_dim).astype(jnp.float32)


def encode_frames(
    params: Any,
    x_BFT: jax.Array,
    config: ModelConfig,
    return_layers: bool = False,
    **encoder_kw: Any,
) -> jax.Array:
    """Normalised log-mels [B, F, U*fu] -> frame features [B, U*T', F'*D] (jittable).

    return_layers: every block's output instead (the last one normalised), [L, B, U*T', F'*D].
    encoder_kw: further `Encoder.__call__` options (fine-tuning passes drop_path_rate and
    drop_path_key); the unit rows of one clip are consecutive, example-major.
    """
    B, F, T = x_BFT.shape
    fu = config.input_size[1]
    if T % fu:
        raise ValueError(f"encode_frames needs a multiple of {fu} frames, got {T}")
    units = T // fu
    x_UB1FT = x_BFT.reshape(B, F, units, fu).transpose(0, 2, 1, 3).reshape(B * units, 1, F, fu)
    out = Encoder(config).apply(
        {"params": params}, x_UB1FT, mask_ratio=0.0, return_layers=return_layers, **encoder_kw
    )
    if return_layers:
        return jnp.stack([tokens_to_frames(y, config, B, units) for y in out.layers])
    return tokens_to_frames(out.x_BKD, config, B, units)
