"""Normalisation statistics: the streaming accumulator against numpy (chunks, merges, a large
offset), and `NormStats.normalize` on numpy, jax and tf values."""

import jax.numpy as jnp
import numpy as np
import pytest

from msm_mae_jax.data.normalization import F32_EPS, NormAccumulator, NormStats
from msm_mae_jax.data.tf_setup import tensorflow

tf = tensorflow()


def _chunks(seed, n=12, offset=-6.0, scale=4.0):
    rng = np.random.default_rng(seed)
    shapes = [(80, int(rng.integers(0, 40))) for _ in range(n)] + [(3, 5, 7), (0,), (1,)]
    return [(offset + scale * rng.standard_normal(s)).astype(np.float32) for s in shapes]


def test_accumulator_matches_numpy_over_random_chunks():
    chunks = _chunks(0)
    ref = np.concatenate([c.astype(np.float64).ravel() for c in chunks])
    acc = NormAccumulator()
    for c in chunks:
        assert acc.add(c) is acc
    assert acc.count == ref.size
    stats = acc.stats()
    assert stats.mean == pytest.approx(ref.mean(), rel=1e-13)
    assert stats.std == pytest.approx(ref.std(), rel=1e-12)  # population std (ddof=0)


def test_unbiased_std_plus_eps_as_the_official_statistics():
    chunks = _chunks(3, n=4)
    ref = np.concatenate([c.astype(np.float64).ravel() for c in chunks])
    acc = NormAccumulator()
    for c in chunks:
        acc.add(c)
    stats = acc.stats(unbiased=True, eps=F32_EPS)
    assert F32_EPS == np.finfo(np.float32).eps  # torch.finfo().eps
    assert stats.mean == pytest.approx(ref.mean(), rel=1e-13)
    assert stats.std == pytest.approx(ref.std(ddof=1) + F32_EPS, rel=1e-12)
    assert stats.std != pytest.approx(ref.std() + F32_EPS, rel=1e-12)
    with pytest.raises(ValueError, match="no values"):
        NormAccumulator().add(np.ones(1)).stats(unbiased=True)


def test_merged_accumulators_equal_one_pass_and_numpy():
    chunks = _chunks(1, n=20)
    ref = np.concatenate([c.astype(np.float64).ravel() for c in chunks])
    parts = [NormAccumulator() for _ in range(3)]
    for k, c in enumerate(chunks):
        parts[k % 3].add(c)
    merged = NormAccumulator().merge(parts[0]).merge(NormAccumulator()).merge(parts[1])
    merged.merge(NormAccumulator.from_dict(parts[2].to_dict()))  # as prepare's shard markers
    one = NormAccumulator()
    for c in chunks:
        one.add(c)
    assert merged.count == one.count == ref.size
    assert merged.mean == pytest.approx(one.mean, rel=1e-13)
    assert merged.m2 == pytest.approx(one.m2, rel=1e-12)
    assert merged.stats().mean == pytest.approx(ref.mean(), rel=1e-13)
    assert merged.stats().std == pytest.approx(ref.std(), rel=1e-12)


def test_accumulator_is_accurate_far_from_zero():
    # sum / sum-of-squares loses every digit of a std of 1e-3 around 1e5 in float64.
    rng = np.random.default_rng(2)
    chunks = [1e5 + 1e-3 * rng.standard_normal(1000) for _ in range(10)]
    ref = np.concatenate(chunks)
    acc = NormAccumulator()
    for c in chunks:
        acc.add(c)
    assert acc.stats().std == pytest.approx(ref.std(), rel=1e-6)


def test_empty_accumulator_and_invalid_statistics():
    with pytest.raises(ValueError, match="no values"):
        NormAccumulator().add(np.zeros(0)).stats()
    with pytest.raises(ValueError, match="invalid normalisation statistics"):
        NormAccumulator().add(np.full(10, 3.0)).stats()  # std 0
    with pytest.raises(ValueError, match="invalid normalisation statistics"):
        NormStats(float("nan"), 1.0)


def test_normalize_numpy_jax_tf_keep_dtype_and_agree():
    stats = NormStats(-6.25, 3.5)
    x = np.random.default_rng(3).normal(-6, 4, (2, 80, 7)).astype(np.float32)
    ref = ((x.astype(np.float64) + 6.25) / 3.5).astype(np.float32)
    out_np = stats.normalize(x)
    out_jax = stats.normalize(jnp.asarray(x))
    out_tf = stats.normalize(tf.constant(x))
    for out in (out_np, out_jax, out_tf):
        assert np.asarray(out).dtype == np.float32
        np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-6, atol=1e-6)
    assert stats.normalize(x.astype(np.float64)).dtype == np.float64
    np.testing.assert_array_equal(np.asarray(out_tf), out_np)  # the same float32 arithmetic
