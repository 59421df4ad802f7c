"""Transformer building blocks of MSM-MAE: BEiT-style attention, MLP, pre-norm block, drop path.

Parameter names mirror the official (timm) state dict: norm1, attn/{qkv, q_bias, v_bias,
proj}, norm2, mlp/{fc1, fc2}. Parameters are float32 with logical axis names ('embed',
'mlp', 'qkv'); activations use the compute dtype and logical constraints ('batch', 'seq',
'embed', 'mlp', 'heads', 'kv'), which act only under `nn.logical_axis_rules` with a mesh.

Shape letters: B batch, N tokens, D width, H heads, E head width.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from msm_mae_jax.model.config import ModelConfig
from msm_mae_jax.model.linear import cpu_dot_general

LN_EPS = 1e-6
XAVIER = nn.initializers.xavier_uniform()
ZEROS = nn.initializers.zeros_init()
ONES = nn.initializers.ones_init()
TOKEN_INIT = nn.initializers.normal(stddev=0.02)


def logical_init(init: Callable, names: tuple[str | None, ...]) -> Callable:
    return nn.with_logical_partitioning(init, names)


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    return nn.with_logical_constraint(x, names)


def target_platform() -> str:
    """The platform the model is traced for: that of the devices of the mesh set with
    `jax.set_mesh` (compile-only TPU devices when a TPU step is compiled on a CPU host),
    else jax's default backend."""
    mesh = jax.sharding.get_abstract_mesh()  # what jax.set_mesh set; readable while tracing
    device = getattr(mesh, "abstract_device", None)
    if not mesh.empty and device is not None:
        return device.platform
    return jax.default_backend()


def compute_dtype(config: ModelConfig) -> jnp.dtype:
    return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


# ---- transformer block ---------------------------------------------------------------------
def dense(
    features: int,
    names: tuple[str | None, str | None],
    dtype: Any,
    name: str,
    use_bias: bool = True,
) -> nn.Dense:
    # CPU: the weight gradient as a product XLA:CPU runs in its GEMM library (`linear.py`).
    cpu = target_platform() == "cpu"
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=logical_init(XAVIER, names),
        bias_init=logical_init(ZEROS, names[1:]),
        name=name,
        dot_general=cpu_dot_general if cpu else None,
    )


def layer_norm(dtype: Any, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=LN_EPS,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=logical_init(ONES, ("embed",)),
        bias_init=logical_init(ZEROS, ("embed",)),
        name=name,
    )


