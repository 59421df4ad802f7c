"""Closed-form ridge few-shot probe on frozen features (as big_vision's `fewshot_lsr`).

Whitened features plus a large constant bias feature, ±1 one-hot targets, one eigendecomposition
of the Gram matrix shared by a sweep of l2 values: seconds to run, so it tracks pre-training
(the `probe` hook). Benchmark numbers come from the EVAR linear probe (evaluation/probe.py).

Shape letters: N examples, D feature width, C classes, L l2 values.
"""

from __future__ import annotations

import numpy as np

DEFAULT_L2_REGS = tuple(2.0**i for i in range(-10, 20))
_BIAS_FEATURE = 100.0  # large constant feature: the bias is then almost unregularised


def _whiten(x_ND, mean_D, std_D):
    x = (np.asarray(x_ND, np.float64) - mean_D) / std_D
    return np.concatenate([x, np.full((len(x), 1), _BIAS_FEATURE)], axis=1)


def ridge_weights(train_X, train_y, l2_regs=DEFAULT_L2_REGS, num_classes: int | None = None):
    """Ridge solutions for every l2 from one eigendecomposition.

    Returns (weights [len(l2_regs), D+1, C], transform) where `transform(X)` whitens X with the
    training mean/std and appends the bias feature. W(l2) = (A^T A + l2 I)^+ A^T Y for the
    transformed features A and ±1 one-hot targets Y; with N < D the same solution is computed
    through A A^T. Eigenvalues below numerical precision are dropped (pseudo-inverse), so l2 = 0
    gives the minimum-norm least-squares solution (numpy.linalg.lstsq).
    """
    x = np.asarray(train_X, np.float64)
    y = np.asarray(train_y).astype(np.int64)
    if x.ndim != 2 or len(x) == 0 or len(y) != len(x):
        raise ValueError(
            f"ridge_fewshot needs train_X [N, D] and train_y [N]; got {x.shape}, {y.shape}"
        )
    c = int(y.max()) + 1 if num_classes is None else int(num_classes)
    mean, std = x.mean(0), x.std(0) + 1e-5
    transform = lambda v: _whiten(v, mean, std)
    a_ND = transform(x)
    t_NC = 2.0 * np.eye(c)[y] - 1.0
    n, d = a_ND.shape
    if n >= d:
        eigs, q = np.linalg.eigh(a_ND.T @ a_ND)
        lhs, rhs = q, q.T @ (a_ND.T @ t_NC)
    else:
        eigs, q = np.linalg.eigh(a_ND @ a_ND.T)
        lhs, rhs = a_ND.T @ q, q.T @ t_NC
    tol = max(n, d) * np.finfo(np.float64).eps * max(float(np.abs(eigs).max()), 1e-300)
    weights = []
    for l2 in l2_regs:
        denom = eigs + float(l2)
        inv = np.where(denom > tol, 1.0 / np.where(denom > tol, denom, 1.0), 0.0)
        weights.append((lhs * inv[None, :]) @ rhs)
    return np.stack(weights), transform


def ridge_fewshot(train_X, train_y, test_X, test_y, l2_regs=DEFAULT_L2_REGS) -> dict:
    """Closed-form ridge probe: numpy features and integer labels in, accuracies out.

    Returns {"accuracy": {l2: test accuracy}, "best_l2": l2, "best_accuracy": accuracy}. The best
    is taken over the test accuracies (as big_vision's few-shot monitor): a cheap, slightly
    optimistic signal for tracking pre-training, not a benchmark number.
    """
    l2_regs = tuple(float(v) for v in l2_regs)
    test_y = np.asarray(test_y).astype(np.int64)
    c = int(max(np.max(train_y), test_y.max())) + 1
    w_LDC, transform = ridge_weights(train_X, train_y, l2_regs, num_classes=c)
    a_test = transform(test_X)
    if a_test.shape[1] != w_LDC.shape[1]:
        raise ValueError(f"test_X has width {a_test.shape[1] - 1}, train_X {w_LDC.shape[1] - 1}")
    accs = {
        float(l2): float(np.mean(np.argmax(a_test @ w, axis=1) == test_y))
        for l2, w in zip(l2_regs, w_LDC, strict=True)
    }
    best_l2 = max(accs, key=lambda k: (accs[k], k))  # ties: the stronger regularisation
    return {"accuracy": accs, "best_l2": best_l2, "best_accuracy": accs[best_l2]}
