"""The CPU Dense product (`model/linear.py`): autodiff's values and gradients, and weight
gradients that XLA:CPU compiles as YNNPACK products (no dot contracting a major dimension)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from msm_mae_jax.model import vit
from msm_mae_jax.model.linear import cpu_dot_general

DENSE = lambda x: (((x.ndim - 1,), (0,)), ((), ()))  # noqa: E731


def _loss(dot):
    def f(x, w, c):
        return jnp.sum(c * dot(x, w, DENSE(x)))

    return f


@pytest.mark.parametrize("shape", [(4, 17, 48, 96), (4, 17, 96, 48), (64, 80, 80)])
def test_values_and_gradients_are_autodiffs(shape):
    *lead, K, N = shape
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((*lead, K)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((K, N)), jnp.float32)
    c = jnp.asarray(rng.standard_normal((*lead, N)), jnp.float32)
    np.testing.assert_allclose(
        cpu_dot_general(x, w, DENSE(x)), lax.dot_general(x, w, DENSE(x)), rtol=1e-6, atol=1e-5
    )
    got = jax.jit(jax.grad(_loss(cpu_dot_general), argnums=(0, 1)))(x, w, c)
    want = jax.jit(jax.grad(_loss(lax.dot_general), argnums=(0, 1)))(x, w, c)
    for g, r in zip(got, want, strict=True):
        assert g.shape == r.shape and g.dtype == r.dtype
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-4)


def _dots(hlo: str) -> list[str]:
    return [line for line in hlo.splitlines() if " dot(" in line]


@pytest.mark.parametrize("K,N", [(64, 256), (256, 64)])
def test_weight_gradient_contracts_minor_dimensions_on_cpu(K, N):
    """Every 2-D product of the gradient contracts the lhs's last dimension: XLA:CPU gives
    such dots to YNNPACK; autodiff's own weight gradient contracts dimension 0 (Eigen)."""
    x = jnp.zeros((8, 33, K), jnp.float32)
    w, c = jnp.zeros((K, N), jnp.float32), jnp.zeros((8, 33, N), jnp.float32)

    def hlo(dot):
        grad = jax.jit(jax.grad(_loss(dot), argnums=(0, 1)))
        return grad.lower(x, w, c).compile().as_text()

    plain = [d for d in _dots(hlo(lax.dot_general)) if "lhs_contracting_dims={0}" in d]
    assert plain, "autodiff's weight gradient no longer contracts dimension 0: drop linear.py?"
    dots = _dots(hlo(cpu_dot_general))
    assert len(dots) == 2 and all("lhs_contracting_dims={1}" in d for d in dots), dots  # dx, dw


def test_dense_uses_it_on_cpu_only():
    if jax.default_backend() != "cpu":
        pytest.skip("CPU backend only")
    dense = vit.dense(8, ("embed", "mlp"), jnp.float32, "fc")
    assert dense.dot_general is cpu_dot_general


def test_refuses_other_products():
    x, w = jnp.zeros((3, 4)), jnp.zeros((4, 5))
    with pytest.raises(ValueError, match="not a Dense product"):
        cpu_dot_general(x, w, (((0,), (0,)), ((), ())))
