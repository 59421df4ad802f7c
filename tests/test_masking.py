"""random_masking: counts, inverse permutation, uniform marginals, independence, jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msm_mae_jax.model.masking import random_masking


def test_counts_inverse_and_mask_consistency():
    B, N, K = 16, 65, 16
    ids_keep, ids_restore, mask = map(np.asarray, random_masking(jax.random.key(0), B, N, K))
    assert ids_keep.shape == (B, K) and ids_restore.shape == (B, N) and mask.shape == (B, N)
    assert ids_keep.dtype == np.int32 and mask.dtype == np.float32
    np.testing.assert_array_equal(mask.sum(1), N - K)
    for b in range(B):
        assert len(set(ids_keep[b])) == K
        np.testing.assert_array_equal(np.sort(ids_restore[b]), np.arange(N))  # a permutation
        assert np.all(mask[b, ids_keep[b]] == 0)
        # ids_restore inverts the shuffle: restore[shuffle[i]] == i for the kept prefix.
        np.testing.assert_array_equal(ids_restore[b, ids_keep[b]], np.arange(K))
        # Un-shuffling [kept ++ removed] tokens with ids_restore gives the original order.
        removed = np.setdiff1d(np.arange(N), ids_keep[b])
        removed = removed[np.argsort(ids_restore[b, removed])]
        shuffled = np.concatenate([ids_keep[b], removed])
        np.testing.assert_array_equal(shuffled[ids_restore[b]], np.arange(N))


def test_keep_marginals_are_uniform():
    """Each position is kept with probability K/N: binomial z-scores over 4096 draws."""
    B, N, K, draws = 64, 65, 16, 64
    keys = jax.random.split(jax.random.key(1), draws)
    masks = jax.vmap(lambda k: random_masking(k, B, N, K)[2])(keys)
    kept = np.asarray(1 - masks).reshape(-1, N).sum(0)
    n, p = B * draws, K / N
    z = (kept - n * p) / np.sqrt(n * p * (1 - p))
    # 65 positions: |z| > 4.5 has a family-wise probability < 5e-4 under uniformity.
    assert np.abs(z).max() < 4.5, z
    # And the spread of z is that of a standard normal (not degenerate, not inflated);
    # positions are slightly negatively correlated (fixed K), which only shrinks it.
    assert 0.6 < z.std() < 1.35


def test_examples_and_keys_get_different_masks():
    _, _, m = random_masking(jax.random.key(2), 32, 65, 16)
    m = np.asarray(m)
    assert len({row.tobytes() for row in m}) == 32
    _, _, m2 = random_masking(jax.random.key(3), 32, 65, 16)
    assert not np.array_equal(m, np.asarray(m2))
    _, _, m3 = random_masking(jax.random.key(2), 32, 65, 16)
    np.testing.assert_array_equal(m, np.asarray(m3))  # deterministic in the key


def test_jit_equals_eager():
    key = jax.random.key(4)
    eager = random_masking(key, 8, 130, 32)
    jitted = jax.jit(random_masking, static_argnums=(1, 2, 3))(key, 8, 130, 32)
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_masks_follow_argsort_of_float32_uniform_noise():
    key = jax.random.key(5)
    noise = np.asarray(jax.random.uniform(key, (4, 65), jnp.float32))
    ids_keep, _, _ = random_masking(key, 4, 65, 16)
    np.testing.assert_array_equal(np.asarray(ids_keep), np.argsort(noise, axis=1)[:, :16])


def test_keep_all_is_no_masking():
    ids_keep, ids_restore, mask = random_masking(jax.random.key(6), 3, 65, 65)
    np.testing.assert_array_equal(np.asarray(ids_keep), np.tile(np.arange(65), (3, 1)))
    np.testing.assert_array_equal(np.asarray(ids_restore), np.tile(np.arange(65), (3, 1)))
    assert float(np.asarray(mask).sum()) == 0.0


@pytest.mark.parametrize("num_keep", [0, 66, 16.0])
def test_invalid_num_keep(num_keep):
    with pytest.raises(ValueError, match="num_keep"):
        random_masking(jax.random.key(0), 2, 65, num_keep)


def test_sharded_batch_gives_the_single_device_masks():
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    n = len(jax.devices())
    if n < 2:
        pytest.skip("needs several (fake) devices")
    mesh = Mesh(np.array(jax.devices()), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    out_sharding = NamedSharding(mesh, PartitionSpec("data"))
    B = 4 * n
    f = jax.jit(lambda k: random_masking(k, B, 65, 16), out_shardings=out_sharding)
    key = jax.random.key(7)
    sharded = f(key)
    assert sharded[2].sharding.spec == PartitionSpec("data")
    assert len(sharded[2].addressable_shards) == n
    single = jax.jit(lambda k: random_masking(k, B, 65, 16))(key)
    for a, b in zip(sharded, single, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
