"""Frame features of the encoder, as the official feature extractor lays them out.

A normalised log-mel of U units (each the model's input width, `fu` frames) runs through the
encoder without masking, one unit at a time (batched); per unit the [CLS] token is dropped and
the tokens are rearranged '(f t) d -> t (f d)'; the units are concatenated along time.
Every user of encoder features (the runtime, the in-training probe, fine-tuning) goes
through `encode_frames`, so they all see the same features. `encode_frames_grouped` computes
the same features with the encoder run on groups of units in a loop, skipping units without a
real frame (the feature runtime's CPU path: see its docstring).

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


def encode_frames_grouped(
    params: Any,
    x_BFT: jax.Array,
    frames_B: jax.Array,
    config: ModelConfig,
    group: int,
    return_layers: bool = False,
) -> jax.Array:
    """`encode_frames` with the encoder run on `group` units at a time, real units only.

    The units holding at least one real frame (unit u of row b when u * fu < frames_B[b])
    are gathered in order and encoded `group` at a time in a loop that stops after the last
    real one; the other units' outputs are left at zero (they are padding: callers keep the
    features of real frames only). Each unit's features are those of `encode_frames`: the
    encoder treats units independently. Cost: the real units rounded up to `group`, and the
    working set of one group, whatever the batch and bucket sizes.
    """
    B, F, T = x_BFT.shape
    fu = config.input_size[1]
    if T % fu:
        raise ValueError(f"encode_frames_grouped needs a multiple of {fu} frames, got {T}")
    units = T // fu
    N = B * units
    G = max(1, min(int(group), N))
    x_N1FT = x_BFT.reshape(B, F, units, fu).transpose(0, 2, 1, 3).reshape(N, 1, F, fu)
    real_N = (jnp.arange(units)[None, :] * fu < frames_B[:, None]).reshape(N)
    order_N = jnp.argsort(jnp.logical_not(real_N).astype(jnp.int32), stable=True)
    n_groups = -(-N // G)
    xs_N1FT = jnp.pad(x_N1FT[order_N], ((0, n_groups * G - N), (0, 0), (0, 0), (0, 0)))
    encoder = Encoder(config)

    def encode(x_G1FT: jax.Array) -> jax.Array:
        out = encoder.apply({"params": params}, x_G1FT, mask_ratio=0.0, return_layers=return_layers)
        return jnp.stack(out.layers) if return_layers else out.x_BKD[None]

    shape = jax.eval_shape(encode, xs_N1FT[:G])
    ys = jnp.zeros((shape.shape[0], n_groups * G, *shape.shape[2:]), shape.dtype)

    def body(i: jax.Array, ys: jax.Array) -> jax.Array:
        x_G1FT = jax.lax.dynamic_slice_in_dim(xs_N1FT, i * G, G)
        return jax.lax.dynamic_update_slice_in_dim(ys, encode(x_G1FT), i * G, axis=1)

    n_real = jnp.sum(real_N.astype(jnp.int32))
    ys = jax.lax.fori_loop(0, (n_real + G - 1) // G, body, ys)
    ys = jnp.where(real_N[order_N][None, :, None, None], ys[:, :N], 0)
    ys_LNKD = ys[:, jnp.argsort(order_N)]  # back to the units' order
    frames = [tokens_to_frames(y, config, B, units) for y in ys_LNKD]
    return jnp.stack(frames) if return_layers else frames[0]
