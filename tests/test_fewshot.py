"""The closed-form ridge few-shot probe against numpy's least squares and normal equations."""

import numpy as np
import pytest

from msm_mae_jax.train import fewshot


def _blobs(rng, n, d=16, c=4, sep=6.0):
    centres = rng.normal(size=(c, d)) * sep
    y = rng.integers(0, c, n)
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


@pytest.mark.parametrize("n,d", [(80, 10), (12, 40)])  # N >= D (x^T x) and N < D (x x^T)
def test_ridge_equals_lstsq_at_zero_l2(n, d):
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(n, d))
    y = rng.integers(0, 3, n)
    w, transform = fewshot.ridge_weights(x, y, l2_regs=(0.0, 1.0))
    # independent reference: whitening + bias feature by hand, then lstsq (min-norm)
    a = (x - x.mean(0)) / (x.std(0) + 1e-5)
    a = np.concatenate([a, np.full((n, 1), 100.0)], 1)
    t = 2.0 * np.eye(3)[y] - 1.0
    ref, *_ = np.linalg.lstsq(a, t, rcond=None)
    np.testing.assert_allclose(transform(x), a, atol=1e-10)
    np.testing.assert_allclose(w[0], ref, rtol=1e-6, atol=1e-6)
    # and ridge with l2 = 1 equals the normal-equation solution
    ridge = np.linalg.solve(a.T @ a + np.eye(d + 1), a.T @ t)
    np.testing.assert_allclose(w[1], ridge, rtol=1e-6, atol=1e-8)


def test_ridge_fewshot_accuracy():
    rng = np.random.default_rng(0)
    x, y = _blobs(rng, 400, d=32, c=5, sep=1.0)
    res = fewshot.ridge_fewshot(x[:300], y[:300], x[300:], y[300:])
    assert set(res["accuracy"]) == set(fewshot.DEFAULT_L2_REGS)
    assert res["best_accuracy"] == max(res["accuracy"].values()) >= 0.95
    xr = rng.normal(size=(400, 32))
    yr = rng.integers(0, 5, 400)
    chance = fewshot.ridge_fewshot(xr[:300], yr[:300], xr[300:], yr[300:], l2_regs=(1.0,))
    assert chance["best_accuracy"] < 0.4
