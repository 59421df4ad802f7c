"""A task's score: accuracy (single-label) or macro mAP (multi-label), as EVAR reports them.

Jittable; checked against sklearn in the tests. The linear probe scores with these inside its
jitted loop, fine-tuning with the same mAP.

Shape letters: N examples, C classes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def accuracy(logits_NC: jax.Array, y_N: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(logits_NC, axis=-1) == y_N)


def average_precision(scores_N: jax.Array, y_N: jax.Array) -> jax.Array:
    """Average precision of one class as sklearn's `average_precision_score` (ties grouped).

    AP = sum over thresholds of (R_k - R_{k-1}) P_k, thresholds at distinct scores; NaN when the
    class has no positive.
    """
    order = jnp.argsort(-scores_N)
    s, y = scores_N[order], y_N[order].astype(jnp.float32)
    tp = jnp.cumsum(y)
    n = jnp.arange(1, s.shape[0] + 1, dtype=jnp.float32)
    # Precision evaluated at the end of each run of tied scores: a tie group is one threshold.
    group_end = jnp.searchsorted(-s, -s, side="right") - 1
    precision_end = (tp / n)[group_end]
    positives = tp[-1]
    return jnp.where(positives > 0, jnp.sum(y * precision_end) / positives, jnp.nan)


def mean_average_precision(scores_NC: jax.Array, y_NC: jax.Array) -> jax.Array:
    """Macro mAP over the classes that have at least one positive."""
    ap_C = jax.vmap(average_precision, in_axes=(1, 1))(scores_NC, y_NC)
    return jnp.nanmean(ap_C)
