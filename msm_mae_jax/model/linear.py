"""A Dense layer's matrix product whose backward pass XLA:CPU runs at its GEMM rate.

`cpu_dot_general` computes y = x @ w exactly as `lax.dot_general` (the same forward product)
and has a custom VJP for its two gradients:

    dx = dy @ w^T                    (the product autodiff emits; XLA:CPU runs it in YNNPACK)
    dw = x^T @ dy, as  t(x)  @ dy    when x is the narrower operand (K <= N),
                  or  (t(dy) @ x)^T  otherwise,

where t(.) is a transpose materialised behind `lax.optimization_barrier`. The math is that of
autodiff; only the order of the summands inside the GEMM library may differ (relative
differences ~1e-7).

Why: XLA:CPU (jax 0.10) hands a dot to YNNPACK only when its left operand contracts its last
(minor) dimension. Autodiff's weight gradient contracts the token dimension, the *major* one
of both x [M, K] and dy [M, N], so XLA runs it with Eigen at about half the GEMM rate (one
thread, ViT-B MLP shapes: 45 against 84 GFLOP/cpu-s), and it is a third of a training step's
matrix work. XLA folds a plain transpose back into the dot's dimension numbers, hence the
barrier; transposing the narrower of x and dy keeps the extra copy small (M x min(K, N)).

Only for CPU programs: GPU and TPU compilers choose their own layouts for these products.

Shape letters: M rows (batch x tokens), K input width, N output width.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
from jax import lax


def _forward(x: jax.Array, w: jax.Array, precision: Any) -> jax.Array:
    return lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _linear(x: jax.Array, w: jax.Array, precision: Any) -> jax.Array:
    return _forward(x, w, precision)


def _linear_fwd(x, w, precision):
    return _forward(x, w, precision), (x, w)


def _linear_bwd(precision, res, dy):
    x, w = res
    dx = lax.dot_general(dy, w, (((dy.ndim - 1,), (1,)), ((), ())), precision=precision)
    x_MK = x.reshape(-1, x.shape[-1])
    dy_MN = dy.reshape(-1, dy.shape[-1])
    K, N = x_MK.shape[1], dy_MN.shape[1]
    if K <= N:
        dw_KN = lax.dot(lax.optimization_barrier(x_MK.T), dy_MN, precision=precision)
    else:
        dw_NK = lax.dot(lax.optimization_barrier(dy_MN.T), x_MK, precision=precision)
        dw_KN = lax.optimization_barrier(dw_NK).T  # else XLA folds it back into the dot
    return dx.astype(x.dtype), dw_KN.astype(w.dtype)


_linear.defvjp(_linear_fwd, _linear_bwd)


def cpu_dot_general(
    x: jax.Array,
    w: jax.Array,
    dimension_numbers: Any,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """`lax.dot_general` for `flax.linen.Dense` (x [..., K] with w [K, N]) with the custom
    VJP above. Any other contraction is refused: Dense makes only this one."""
    if dimension_numbers != (((x.ndim - 1,), (0,)), ((), ())) or w.ndim != 2:
        raise ValueError(f"cpu_dot_general: not a Dense product: {dimension_numbers}, w {w.shape}")
    if preferred_element_type is not None:
        raise ValueError("cpu_dot_general: preferred_element_type is not supported")
    return _linear(x, w, precision)
