"""Reconstruction loss of MSM-MAE: per-patch MSE averaged over the masked patches only."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_mse(
    pred_BNP: jax.Array, target_BNP: jax.Array, mask_BN: jax.Array, norm_pix: bool = False
) -> jax.Array:
    """Mean over masked patches (mask 1) of the per-patch mean squared error, in float32.

    norm_pix: the target patch is normalised by its own mean and unbiased variance
    ((t - mean) / sqrt(var + 1e-6)), as the official `norm_pix_loss` (torch.var defaults to
    the unbiased estimate). Visible patches get an exactly zero gradient. With no masked patch
    the loss is 0 (the official code would divide by zero).
    """
    pred_BNP = pred_BNP.astype(jnp.float32)
    target_BNP = target_BNP.astype(jnp.float32)
    mask_BN = mask_BN.astype(jnp.float32)
    if norm_pix:
        mean_BN1 = target_BNP.mean(axis=-1, keepdims=True)
        var_BN1 = target_BNP.var(axis=-1, keepdims=True, ddof=1)
        target_BNP = (target_BNP - mean_BN1) / jnp.sqrt(var_BN1 + 1e-6)
    per_patch_BN = jnp.square(pred_BNP - target_BNP).mean(axis=-1)
    return (per_patch_BN * mask_BN).sum() / jnp.maximum(mask_BN.sum(), 1.0)
