"""Fine-tuning state and the jitted functions of one run.

The mesh, rules, optimizer-state shardings, donated step with gradient accumulation and the
host <-> global arrays are pre-training's (`train.sharded_state`); what is fine-tuning's own:
the encoder + head and their shardings, the layer-decayed optimizer, the augmentation and
loss inside the step, evaluation logits and the best-model tracking in the state.

Shape letters: B batch, F mel bins, T frames, C classes.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.finetune import augment, model, optimizer
from msm_mae_jax.model import mae
from msm_mae_jax.model.config import ModelConfig
from msm_mae_jax.train import optim, sharding
from msm_mae_jax.train.sharded_state import ShardedSetup


@flax.struct.dataclass
class FinetuneState:
    """Everything a resumed run needs besides the data position (= step)."""

    step: jax.Array  # int32: updates applied so far
    params: Any  # {'encoder', 'head'}
    opt_state: Any
    rng: jax.Array  # the augmentation / drop-path key of step s is fold_in(rng, s)
    best_params: Any  # the parameters of the best validation score so far
    best_score: jax.Array  # float32, -inf before the first evaluation
    best_step: jax.Array  # int32
    bad_evals: jax.Array  # int32: evaluations since the best one


def loss_fn(logits_BC: jax.Array, y_BC: jax.Array, multilabel: bool) -> jax.Array:
    """Soft-target cross-entropy (single-label) or binary cross-entropy averaged over classes
    (multi-label, AudioMAE's BCEWithLogitsLoss), mean over the batch."""
    if multilabel:
        return optax.sigmoid_binary_cross_entropy(logits_BC, y_BC).mean()
    return optax.softmax_cross_entropy(logits_BC, y_BC).mean()


class Setup(ShardedSetup):
    """The encoder + head, its optimizer and the jitted functions for one (task fold, model)
    pair."""

    def __init__(
        self,
        config,
        model_config: ModelConfig,
        head: model.HeadConfig,
        multilabel: bool,
        sched: optim.Schedule,
        padded_frames: int,
        devices=None,
    ):
        super().__init__(config, sched, devices)
        self.mc, self.head, self.multilabel = model_config, head, multilabel
        self.check_batch(int(config.batch_size), int(config.data.eval_batch_size))
        self.aug = augment.AugmentConfig.from_config(config.augment)
        self.drop_path = float(config.model.drop_path)
        self.freeze = bool(config.freeze_encoder)
        self.label_smoothing = float(config.label_smoothing)
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"config.label_smoothing={self.label_smoothing} must be in [0, 1)")
        F = model_config.input_size[0]
        B, C = int(config.batch_size), head.num_classes
        self.batch_shapes = ((B, F, padded_frames), (B, padded_frames), (B, C))
        self.batch_shardings = tuple(
            sharding.batch_sharding(self.mesh, self.rules, ndim=n) for n in (3, 2, 2)
        )

        abstract_params, param_sh = self._abstract_params()
        self.tx = optimizer.make_optimizer(config, sched, abstract_params, model_config.depth)
        r = self.replicated_sharding
        state_sh = FinetuneState(
            **self.shared_shardings(abstract_params, param_sh),
            best_params=param_sh,
            best_score=r,
            best_step=r,
            bad_evals=r,
        )
        self._shard_state(state_sh, self._init, abstract_params["encoder"], _KEY)
        self._init_jit = jax.jit(
            self._init, in_shardings=(param_sh["encoder"], r), out_shardings=self.state_shardings
        )
        self.train_step = self.jit_step(self._train_step, *self.batch_shardings, r, r)
        self.eval_logits = jax.jit(
            self._eval_logits, in_shardings=(param_sh, *self.batch_shardings[:2]), out_shardings=r
        )
        self.update_best = jax.jit(
            self._update_best,
            in_shardings=(self.state_shardings, r),
            out_shardings=self.state_shardings,
            donate_argnums=0,
        )

    def _abstract_params(self) -> tuple[Any, Any]:
        """(shapes of {'encoder', 'head'}, their NamedShardings: the encoder's by its logical
        axis names, the head replicated)."""
        mc = self.mc
        with self.activate():
            enc_boxed = jax.eval_shape(
                lambda: mae.Encoder(mc).init(jax.random.key(0), mae.dummy_input(mc))
            )["params"]
        head_abstract = jax.eval_shape(lambda k: model.init_head(k, self.head, mc), _KEY)
        param_sh = {
            "encoder": sharding.param_shardings(enc_boxed, self.mesh, self.rules),
            "head": jax.tree.map(lambda _: self.replicated_sharding, head_abstract),
        }
        return {"encoder": nn.meta.unbox(enc_boxed), "head": head_abstract}, param_sh

    # ---- initial state ------------------------------------------------------------------------
    def _init(self, enc_params: Any, key: jax.Array) -> FinetuneState:
        k_head, rng = jax.random.split(key)
        params = {"encoder": enc_params, "head": model.init_head(k_head, self.head, self.mc)}
        return FinetuneState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=self.tx.init(params),
            rng=rng,
            best_params=params,
            best_score=jnp.full((), -jnp.inf, jnp.float32),
            best_step=jnp.zeros((), jnp.int32),
            bad_evals=jnp.zeros((), jnp.int32),
        )

    def init_state(self, encoder_params: Any, seed: int) -> FinetuneState:
        """Pre-trained encoder (host numpy tree) + a fresh head of `seed`, in the shardings."""
        sh = self.state_shardings.params["encoder"]
        enc = jax.tree.map(
            lambda a, s: jax.make_array_from_callback(np.shape(a), s, lambda i, a=a: a[i]),
            jax.tree.map(lambda a: np.asarray(a, np.float32), encoder_params),
            sh,
        )
        with self.activate():
            return self._init_jit(enc, jax.random.PRNGKey(seed))

    # ---- the step -----------------------------------------------------------------------------
    def _augment(self, x_BFT, valid_BT, y_BC, lam_B, perm_B, key):
        if self.label_smoothing > 0:
            y_BC = y_BC * (1 - self.label_smoothing) + self.label_smoothing / y_BC.shape[-1]
        if self.aug.active:
            x_BFT, y_BC, valid_BT = augment.augment(
                key, x_BFT, y_BC, valid_BT, self.aug, lam_B, perm_B
            )
        return x_BFT, valid_BT, y_BC

    def _loss(self, params, x_BFT, valid_BT, y_BC, key):
        logits_BC = model.logits(
            params,
            x_BFT,
            valid_BT,
            self.mc,
            self.head,
            freeze_encoder=self.freeze,
            drop_path_rate=self.drop_path,
            drop_path_key=key,
        )
        return loss_fn(logits_BC, y_BC, self.multilabel)

    def _train_step(self, state: FinetuneState, x_BFT, valid_BT, y_BC, lam_B, perm_B):
        """One update on a global batch (augmented as a whole, then split into the
        accumulation micro-batches); metrics: loss, lr, l2_grads, finite."""
        k_aug, k_drop = jax.random.split(jax.random.fold_in(state.rng, state.step))
        with nn.logical_axis_rules(self.rules):
            batch = self._augment(x_BFT, valid_BT, y_BC, lam_B, perm_B, k_aug)
        return self.update(state, self._loss, batch, k_drop, all_metrics=False)

    # ---- evaluation and best-model tracking ----------------------------------------------------
    def _eval_logits(self, params, x_BFT, valid_BT):
        with nn.logical_axis_rules(self.rules):
            return model.logits(params, x_BFT, valid_BT, self.mc, self.head)

    def _update_best(self, state: FinetuneState, score: jax.Array) -> FinetuneState:
        better = score > state.best_score  # strict: a tie keeps the earlier model
        pick = functools.partial(jnp.where, better)
        return state.replace(
            best_params=jax.tree.map(pick, state.params, state.best_params),
            best_score=pick(score, state.best_score),
            best_step=pick(state.step, state.best_step),
            bad_evals=jnp.where(better, 0, state.bad_evals + 1),
        )


_KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)
