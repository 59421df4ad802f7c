"""Masked MSE: value against numpy, zero gradient at visible patches, norm_pix target."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msm_mae_jax.model.losses import masked_mse


def _data(seed=0, B=3, N=10, P=16):
    rng = np.random.default_rng(seed)
    pred = rng.normal(size=(B, N, P)).astype(np.float32)
    target = rng.normal(2.0, 3.0, size=(B, N, P)).astype(np.float32)
    mask = (rng.random((B, N)) < 0.7).astype(np.float32)
    mask[:, 0] = 1.0
    mask[:, 1] = 0.0
    return pred, target, mask


@pytest.mark.parametrize("norm_pix", [False, True])
def test_value_matches_numpy(norm_pix):
    pred, target, mask = _data()
    t = target.astype(np.float64)
    if norm_pix:  # torch's Tensor.var is the unbiased estimate
        t = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, ddof=1, keepdims=True) + 1e-6)
    per_patch = ((pred - t) ** 2).mean(-1)
    expected = (per_patch * mask).sum() / mask.sum()
    got = masked_mse(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask), norm_pix)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_gradient_at_visible_patches_is_exactly_zero(norm_pix):
    pred, target, mask = _data(1)
    g = jax.grad(masked_mse)(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask), norm_pix)
    g = np.asarray(g)
    assert np.all(g[mask == 0] == 0.0)
    assert np.all(np.abs(g[mask == 1]).sum(-1) > 0)


def test_loss_ignores_visible_targets():
    pred, target, mask = _data(2)
    other = target.copy()
    other[mask == 0] += 100.0
    a = masked_mse(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask))
    b = masked_mse(jnp.asarray(pred), jnp.asarray(other), jnp.asarray(mask))
    assert float(a) == float(b)


def test_bf16_prediction_is_computed_in_float32():
    pred, target, mask = _data(3)
    loss = masked_mse(jnp.asarray(pred, jnp.bfloat16), jnp.asarray(target), jnp.asarray(mask))
    assert loss.dtype == jnp.float32


def test_no_masked_patch_gives_zero_not_nan():
    pred, target, _ = _data(4)
    assert float(masked_mse(pred, target, np.zeros(pred.shape[:2], np.float32))) == 0.0