@functools.partial(
    jax.checkpoint, static_argnums=(1,), policy=jax.checkpoint_policies.nothing_saveable
)
def _accelerator_attention(qkv_BN3D: jax.Array, num_heads: int) -> jax.Array:
    """GPU/TPU attention core, [B, N, 3D] -> [B, N, D], through jax's fused-attention entry
    point (its XLA implementation: jax uses cuDNN only when asked, and has no TPU kernel
    behind it). Recomputed in the backward pass from its input, the dense qkv, instead of
    saving per-head q/k/v and float32 logits: at 17 or 66 tokens and 64-wide heads TPU keeps
    those in tiles padded 3 to 10 times, and moving them to HBM and back cost more than the
    few recomputed FLOPs (ViT-B on v5e: HBM bytes per sample -19%, see docs/training.md)."""
    B, N, D3 = qkv_BN3D.shape
    D = D3 // 3
    qkv_BN3HE = qkv_BN3D.reshape(B, N, 3, num_heads, D // num_heads)
    names = ("batch", "seq", "heads", "kv")
    q, k, v = (constrain(qkv_BN3HE[:, :, i], names) for i in range(3))
    return jax.nn.dot_product_attention(q, k, v).reshape(B, N, D)


class Attention(nn.Module):
    """BEiT-style multi-head self-attention: qkv without bias, learned q and v biases."""

    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BND: jax.Array) -> jax.Array:
        B, N, D = x_BND.shape
        H = self.num_heads
        E = D // H
        qkv_BN3D = dense(3 * D, ("embed", "qkv"), self.dtype, "qkv", use_bias=False)(x_BND)
        q_bias = self.param("q_bias", logical_init(ZEROS, ("qkv",)), (D,), jnp.float32)
        v_bias = self.param("v_bias", logical_init(ZEROS, ("qkv",)), (D,), jnp.float32)
        # The k bias is identically zero (softmax is invariant to it anyway).
        bias_3D = jnp.concatenate([q_bias, jnp.zeros_like(q_bias), v_bias]).astype(self.dtype)
        if target_platform() != "cpu":
            o_BND = constrain(
                _accelerator_attention(qkv_BN3D + bias_3D, H), ("batch", "seq", "qkv")
            )
            return dense(D, ("qkv", "embed"), self.dtype, "proj")(o_BND)
        # Channel order of the official qkv output: (3, heads, head width). One transpose
        # puts q, k and v head-major ([3, B, H, N, E]) so both attention products are
        # batched dots with leading batch dimensions: XLA then needs no further layout
        # copies around them (jax.nn.dot_product_attention's 'BTNH' einsums cost several
        # transposes per block in the forward and backward pass on CPU).
        qkv_3BHNE = (qkv_BN3D + bias_3D).reshape(B, N, 3, H, E).transpose(2, 0, 3, 1, 4)
        names = ("batch", "heads", "seq", "kv")
        q_BHNE = constrain(qkv_3BHNE[0], names) * jnp.asarray(E**-0.5, self.dtype)
        k_BHNE = constrain(qkv_3BHNE[1], names)
        v_BHNE = constrain(qkv_3BHNE[2], names)
        # Logits and softmax in float32 also under bfloat16 compute.
        s_BHNN = jnp.einsum("bhne,bhme->bhnm", q_BHNE, k_BHNE, preferred_element_type=jnp.float32)
        p_BHNN = jax.nn.softmax(s_BHNN, axis=-1).astype(self.dtype)
        o_BHNE = jnp.einsum("bhnm,bhme->bhne", p_BHNN, v_BHNE)
        o_BND = o_BHNE.transpose(0, 2, 1, 3).reshape(B, N, D)
        o_BND = constrain(o_BND, ("batch", "seq", "qkv"))
        return dense(D, ("qkv", "embed"), self.dtype, "proj")(o_BND)


class Mlp(nn.Module):
    hidden: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BND: jax.Array) -> jax.Array:
        D = x_BND.shape[-1]
        h = dense(self.hidden, ("embed", "mlp"), self.dtype, "fc1")(x_BND)
        h = constrain(nn.gelu(h, approximate=False), ("batch", "seq", "mlp"))  # exact erf
        return dense(D, ("mlp", "embed"), self.dtype, "fc2")(h)


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
            layer_norm(self.dtype, "norm1")(x_BND)
        )
        if self.drop_path > 0:
            attn_key, mlp_key = jax.random.split(drop_key)
            attn_BND = drop_path(attn_BND, self.drop_path, attn_key)
        x_BND = x_BND + attn_BND
        mlp_BND = Mlp(int(D * self.mlp_ratio), self.dtype, name="mlp")(
            layer_norm(self.dtype, "norm2")(x_BND)
        )
        if self.drop_path > 0:
            mlp_BND = drop_path(mlp_BND, self.drop_path, mlp_key)
        x_BND = x_BND + mlp_BND
        return constrain(x_BND, ("batch", "seq", "embed"))


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Per-block stochastic-depth rates rising linearly from 0 to `rate` (timm's
    `torch.linspace(0, drop_path_rate, depth)`, as MAE/AudioMAE fine-tuning)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_path_rate={rate} must be in [0, 1)")
    return [float(v) for v in np.linspace(0.0, rate, depth)]


def block_cls(config: ModelConfig) -> type[nn.Module]:
    # Rematerialise each block in the backward pass: activation memory O(1 block).
    return nn.remat(Block) if config.remat else Block
