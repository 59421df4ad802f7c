"""MSM-MAE in Flax linen: patch embedding, ViT encoder with BEiT-style attention, MAE decoder.

Pure functions of (params, inputs, explicit key): the masking key is an argument of
`__call__`, there are no rng streams or mutable collections. Parameter names mirror the
official PyTorch state dict (see `msm_mae_jax.convert`):

    encoder: patch_embed/proj (Dense on the flattened ph*pw patch, kernel [P, D]; the
             official Conv2d weight [D, 1, ph, pw] reshaped to [D, P] and transposed),
             cls_token, blocks_{i}/{norm1, attn/{qkv, q_bias, v_bias, proj}, norm2,
             mlp/{fc1, fc2}}, norm
    decoder: decoder_embed, mask_token, decoder_blocks_{i}, decoder_norm, decoder_pred

The transformer blocks are in `vit.py`. Positional tables are numpy constants (`posembed`),
not parameters. Parameters are float32;
activations use `config.dtype`. Parameters carry logical axis names ('embed', 'mlp', 'qkv',
'patch') and activations logical constraints ('batch', 'seq', 'embed', 'mlp', 'heads',
'kv'); they only act under `nn.logical_axis_rules` with a mesh, otherwise they are no-ops.

Shape letters: B batch, F mel bins, T frames, N patches, K kept tokens (incl. [CLS]),
D width, P pixels per patch, H heads, E head width.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from msm_mae_jax.model import posembed, vit
from msm_mae_jax.model.config import ModelConfig
from msm_mae_jax.model.losses import masked_mse
from msm_mae_jax.model.masking import masking_from_noise, random_masking
from msm_mae_jax.model.vit import (  # noqa: F401  (names users of the model import from here)
    LN_EPS,
    Attention,
    Block,
    Mlp,
    compute_dtype,
    drop_path,
    drop_path_rates,
)


# ---- patches -------------------------------------------------------------------------------
def patchify(lms_B1FT: jax.Array, patch_size: tuple[int, int]) -> jax.Array:
    """[B, 1, F, T] -> [B, N, ph*pw], patches in frequency-major order (n = f * gt + t)."""
    B, C, F, T = lms_B1FT.shape
    ph, pw = patch_size
    if C != 1 or F % ph or T % pw:
        raise ValueError(
            f"log-mel batch of shape {lms_B1FT.shape} does not split into "
            f"{ph}x{pw} patches (expected [B, 1, F, T] with F % {ph} == 0 and "
            f"T % {pw} == 0)"
        )
    gf, gt = F // ph, T // pw
    x = lms_B1FT.reshape(B, gf, ph, gt, pw).transpose(0, 1, 3, 2, 4)
    return x.reshape(B, gf * gt, ph * pw)


def unpatchify(x_BNP: jax.Array, config: ModelConfig) -> jax.Array:
    """Inverse of `patchify` for the config's input size: [B, N, ph*pw] -> [B, 1, F, T]."""
    (ph, pw), (gf, gt) = config.patch_size, config.grid_size
    B = x_BNP.shape[0]
    x = x_BNP.reshape(B, gf, gt, ph, pw).transpose(0, 1, 3, 2, 4)
    return x.reshape(B, 1, gf * ph, gt * pw)


# ---- encoder / decoder ---------------------------------------------------------------------
class EncoderOutput(NamedTuple):
    """x_BKD: final-normalised tokens ([CLS] first when used; K = N (+1) without masking);
    mask_BN: 1 = removed patch; ids_restore_BN: unshuffle indices; layers: every block's
    output (the last one normalised) when requested, else None."""

    x_BKD: jax.Array
    mask_BN: jax.Array
    ids_restore_BN: jax.Array
    layers: tuple[jax.Array, ...] | None = None

    @property
    def x(self) -> jax.Array:
        return self.x_BKD

    @property
    def mask(self) -> jax.Array:
        return self.mask_BN

    @property
    def ids_restore(self) -> jax.Array:
        return self.ids_restore_BN


class PatchEmbed(nn.Module):
    embed_dim: int
    patch_size: tuple[int, int]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, lms_B1FT: jax.Array) -> jax.Array:
        x_BNP = patchify(lms_B1FT, self.patch_size).astype(self.dtype)
        return vit.dense(self.embed_dim, ("patch", "embed"), self.dtype, "proj")(x_BNP)


