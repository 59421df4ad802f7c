"""MSM-MAE in Flax linen: patch embedding, ViT encoder with BEiT-style attention, MAE decoder.

Pure functions of (params, inputs, explicit key): the masking key is an argument of
`__call__`, there are no rng streams or mutable collections. Parameter names mirror the
official PyTorch state dict (see `msm_mae_jax.convert`):

    encoder: patch_embed/proj (Dense on the flattened ph*pw patch, kernel [P, D]; the
             official Conv2d weight [D, 1, ph, pw] reshaped to [D, P] and transposed),
             cls_token, blocks_{i}/{norm1, attn/{qkv, q_bias, v_bias, proj}, norm2,
             mlp/{fc1, fc2}}, norm
    decoder: decoder_embed, mask_token, decoder_blocks_{i}, decoder_norm, decoder_pred

Positional tables are numpy constants (`posembed`), not parameters. Parameters are float32;
activations use `config.dtype`. Parameters carry logical axis names ('embed', 'mlp', 'qkv',
'patch') and activations logical constraints ('batch', 'seq', 'embed', 'mlp', 'heads',
'kv'); they only act under `nn.logical_axis_rules` with a mesh, otherwise they are no-ops.

Shape letters: B batch, F mel bins, T frames, N patches, K kept tokens (incl. [CLS]),
D width, P pixels per patch, H heads, E head width.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from msm_mae_jax.model import posembed
from msm_mae_jax.model.config import ModelConfig
from msm_mae_jax.model.losses import masked_mse
from msm_mae_jax.model.masking import masking_from_noise, random_masking

LN_EPS = 1e-6
_xavier = nn.initializers.xavier_uniform()
_zeros = nn.initializers.zeros_init()
_ones = nn.initializers.ones_init()
_token_init = nn.initializers.normal(stddev=0.02)


def _logical(init: Callable, names: tuple[str | None, ...]) -> Callable:
    return nn.with_logical_partitioning(init, names)


def _constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    return nn.with_logical_constraint(x, names)


def compute_dtype(config: ModelConfig) -> jnp.dtype:
    return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


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


# ---- transformer block ---------------------------------------------------------------------
def _dense(
    features: int,
    names: tuple[str | None, str | None],
    dtype: Any,
    name: str,
    use_bias: bool = True,
) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=_logical(_xavier, names),
        bias_init=_logical(_zeros, names[1:]),
        name=name,
    )


def _layer_norm(dtype: Any, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=LN_EPS,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=_logical(_ones, ("embed",)),
        bias_init=_logical(_zeros, ("embed",)),
        name=name,
    )


class Attention(nn.Module):
    """BEiT-style multi-head self-attention: qkv without bias, learned q and v biases."""

    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BND: jax.Array) -> jax.Array:
        B, N, D = x_BND.shape
        H = self.num_heads
        E = D // H
        qkv_BN3D = _dense(3 * D, ("embed", "qkv"), self.dtype, "qkv", use_bias=False)(x_BND)
        q_bias = self.param("q_bias", _logical(_zeros, ("qkv",)), (D,), jnp.float32)
        v_bias = self.param("v_bias", _logical(_zeros, ("qkv",)), (D,), jnp.float32)
        # The k bias is identically zero (softmax is invariant to it anyway).
        bias_3D = jnp.concatenate([q_bias, jnp.zeros_like(q_bias), v_bias]).astype(self.dtype)
        if jax.default_backend() != "cpu":
            # GPU/TPU: the fused attention entry point, so XLA can pick cuDNN / flash kernels.
            qkv_BN3HE = (qkv_BN3D + bias_3D).reshape(B, N, 3, H, E)
            names = ("batch", "seq", "heads", "kv")
            q, k, v = (_constrain(qkv_BN3HE[:, :, i], names) for i in range(3))
            o_BND = jax.nn.dot_product_attention(q, k, v).reshape(B, N, D)
            o_BND = _constrain(o_BND, ("batch", "seq", "qkv"))
            return _dense(D, ("qkv", "embed"), self.dtype, "proj")(o_BND)
        # Channel order of the official qkv output: (3, heads, head width). One transpose
        # puts q, k and v head-major ([3, B, H, N, E]) so both attention products are
        # batched dots with leading batch dimensions: XLA then needs no further layout
        # copies around them (jax.nn.dot_product_attention's 'BTNH' einsums cost several
        # transposes per block in the forward and backward pass on CPU).
        qkv_3BHNE = (qkv_BN3D + bias_3D).reshape(B, N, 3, H, E).transpose(2, 0, 3, 1, 4)
        names = ("batch", "heads", "seq", "kv")
        q_BHNE = _constrain(qkv_3BHNE[0], names) * jnp.asarray(E**-0.5, self.dtype)
        k_BHNE = _constrain(qkv_3BHNE[1], names)
        v_BHNE = _constrain(qkv_3BHNE[2], names)
        # Logits and softmax in float32 also under bfloat16 compute.
        s_BHNN = jnp.einsum("bhne,bhme->bhnm", q_BHNE, k_BHNE, preferred_element_type=jnp.float32)
        p_BHNN = jax.nn.softmax(s_BHNN, axis=-1).astype(self.dtype)
        o_BHNE = jnp.einsum("bhnm,bhme->bhne", p_BHNN, v_BHNE)
        o_BND = o_BHNE.transpose(0, 2, 1, 3).reshape(B, N, D)
        o_BND = _constrain(o_BND, ("batch", "seq", "qkv"))
        return _dense(D, ("qkv", "embed"), self.dtype, "proj")(o_BND)


class Mlp(nn.Module):
    hidden: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BND: jax.Array) -> jax.Array:
        D = x_BND.shape[-1]
        h = _dense(self.hidden, ("embed", "mlp"), self.dtype, "fc1")(x_BND)
        h = _constrain(nn.gelu(h, approximate=False), ("batch", "seq", "mlp"))  # exact erf
        return _dense(D, ("mlp", "embed"), self.dtype, "fc2")(h)


def drop_path(x_BND: jax.Array, rate: float, key: jax.Array) -> jax.Array:
    """Stochastic depth of one residual branch (timm's DropPath, scale_by_keep): each example's
    branch is zeroed with probability `rate`, else scaled by 1 / (1 - rate)."""
    keep = 1.0 - rate
    keep_B = jax.random.bernoulli(key, keep, (x_BND.shape[0],))
    scale_B = keep_B.astype(x_BND.dtype) / jnp.asarray(keep, x_BND.dtype)
    return x_BND * scale_B[:, None, None]


class Block(nn.Module):
    """Pre-norm ViT block: x + attn(norm1(x)), then x + mlp(norm2(x)).

    drop_path > 0 (fine-tuning) drops each residual branch per example with that probability,
    with independent draws for the two branches; it needs `drop_key`. At 0 (the default) the
    block computes exactly what it computes without the option.
    """

    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32
    drop_path: float = 0.0

    @nn.compact
    def __call__(self, x_BND: jax.Array, drop_key: jax.Array | None = None) -> jax.Array:
        D = x_BND.shape[-1]
        attn_BND = Attention(self.num_heads, self.dtype, name="attn")(
            _layer_norm(self.dtype, "norm1")(x_BND)
        )
        if self.drop_path > 0:
            attn_key, mlp_key = jax.random.split(drop_key)
            attn_BND = drop_path(attn_BND, self.drop_path, attn_key)
        x_BND = x_BND + attn_BND
        mlp_BND = Mlp(int(D * self.mlp_ratio), self.dtype, name="mlp")(
            _layer_norm(self.dtype, "norm2")(x_BND)
        )
        if self.drop_path > 0:
            mlp_BND = drop_path(mlp_BND, self.drop_path, mlp_key)
        x_BND = x_BND + mlp_BND
        return _constrain(x_BND, ("batch", "seq", "embed"))


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Per-block stochastic-depth rates rising linearly from 0 to `rate` (timm's
    `torch.linspace(0, drop_path_rate, depth)`, as MAE/AudioMAE fine-tuning)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_path_rate={rate} must be in [0, 1)")
    return [float(v) for v in np.linspace(0.0, rate, depth)]


def _block_cls(config: ModelConfig) -> type[nn.Module]:
    # Rematerialise each block in the backward pass: activation memory O(1 block).
    return nn.remat(Block) if config.remat else Block


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
        return _dense(self.embed_dim, ("patch", "embed"), self.dtype, "proj")(x_BNP)


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
        x_BND = _constrain(x_BND + jnp.asarray(pos_ND, dtype), ("batch", "seq", "embed"))

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
                "cls_token", _logical(_token_init, (None, None, "embed")), (1, 1, D), jnp.float32
            )
            x_BKD = jnp.concatenate(
                [jnp.broadcast_to(cls_11D.astype(dtype), (B, 1, D)), x_BKD], axis=1
            )
        x_BKD = _constrain(x_BKD, ("batch", "seq", "embed"))

        block = _block_cls(c)
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
        x_BKD = _layer_norm(dtype, "norm")(x_BKD)
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
        x_BKE = _dense(Dd, (None, "embed"), dtype, "decoder_embed")(x_BKD)
        mask_11E = self.param(
            "mask_token", _logical(_token_init, (None, None, "embed")), (1, 1, Dd), jnp.float32
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
        x_BNE = _constrain(x_BNE + jnp.asarray(pos, dtype), ("batch", "seq", "embed"))

        block = _block_cls(c)
        for i in range(c.decoder_depth):
            x_BNE = block(c.decoder_num_heads, c.mlp_ratio, dtype, name=f"decoder_blocks_{i}")(
                x_BNE
            )
        x_BNE = _layer_norm(dtype, "decoder_norm")(x_BNE)
        pred = _dense(c.patch_dim, ("embed", "patch"), dtype, "decoder_pred")(x_BNE)
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
    key = jax.random.key(0)
    return jax.eval_shape(lambda k: model.init(k, dummy_input(config), k), key)["params"]


def init_params(config: ModelConfig, key: jax.Array) -> Any:
    """Freshly initialised float32 {'encoder', 'decoder'} params (unboxed)."""
    model = MaskedAutoencoder(config)
    mask_key, param_key = jax.random.split(key)
    variables = jax.jit(lambda k: model.init(k, dummy_input(config), mask_key))(param_key)
    return nn.unbox(variables["params"])


def count_params(params: Any) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(nn.unbox(params))))
