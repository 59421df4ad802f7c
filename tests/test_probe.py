"""The EVAR linear probe against independent references (sklearn, hand-written numpy)."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score
from sklearn.preprocessing import StandardScaler

from msm_mae_jax.evaluation import probe
from msm_mae_jax.tasks import metrics


def _blobs(rng, n, d=16, c=4, sep=6.0):
    centres = rng.normal(size=(c, d)) * sep
    y = rng.integers(0, c, n)
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def test_scaler_matches_sklearn():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(50, 6))
    x[:, 2] = 5.0  # constant feature: sklearn keeps it unscaled
    ours = probe.Scaler.fit(x)
    ref = StandardScaler().fit(x)
    np.testing.assert_allclose(ours(x), ref.transform(x), atol=1e-5)


# EVAR's linear evaluation (REFERENCE.md): Adam lr 3e-4 (betas .9/.999, L2 weight decay 1e-8),
# batch min(200, N), up to 200 epochs, early stopping with patience 20, scaler fitted on train.
EVAR = dict(lr=3e-4, weight_decay=1e-8, max_epochs=200, patience=20)


@pytest.mark.parametrize("n", [150, 450])
def test_defaults_are_the_evar_recipe(n, monkeypatch):
    seen = []
    train = probe._train

    def spy(key, x_ND, y_N, xv_ND, yv_N, **kw):
        seen.append((np.asarray(x_ND), np.asarray(xv_ND), kw))
        return train(key, x_ND, y_N, xv_ND, yv_N, **kw)

    monkeypatch.setattr(probe, "_train", spy)
    rng = np.random.default_rng(5)
    x, y = _blobs(rng, n + 100)
    x = x * rng.uniform(0.5, 4.0, x.shape[1]) + rng.normal(0, 5, x.shape[1])
    probe.linear_probe(x[:n], y[:n], x[n : n + 50], y[n : n + 50], x[n + 50 :], y[n + 50 :])
    ((x_ND, xv_ND, kw),) = seen
    assert {k: kw[k] for k in EVAR} == EVAR
    assert kw["batch_size"] == min(200, n) and not kw["multilabel"]
    # Train and valid standardised with the training statistics (sklearn's StandardScaler).
    ref = StandardScaler().fit(x[:n])
    np.testing.assert_allclose(x_ND, ref.transform(x[:n]), atol=1e-5)
    np.testing.assert_allclose(xv_ND, ref.transform(x[n : n + 50]), atol=1e-5)


def test_default_stopping_rule_is_patience_20_within_200_epochs():
    rng = np.random.default_rng(6)
    x, y = _blobs(rng, 300, sep=0.5)
    r = probe.linear_probe(
        x[:200], y[:200], x[200:250], y[200:250], x[250:], y[250:], patience=10**6
    )
    assert r.epochs_run == 200 and r.valid_curve.shape == (200,)  # the cap, reached
    xv = rng.normal(size=(100, 16)).astype(np.float32)
    yv = (xv[:, 0] <= 0).astype(np.int32)  # anti-correlated with train: stops early
    r = probe.linear_probe(x[:200], (x[:200, 0] > 0).astype(np.int32), xv, yv, xv, yv, lr=1e-2)
    assert r.epochs_run == r.best_epoch + 20 < 200


def test_valid_and_test_sets_are_scaled_with_training_statistics():
    """One feature, class x > 0, standard normal training clips; every test clip lies in
    [0.5, 1.5] (class 1). With the training statistics they all stay on their side of the
    boundary; standardised with their own statistics about half would cross it. (Statistics
    pooled over all splits move every split alike: that leak is caught by the exact check of
    test_defaults_are_the_evar_recipe.)"""
    rng = np.random.default_rng(7)
    x, xv = rng.normal(size=(400, 1)), rng.normal(size=(200, 1))
    xt = rng.uniform(0.5, 1.5, size=(1000, 1))
    y, yv = (x[:, 0] > 0).astype(int), (xv[:, 0] > 0).astype(int)
    r = probe.linear_probe(x, y, xv, yv, xt, np.ones(1000, int), lr=0.05)
    assert r.valid_score >= 0.97
    assert r.score >= 0.99


def test_separable_features_reach_full_accuracy():
    rng = np.random.default_rng(0)
    x, y = _blobs(rng, 600)
    r = probe.linear_probe(x[:400], y[:400], x[400:500], y[400:500], x[500:], y[500:], seed=0)
    assert r.metric == "accuracy"
    assert r.score >= 0.99
    assert r.valid_score >= 0.99
    assert 1 <= r.best_epoch <= r.epochs_run <= 200
    assert r.valid_curve.shape == (r.epochs_run,) and np.all(np.isfinite(r.train_loss))
    # training reduces the loss
    assert r.train_loss[-1] < r.train_loss[0]


def test_random_labels_give_chance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1200, 32)).astype(np.float32)
    y = rng.integers(0, 4, 1200)
    res = probe.linear_probe_seeds(
        x[:600], y[:600], x[600:800], y[600:800], x[800:], y[800:], seeds=(0, 1)
    )
    assert res["metric"] == "accuracy" and len(res["per_seed"]) == 2
    assert abs(res["mean"] - 0.25) < 0.07  # 400 test clips: std of chance accuracy ~0.022
    assert res["std"] == pytest.approx(np.std(res["per_seed"]))


def test_early_stopping_restores_best_epoch():
    """Validation labels agree with train only for a feature the model learns first.

    Feature 0 is strong and decides the train labels; the validation labels are its opposite
    except for a few examples, so validation accuracy is best before training has learned it
    and then falls: the probe must stop after `patience` epochs and score the test set with
    the early weights, not the final ones.
    """
    rng = np.random.default_rng(0)
    n = 400
    x = rng.normal(size=(n, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    xv = rng.normal(size=(200, 8)).astype(np.float32)
    yv = (xv[:, 0] <= 0).astype(np.int32)  # anti-correlated: accuracy decreases with training
    r = probe.linear_probe(x, y, xv, yv, xv, yv, seed=0, patience=5, max_epochs=200, lr=1e-2)
    curve = r.valid_curve
    # EVAR's rule: a score equal to the best so far also counts (the last maximum is kept)
    assert r.best_epoch == len(curve) - int(np.argmax(curve[::-1]))
    assert r.epochs_run == r.best_epoch + 5  # stopped after 5 epochs without improvement
    assert r.valid_score == pytest.approx(curve.max())
    # the test set here is the validation set: restored weights reproduce the best score
    assert r.score == pytest.approx(curve.max(), abs=1e-6)
    assert r.score > curve[-1]


def test_runs_are_deterministic_per_seed():
    rng = np.random.default_rng(2)
    x, y = _blobs(rng, 300, sep=0.5)
    a = probe.linear_probe(
        x[:200], y[:200], x[200:250], y[200:250], x[250:], y[250:], seed=3, max_epochs=15
    )
    b = probe.linear_probe(
        x[:200], y[:200], x[200:250], y[200:250], x[250:], y[250:], seed=3, max_epochs=15
    )
    np.testing.assert_array_equal(a.valid_curve, b.valid_curve)
    assert a.score == b.score


def test_average_precision_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(300, 5))
    y[:, 4] = 0  # a class without positives is left out of the macro mean
    scores = rng.integers(0, 6, size=(300, 5)).astype(np.float32)  # many tied scores
    for c in range(4):
        ap = float(metrics.average_precision(scores[:, c], y[:, c]))
        assert ap == pytest.approx(average_precision_score(y[:, c], scores[:, c]), abs=1e-6)
    ref = np.mean([average_precision_score(y[:, c], scores[:, c]) for c in range(4)])
    assert float(metrics.mean_average_precision(scores, y)) == pytest.approx(ref, abs=1e-6)


def test_multilabel_probe_uses_map():
    rng = np.random.default_rng(0)
    n, d, c = 900, 12, 5
    x = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.normal(size=(d, c))
    y = (x @ w > 0.5).astype(np.int32)  # each label is a linear function of the features
    # 3 mini-batches per epoch: a larger lr than EVAR's reaches convergence within 200 epochs
    r = probe.linear_probe(
        x[:600], y[:600], x[600:700], y[600:700], x[700:], y[700:], seed=0, multilabel=True, lr=3e-3
    )
    assert r.metric == "mAP"
    assert r.score > 0.9
    # random labels give mAP about the positive rate
    yr = rng.permutation(y)
    rr = probe.linear_probe(
        x[:600],
        yr[:600],
        x[600:700],
        yr[600:700],
        x[700:],
        yr[700:],
        seed=0,
        multilabel=True,
        lr=3e-3,
    )
    assert rr.score < r.score - 0.3


def test_probe_input_errors():
    x = np.zeros((10, 3), np.float32)
    y = np.zeros(10, int)
    with pytest.raises(ValueError, match="valid_X"):
        probe.linear_probe(x, y, np.zeros((0, 3)), y[:0], x, y)
    with pytest.raises(ValueError, match="train_X contains NaN"):
        probe.linear_probe(np.full((10, 3), np.nan), y, x, y, x, y)
    with pytest.raises(ValueError, match="widths differ"):
        probe.linear_probe(x, y, x[:, :2], y, x, y)
