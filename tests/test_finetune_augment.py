"""Fine-tuning augmentations and stochastic depth against numpy written from the formulas."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_utils import small_model

from msm_mae_jax.finetune import augment
from msm_mae_jax.model import mae

MICRO = small_model(width=16, heads=2, input_size=(32, 32), patch_size=(16, 16))


def _np_span(u1, u2, size, param):
    # torchaudio.functional.mask_along_axis: value = rand * param, min_value = rand * (size -
    # value), start = long(min_value), end = long(min_value) + long(value)
    value = u1 * param
    start = int(np.floor(u2 * (size - value)))
    return start, start + int(np.floor(value))


def test_spec_augment_masks_follow_torchaudio_formula():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 12, 40)).astype(np.float32)
    key = jax.random.key(3)
    out = np.asarray(augment.spec_augment(key, jnp.asarray(x), freq_mask=6, time_mask=50))
    k_f, k_t = jax.random.split(key)
    u_f = np.asarray(jax.random.uniform(k_f, (5, 2)), np.float64)
    u_t = np.asarray(jax.random.uniform(k_t, (5, 2)), np.float64)
    want = x.copy()
    for b in range(5):
        f0, f1 = _np_span(u_f[b, 0], u_f[b, 1], 12, 6)
        t0, t1 = _np_span(u_t[b, 0], u_t[b, 1], 40, 40)  # time_mask 50 > 40 frames: clamped
        want[b, f0:f1, :] = 0.0
        want[b, :, t0:t1] = 0.0
    np.testing.assert_array_equal(out, want)
    assert len({tuple(np.flatnonzero(out[b].sum(1) == 0)) for b in range(5)}) > 1  # per example


def test_mask_span_limits():
    u = jnp.array([0.0, 0.999999, 0.5])
    start, end = augment.mask_span(u, jnp.array([0.0, 0.999999, 1.0]), 10, 4)
    width = np.asarray(end - start)
    assert list(width) == [0, 3, 2] and np.all(np.asarray(start) >= 0)
    assert np.all(np.asarray(end) <= 10)


def test_mixup_mixes_inputs_targets_and_masks():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 6)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[[0, 1, 2, 1]]
    valid = np.zeros((4, 6), bool)
    valid[:, :2] = True
    valid[2, :5] = True
    lam, perm = augment.sample_mixup(7, 11, 4, 0.3)
    xm, ym, vm = (np.asarray(a) for a in augment.apply_mixup(x, y, valid, lam, perm))
    for b in range(4):
        p, lb = perm[b], float(lam[b])
        np.testing.assert_allclose(xm[b], lb * x[b] + (1 - lb) * x[p], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ym[b], lb * y[b] + (1 - lb) * y[p], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(vm[b], valid[b] | valid[p])
    np.testing.assert_allclose(ym.sum(1), 1.0, rtol=1e-6)


def test_mixup_draws_are_seeded_beta_and_permutations():
    a1, p1 = augment.sample_mixup(0, 5, 64, 0.3)
    a2, p2 = augment.sample_mixup(0, 5, 64, 0.3)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(p1, p2)
    assert sorted(p1.tolist()) == list(range(64))
    assert not np.array_equal(augment.sample_mixup(0, 6, 64, 0.3)[0], a1)
    lam = np.concatenate([augment.sample_mixup(0, s, 1000, 0.3)[0] for s in range(20)])
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1))
    assert lam.mean() == pytest.approx(0.5, abs=0.01)
    assert lam.var() == pytest.approx(1 / (4 * 1.6), rel=0.05)


def _np_rrc(x_FT, i, j, h, w, canvas):
    """EVAR's RandomResizeCrop with bilinear align_corners=True resizing, per pixel."""
    F, T = x_FT.shape
    ch, cw = int(F * canvas[0]), int(T * canvas[1])
    c = np.zeros((ch, cw))
    y0, x0 = (ch - F) // 2, (cw - T) // 2
    c[y0 : y0 + F, x0 : x0 + T] = x_FT
    crop = c[i : i + h, j : j + w]

    def interp(n_in, n_out):
        pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)
        lo = np.minimum(np.floor(pos).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, pos - lo

    out = np.zeros((F, T))
    fl, fh, fa = interp(h, F)
    tl, th, ta = interp(w, T)
    for o in range(F):
        for p in range(T):
            top = crop[fl[o], tl[p]] * (1 - ta[p]) + crop[fl[o], th[p]] * ta[p]
            bot = crop[fh[o], tl[p]] * (1 - ta[p]) + crop[fh[o], th[p]] * ta[p]
            out[o, p] = top * (1 - fa[o]) + bot * fa[o]
    return out


def test_random_resized_crop_matches_numpy_bilinear():
    cfg = augment.AugmentConfig(rrc=True)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 10, 24)).astype(np.float32)
    valid = np.zeros((6, 24), bool)
    valid[:, :20] = True
    key = jax.random.key(5)
    out, v = augment.random_resized_crop(key, jnp.asarray(x), jnp.asarray(valid), cfg)
    p = np.asarray(
        augment.rrc_params(key, 6, (10, 24), cfg.rrc_canvas, cfg.rrc_freq_scale, cfg.rrc_time_scale)
    )
    u = np.asarray(jax.random.uniform(key, (6, 4)), np.float64)
    ch, cw = 10, 36
    for b in range(6):
        h = int(np.clip(np.floor((0.6 + u[b, 0] * 0.9) * 10), 1, ch))  # EVAR get_params
        w = int(np.clip(np.floor((0.6 + u[b, 1] * 0.9) * 24), 1, cw))
        i, j = int(np.floor(u[b, 2] * (ch - h + 1))), int(np.floor(u[b, 3] * (cw - w + 1)))
        assert tuple(p[b]) == (i, j, h, w) and 0 <= i <= ch - h and 0 <= j <= cw - w
        want = _np_rrc(x[b].astype(np.float64), i, j, h, w, cfg.rrc_canvas)
        np.testing.assert_allclose(np.asarray(out[b]), want, atol=2e-5)
        real = _np_rrc(valid[b][None].repeat(10, 0).astype(np.float64), i, j, h, w, (1.0, 1.5))
        np.testing.assert_array_equal(np.asarray(v[b]), real[0] > 0)
    assert len({tuple(r) for r in p}) == 6


