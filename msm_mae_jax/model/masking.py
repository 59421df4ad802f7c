"""Per-example random masking of patches (MAE's argsort of uniform noise), jittable.

The noise for the whole global batch is drawn from one key. With jax's partitionable
threefry (the default) the values do not depend on how the batch is sharded, so a batch
split over a `data` mesh axis gets exactly the masks a single device would draw, and every
example has its own randomness.

`masking_noise` is the draw `random_masking` orders patches by: another implementation fed
the same noise (e.g. PyTorch's `forward_encoder(..., noise=...)`) removes the same patches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masking_noise(key: jax.Array, batch: int, num_patches: int) -> jax.Array:
    """The float32 uniform noise_BN in [0, 1) that `random_masking(key, ...)` sorts."""
    return jax.random.uniform(key, (batch, num_patches), jnp.float32)


def masking_from_noise(
    noise_BN: jax.Array, num_keep: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(ids_keep_BK, ids_restore_BN, mask_BN) of the patches ordered by ascending noise."""
    N = noise_BN.shape[1]
    if not isinstance(num_keep, int) or not 0 < num_keep <= N:
        raise ValueError(f"num_keep={num_keep!r} must be a Python int in [1, {N}]")
    ids_shuffle_BN = jnp.argsort(noise_BN, axis=1).astype(jnp.int32)
    ids_restore_BN = jnp.argsort(ids_shuffle_BN, axis=1).astype(jnp.int32)
    ids_keep_BK = ids_shuffle_BN[:, :num_keep]
    # Position n was removed iff its rank in the shuffle is >= num_keep.
    mask_BN = (ids_restore_BN >= num_keep).astype(jnp.float32)
    return ids_keep_BK, ids_restore_BN, mask_BN


def random_masking(
    key: jax.Array, batch: int, num_patches: int, num_keep: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (ids_keep_BK int32, ids_restore_BN int32, mask_BN float32; 1 = removed).

    `num_keep` is a static Python int so the step compiles once. Per example the patches are
    ordered by float32 uniform noise (`masking_noise`); the first `num_keep` are kept.
    `ids_restore` inverts the shuffle: gathering [kept ++ removed] tokens with it restores
    the patch order. num_keep == num_patches means no masking (identity order, zero mask;
    key unused).
    """
    if not isinstance(num_keep, int) or not 0 < num_keep <= num_patches:
        raise ValueError(f"num_keep={num_keep!r} must be a Python int in [1, {num_patches}]")
    if num_keep == num_patches:
        ids_BN = jnp.broadcast_to(jnp.arange(num_patches, dtype=jnp.int32), (batch, num_patches))
        return ids_BN, ids_BN, jnp.zeros((batch, num_patches), jnp.float32)
    return masking_from_noise(masking_noise(key, batch, num_patches), num_keep)
