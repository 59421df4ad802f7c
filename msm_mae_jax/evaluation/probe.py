"""The EVAR linear probe on frozen clip embeddings.

`linear_probe`: the EVAR linear-evaluation protocol (Niizumi et al., EVAR / MSM-MAE papers):
features standardised with training statistics, one linear layer trained with Adam
(lr 3e-4, betas 0.9/0.999, L2 weight decay 1e-8), mini-batches of min(200, N), up to 200
epochs, early stopping on validation accuracy (patience 20: 20 epochs in a row without a
score >= the best so far; a tie counts as better, as EVAR's `EarlyStopping`) with the best
weights restored, then the test score. The whole run (all epochs, shuffling, validation,
early stopping) is one jitted `lax.while_loop`, so a probe takes seconds.

The closed-form ridge probe of the in-training evaluation is `msm_mae_jax.train.fewshot`.

Shape letters: N examples, D feature width, C classes, E epochs, M mini-batches per epoch,
B mini-batch.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from msm_mae_jax.tasks.metrics import accuracy, mean_average_precision

# ---------------------------------------------------------------------------------------------
# Feature standardisation (sklearn StandardScaler semantics: ddof=0, constant features -> 1).


@dataclasses.dataclass(frozen=True)
class Scaler:
    mean_D: np.ndarray
    scale_D: np.ndarray

    @classmethod
    def fit(cls, x_ND: np.ndarray) -> Scaler:
        x = np.asarray(x_ND, np.float64)
        std = x.std(axis=0)
        # sklearn leaves constant features unscaled instead of dividing by ~0
        std = np.where(
            std < 10 * np.finfo(np.float64).eps * np.maximum(1.0, np.abs(x.mean(0))), 1.0, std
        )
        return cls(x.mean(axis=0), std)

    def __call__(self, x_ND: np.ndarray) -> np.ndarray:
        return ((np.asarray(x_ND, np.float64) - self.mean_D) / self.scale_D).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# EVAR linear probe.


@dataclasses.dataclass
class ProbeResult:
    """One probe run. `score` is test accuracy (single-label) or test mAP (multi-label)."""

    metric: str  # 'accuracy' or 'mAP'
    score: float
    valid_score: float  # validation score of the restored (best) epoch
    best_epoch: int  # 1-based epoch whose weights were restored
    epochs_run: int
    valid_curve: np.ndarray  # validation score after each epoch run, [epochs_run]
    train_loss: np.ndarray  # mean training loss of each epoch run, [epochs_run]
    seed: int


def _init_linear(key: jax.Array, d: int, c: int) -> dict:
    # torch.nn.Linear's default init (EVAR's classifier is a torch Linear): U(±1/sqrt(fan_in)).
    kw, kb = jax.random.split(key)
    bound = 1.0 / np.sqrt(d)
    return {
        "w_DC": jax.random.uniform(kw, (d, c), jnp.float32, -bound, bound),
        "b_C": jax.random.uniform(kb, (c,), jnp.float32, -bound, bound),
    }


def _logits(params: dict, x_ND: jax.Array) -> jax.Array:
    return x_ND @ params["w_DC"] + params["b_C"]


def _loss(params, x_BD, y_B, w_B, multilabel: bool):
    logits = _logits(params, x_BD)
    if multilabel:
        per_example = optax.sigmoid_binary_cross_entropy(logits, y_B).mean(-1)
    else:
        per_example = optax.softmax_cross_entropy_with_integer_labels(logits, y_B)
    # w_B masks the padding that makes every epoch a whole number of equal-size batches;
    # the last real batch is then exactly torch's short final batch (mean over its examples).
    return jnp.sum(per_example * w_B) / jnp.maximum(jnp.sum(w_B), 1.0)


@functools.partial(
    jax.jit,
    static_argnames=(
        "num_classes",
        "batch_size",
        "max_epochs",
        "patience",
        "multilabel",
        "lr",
        "weight_decay",
    ),
)
def _train(
    key,
    x_ND,
    y_N,
    xv_ND,
    yv_N,
    *,
    num_classes,
    batch_size,
    max_epochs,
    patience,
    multilabel,
    lr,
    weight_decay,
):
    n, d = x_ND.shape
    m = -(-n // batch_size)  # mini-batches per epoch (last one short, as drop_last=False)
    pad = m * batch_size - n
    # torch.optim.Adam(weight_decay=wd) adds wd * param to the gradient before the Adam moments
    # (L2, not AdamW's decoupled decay): add_decayed_weights first, then adam.
    tx = optax.chain(
        optax.add_decayed_weights(weight_decay), optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)
    )
    k_init, k_loop = jax.random.split(key)
    params = _init_linear(k_init, d, num_classes)
    opt_state = tx.init(params)
    grad_fn = jax.value_and_grad(_loss)

    def valid_score(p):
        logits = _logits(p, xv_ND)
        if multilabel:
            return mean_average_precision(jax.nn.sigmoid(logits), yv_N)
        return accuracy(logits, yv_N)

    def epoch(carry):
        (e, params, opt_state, best, best_score, best_epoch, curve, losses, key) = carry
        key, k_perm = jax.random.split(key)
        perm = jnp.concatenate(
            [jax.random.permutation(k_perm, n), jnp.zeros((pad,), jnp.int32)]
        ).reshape(m, batch_size)
        w_MB = (jnp.arange(m * batch_size) < n).astype(jnp.float32).reshape(m, batch_size)

        def step(state, batch):
            params, opt_state = state
            idx_B, w_B = batch
            loss, grads = grad_fn(params, x_ND[idx_B], y_N[idx_B], w_B, multilabel)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), loss_M = jax.lax.scan(step, (params, opt_state), (perm, w_MB))
        score = valid_score(params)
        improved = score >= best_score  # EVAR's EarlyStopping: a tie moves to the later epoch
        best = jax.tree.map(lambda new, old: jnp.where(improved, new, old), params, best)
        best_score = jnp.where(improved, score, best_score)
        best_epoch = jnp.where(improved, e, best_epoch)
        # torch-style epoch loss: mean of batch losses weighted by batch size
        sizes_M = w_MB.sum(-1)
        curve, losses = curve.at[e].set(score), losses.at[e].set(jnp.sum(loss_M * sizes_M) / n)
        return (e + 1, params, opt_state, best, best_score, best_epoch, curve, losses, key)

    def keep_going(carry):
        e, best_epoch = carry[0], carry[5]
        return (e < max_epochs) & (e - best_epoch <= patience)

    init = (
        jnp.int32(0),
        params,
        opt_state,
        params,
        jnp.float32(-jnp.inf),
        jnp.int32(-1),
        jnp.full((max_epochs,), jnp.nan, jnp.float32),
        jnp.full((max_epochs,), jnp.nan, jnp.float32),
        k_loop,
    )
    e, _, _, best, best_score, best_epoch, curve, losses, _ = jax.lax.while_loop(
        keep_going, epoch, init
    )
    return best, best_score, best_epoch, e, curve, losses


def _check_split(name: str, x, y, multilabel: bool) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{name}_X must be a non-empty [N, D] array, got shape {x.shape}")
    if len(y) != len(x):
        raise ValueError(f"{name}_X has {len(x)} rows but {name}_y has {len(y)} labels")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}_X contains NaN or Inf")
    if multilabel and y.ndim != 2:
        raise ValueError(f"multilabel {name}_y must be a multi-hot [N, C] array, got {y.shape}")
    if not multilabel and y.ndim != 1:
        raise ValueError(f"{name}_y must be integer class ids [N], got shape {y.shape}")
    return x, y


def linear_probe(
    train_X,
    train_y,
    valid_X,
    valid_y,
    test_X,
    test_y,
    *,
    seed: int = 0,
    lr: float = 3e-4,
    max_epochs: int = 200,
    patience: int = 20,
    batch_size: int | None = None,
    multilabel: bool = False,
    weight_decay: float = 1e-8,
    num_classes: int | None = None,
) -> ProbeResult:
    """EVAR linear evaluation of one seed.

    Labels are integer class ids [N] or, with `multilabel`, multi-hot {0,1} arrays [N, C]
    (sigmoid + binary cross-entropy; validation and test scored by macro mAP over classes
    with positives). Early stopping: training stops once `patience` epochs pass without a
    validation score >= the best so far; the best (latest of equal) epoch's weights score
    the test set.
    """
    train_X, train_y = _check_split("train", train_X, train_y, multilabel)
    valid_X, valid_y = _check_split("valid", valid_X, valid_y, multilabel)
    test_X, test_y = _check_split("test", test_X, test_y, multilabel)
    if not train_X.shape[1] == valid_X.shape[1] == test_X.shape[1]:
        raise ValueError(
            f"feature widths differ: train {train_X.shape[1]}, valid "
            f"{valid_X.shape[1]}, test {test_X.shape[1]}"
        )
    if multilabel:
        c = train_y.shape[1]
        if valid_y.shape[1] != c or test_y.shape[1] != c:
            raise ValueError("multilabel targets of train/valid/test have different class counts")
        ys = [np.asarray(v, np.float32) for v in (train_y, valid_y, test_y)]
    else:
        ys = [np.asarray(v, np.int32) for v in (train_y, valid_y, test_y)]
        c = int(max(v.max() for v in ys)) + 1
        if min(v.min() for v in ys) < 0:
            raise ValueError("class ids must be >= 0")
    if num_classes is not None:
        if num_classes < c:
            raise ValueError(f"num_classes={num_classes} but labels need {c}")
        c = int(num_classes) if not multilabel else c
    n = len(train_X)
    batch_size = min(200, n) if batch_size is None else min(int(batch_size), n)

    scaler = Scaler.fit(train_X)
    xs = [jnp.asarray(scaler(v)) for v in (train_X, valid_X, test_X)]
    best, best_score, best_epoch, epochs, curve, losses = _train(
        jax.random.key(seed),
        xs[0],
        jnp.asarray(ys[0]),
        xs[1],
        jnp.asarray(ys[1]),
        num_classes=c,
        batch_size=batch_size,
        max_epochs=int(max_epochs),
        patience=int(patience),
        multilabel=bool(multilabel),
        lr=float(lr),
        weight_decay=float(weight_decay),
    )
    logits = _logits(best, xs[2])
    if multilabel:
        score = mean_average_precision(jax.nn.sigmoid(logits), jnp.asarray(ys[2]))
    else:
        score = accuracy(logits, jnp.asarray(ys[2]))
    epochs = int(epochs)
    return ProbeResult(
        metric="mAP" if multilabel else "accuracy",
        score=float(score),
        valid_score=float(best_score),
        best_epoch=int(best_epoch) + 1,
        epochs_run=epochs,
        valid_curve=np.asarray(curve)[:epochs],
        train_loss=np.asarray(losses)[:epochs],
        seed=int(seed),
    )


def linear_probe_seeds(
    train_X, train_y, valid_X, valid_y, test_X, test_y, *, seeds=(0, 1, 2), **kw
) -> dict:
    """`linear_probe` over several seeds -> {metric, mean, std, per_seed, best_epochs, runs}."""
    runs = [
        linear_probe(train_X, train_y, valid_X, valid_y, test_X, test_y, seed=s, **kw)
        for s in seeds
    ]
    scores = np.array([r.score for r in runs])
    return {
        "metric": runs[0].metric,
        "mean": float(scores.mean()),
        "std": float(scores.std()),
        "per_seed": [float(v) for v in scores],
        "best_epochs": [r.best_epoch for r in runs],
        "runs": runs,
    }