def test_drop_path_function_matches_formula():
    x = np.random.default_rng(3).standard_normal((64, 3, 4)).astype(np.float32)
    key = jax.random.key(9)
    out = np.asarray(mae.drop_path(jnp.asarray(x), 0.25, key))
    keep = np.asarray(jax.random.bernoulli(key, 0.75, (64,)))
    np.testing.assert_allclose(out, x * keep[:, None, None] / 0.75, rtol=1e-6)
    assert 0 < keep.sum() < 64


def test_drop_path_rates_rise_linearly():
    np.testing.assert_allclose(mae.drop_path_rates(0.1, 5), [0, 0.025, 0.05, 0.075, 0.1])
    with pytest.raises(ValueError, match="drop_path_rate=1.0"):
        mae.drop_path_rates(1.0, 3)


def _encoder(params, x, **kw):
    return mae.Encoder(MICRO).apply({"params": params}, x, **kw)


def test_encoder_drop_path_zero_is_the_plain_encoder_and_high_rate_skips_blocks():
    x = jnp.asarray(np.random.default_rng(4).standard_normal((4, 1, 32, 32)), jnp.float32)
    params = nn.unbox(mae.Encoder(MICRO).init(jax.random.key(0), x)["params"])
    plain = np.asarray(_encoder(params, x).x_BKD)
    keyed = _encoder(params, x, drop_path_rate=0.0, drop_path_key=jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(keyed.x_BKD), plain)
    a = _encoder(params, x, drop_path_rate=0.5, drop_path_key=jax.random.key(1)).x_BKD
    b = _encoder(params, x, drop_path_rate=0.5, drop_path_key=jax.random.key(1)).x_BKD
    c = _encoder(params, x, drop_path_rate=0.5, drop_path_key=jax.random.key(2)).x_BKD
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))
    # Rates rise 0 -> r over the blocks: block 0 always runs; with r ~ 1 block 1 is skipped,
    # so the output is the final LayerNorm of block 0's output.
    out = _encoder(
        params, x, drop_path_rate=0.999999, drop_path_key=jax.random.key(3), return_layers=True
    )
    h = np.asarray(out.layers[0], np.float64)
    mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
    n = params["norm"]
    want = (h - mu) / np.sqrt(var + 1e-6) * np.asarray(n["scale"]) + np.asarray(n["bias"])
    np.testing.assert_allclose(np.asarray(out.x_BKD), want, atol=1e-4)
    with pytest.raises(ValueError, match="needs a drop_path_key"):
        _encoder(params, x, drop_path_rate=0.1)