def num_keep_for(num_patches: int, mask_ratio: float) -> int:
    """Visible patches for a static mask ratio, as the official int(N * (1 - ratio))."""
    if isinstance(mask_ratio, jax.core.Tracer) or not isinstance(mask_ratio, numbers.Real):
        raise TypeError(f"mask_ratio must be a static Python float, got {type(mask_ratio)}")
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio={mask_ratio} must be in [0, 1)")
    num_keep = int(num_patches * (1 - mask_ratio))
    if num_keep < 1:
        raise ValueError(f"mask_ratio={mask_ratio} keeps no patch out of {num_patches}")
    return num_keep


def _masking(
    key: jax.Array | None, noise_BN: jax.Array | None, B: int, N: int, num_keep: int, ratio: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Masks from the key's uniform draw, or from explicit noise (exactly one is given)."""
    if noise_BN is None:
        if key is None:
            raise ValueError(f"mask_ratio={ratio} needs a PRNG key (or explicit noise_BN)")
        return random_masking(key, B, N, num_keep)
    if key is not None:
        raise ValueError("give either a PRNG key or noise_BN for the masking, not both")
    if tuple(noise_BN.shape) != (B, N):
        raise ValueError(f"noise_BN has shape {tuple(noise_BN.shape)}; expected {(B, N)}")
    return masking_from_noise(noise_BN, num_keep)


class Encoder(nn.Module):
    """MSM-MAE encoder. Masking (mask_ratio > 0) orders patches by uniform noise drawn from
    `key`, or by the given `noise_BN` (the draw made explicit, e.g. to feed another
    implementation the same masks; see `masking.masking_noise`). Stochastic depth
    (drop_path_rate > 0, fine-tuning) needs `drop_path_key`; 0, the default, adds nothing."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        lms_B1FT: jax.Array,
        *,
        key: jax.Array | None = None,
        mask_ratio: float = 0.0,
        return_layers: bool = False,
        noise_BN: jax.Array | None = None,
        drop_path_rate: float = 0.0,
        drop_path_key: jax.Array | None = None,
    ) -> EncoderOutput:
        c = self.config
        dtype = compute_dtype(c)
        F, T = c.input_size
        if lms_B1FT.ndim != 4 or tuple(lms_B1FT.shape[1:]) != (1, F, T):
            raise ValueError(
                f"encoder input has shape {tuple(lms_B1FT.shape)}; this model "
                f"({c.run_name_prefix}) expects [B, 1, {F}, {T}]"
            )
        B, N, D = lms_B1FT.shape[0], c.num_patches, c.embed_dim
        x_BND = PatchEmbed(D, c.patch_size, dtype, name="patch_embed")(lms_B1FT)
        pos_ND = posembed.encoder_table(D, c.grid_size, cls_token=False)
        x_BND = vit.constrain(x_BND + jnp.asarray(pos_ND, dtype), ("batch", "seq", "embed"))

        num_keep = num_keep_for(N, mask_ratio)
        if num_keep < N:
            ids_keep_BK, ids_restore_BN, mask_BN = _masking(
                key, noise_BN, B, N, num_keep, mask_ratio
            )
            x_BKD = jnp.take_along_axis(x_BND, ids_keep_BK[:, :, None], axis=1)
        else:  # feature extraction: no gather at all
            x_BKD = x_BND
            ids_restore_BN = jnp.broadcast_to(jnp.arange(N, dtype=jnp.int32), (B, N))
            mask_BN = jnp.zeros((B, N), jnp.float32)

        if c.use_cls_token:  # its positional row is zero
            cls_11D = self.param(
                "cls_token",
                vit.logical_init(vit.TOKEN_INIT, (None, None, "embed")),
                (1, 1, D),
                jnp.float32,
            )
            x_BKD = jnp.concatenate(
                [jnp.broadcast_to(cls_11D.astype(dtype), (B, 1, D)), x_BKD], axis=1
            )
        x_BKD = vit.constrain(x_BKD, ("batch", "seq", "embed"))

        block = vit.block_cls(c)
        rates = drop_path_rates(drop_path_rate, c.depth)
        if drop_path_rate > 0 and drop_path_key is None:
            raise ValueError(f"drop_path_rate={drop_path_rate} needs a drop_path_key")
        layers = []
        for i in range(c.depth):
            name = f"blocks_{i}"
            if rates[i] > 0:  # keyed per block: the same draws whatever the remat setting
                blk = block(c.num_heads, c.mlp_ratio, dtype, drop_path=rates[i], name=name)
                x_BKD = blk(x_BKD, jax.random.fold_in(drop_path_key, i))
            else:
                x_BKD = block(c.num_heads, c.mlp_ratio, dtype, name=name)(x_BKD)
            layers.append(x_BKD)
        x_BKD = vit.layer_norm(dtype, "norm")(x_BKD)
        layers[-1] = x_BKD
        return EncoderOutput(
            x_BKD, mask_BN, ids_restore_BN, tuple(layers) if return_layers else None
        )


class Decoder(nn.Module):
    """MAE decoder: embed, fill removed positions with the mask token, unshuffle, blocks,
    predict the ph*pw pixels of every patch ([CLS] removed); float32 output [B, N, P]."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x_BKD: jax.Array, ids_restore_BN: jax.Array) -> jax.Array:
        c = self.config
        dtype = compute_dtype(c)
        Dd, N = c.decoder_embed_dim, c.num_patches
        x_BKE = vit.dense(Dd, (None, "embed"), dtype, "decoder_embed")(x_BKD)
        mask_11E = self.param(
            "mask_token",
            vit.logical_init(vit.TOKEN_INIT, (None, None, "embed")),
            (1, 1, Dd),
            jnp.float32,
        )
        n_cls = 1 if c.use_cls_token else 0
        B, K = x_BKE.shape[0], x_BKE.shape[1] - n_cls
        x_vis = x_BKE[:, n_cls:]
        if K < N:
            fill = jnp.broadcast_to(mask_11E.astype(dtype), (B, N - K, Dd))
            x_vis = jnp.concatenate([x_vis, fill], axis=1)
        x_BNE = jnp.take_along_axis(x_vis, ids_restore_BN[:, :, None], axis=1)
        if n_cls:
            x_BNE = jnp.concatenate([x_BKE[:, :1], x_BNE], axis=1)
        pos = posembed.decoder_table(c.decoder_pos_embed, Dd, c.grid_size, c.use_cls_token)
        x_BNE = vit.constrain(x_BNE + jnp.asarray(pos, dtype), ("batch", "seq", "embed"))

        block = vit.block_cls(c)
        for i in range(c.decoder_depth):
            x_BNE = block(c.decoder_num_heads, c.mlp_ratio, dtype, name=f"decoder_blocks_{i}")(
                x_BNE
            )
        x_BNE = vit.layer_norm(dtype, "decoder_norm")(x_BNE)
        pred = vit.dense(c.patch_dim, ("embed", "patch"), dtype, "decoder_pred")(x_BNE)
        return pred[:, n_cls:].astype(jnp.float32)


class MaskedAutoencoder(nn.Module):
    """Encoder + decoder + masked reconstruction loss on the normalised log-mel patches."""

    config: ModelConfig

    def setup(self):
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)

    def __call__(
        self,
        lms_B1FT: jax.Array,
        key: jax.Array | None = None,
        mask_ratio: float | None = None,
        *,
        noise_BN: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Returns (loss, pred_BNP, mask_BN). The mask comes from `key`, or from explicit
        uniform `noise_BN` [B, N] (exactly one of the two)."""
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        enc = self.encoder(lms_B1FT, key=key, mask_ratio=ratio, noise_BN=noise_BN)
        pred_BNP = self.decoder(enc.x_BKD, enc.ids_restore_BN)
        target_BNP = patchify(lms_B1FT, self.config.patch_size)
        loss = masked_mse(pred_BNP, target_BNP, enc.mask_BN, self.config.norm_pix_loss)
        return loss, pred_BNP, enc.mask_BN


# ---- convenience -----------------------------------------------------------------------------
def dummy_input(config: ModelConfig, batch: int = 1) -> jax.Array:
    return jnp.zeros((batch, 1, *config.input_size), jnp.float32)


def abstract_params(config: ModelConfig) -> Any:
    """Shapes of {'encoder', 'decoder'} params, boxed with their logical axis names
    (`nn.get_partition_spec` / `nn.logical_to_mesh_sharding` read them); nothing allocated."""
    model = MaskedAutoencoder(config)

    def init() -> Any:  # the key is made inside: nothing runs, not even on compile-only devices
        key = jax.random.key(0)
        return model.init(key, dummy_input(config), key)

    return jax.eval_shape(init)["params"]


def init_params(config: ModelConfig, key: jax.Array) -> Any:
    """Freshly initialised float32 {'encoder', 'decoder'} params (unboxed)."""
    model = MaskedAutoencoder(config)
    mask_key, param_key = jax.random.split(key)
    variables = jax.jit(lambda k: model.init(k, dummy_input(config), mask_key))(param_key)
    return nn.unbox(variables["params"])


def count_params(params: Any) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(nn.unbox(params))))
