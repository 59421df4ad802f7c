"""Fine-tuning state, shardings and the jitted functions of one run (same mesh machinery as
pre-training: `train.sharding`'s mesh, logical rules and NamedShardings, one donated step).

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
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.finetune import augment, model, optimizer
from msm_mae_jax.model import mae
from msm_mae_jax.model.config import ModelConfig
from msm_mae_jax.train import optim, sharding


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


class Setup:
    """Mesh, shardings, optimizer and jitted functions for one (task fold, model) pair."""

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
        self.config, self.mc, self.head, self.multilabel = config, model_config, head, multilabel
        self.sched = sched
        self.mesh = sharding.make_mesh(config.mesh, devices)
        self.rules = sharding.parse_rules(config.sharding_rules, self.mesh)
        self.accum = int(config.grad_accum_steps)
        self._check_batch()
        self.aug = augment.AugmentConfig.from_config(config.augment)
        self.drop_path = float(config.model.drop_path)
        self.freeze = bool(config.freeze_encoder)
        self.label_smoothing = float(config.label_smoothing)
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"config.label_smoothing={self.label_smoothing} must be in [0, 1)")
        self.lr_fn = optim.lr_schedule(sched)
        self.replicated_sharding = sharding.replicated(self.mesh)
        F = model_config.input_size[0]
        B, C = int(config.batch_size), head.num_classes
        self.batch_shapes = ((B, F, padded_frames), (B, padded_frames), (B, C))
        self.batch_shardings = tuple(
            sharding.batch_sharding(self.mesh, self.rules, ndim=n) for n in (3, 2, 2)
        )

        abstract_params, param_sh = self._abstract_params()
        self.tx = optimizer.make_optimizer(config, sched, abstract_params, model_config.depth)
        self.state_shardings = self._state_shardings(abstract_params, param_sh)
        abstract = jax.eval_shape(self._init, abstract_params["encoder"], _KEY)
        self.abstract_state = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            abstract,
            self.state_shardings,
        )
        self._jit(param_sh)

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

    def _state_shardings(self, abstract_params: Any, param_sh: Any) -> FinetuneState:
        """Optimizer state sharded like its parameters; scalars replicated."""
        r = self.replicated_sharding
        opt_sh = optax.tree_map_params(
            self.tx,
            lambda _, s: s,
            jax.eval_shape(self.tx.init, abstract_params),
            param_sh,
            transform_non_params=lambda _: r,
            is_leaf=lambda x: isinstance(x, NamedSharding),
        )
        return FinetuneState(
            step=r,
            params=param_sh,
            opt_state=opt_sh,
            rng=r,
            best_params=param_sh,
            best_score=r,
            best_step=r,
            bad_evals=r,
        )

    def _jit(self, param_sh: Any) -> None:
        r = self.replicated_sharding
        self._init_jit = jax.jit(
            self._init, in_shardings=(param_sh["encoder"], r), out_shardings=self.state_shardings
        )
        self.train_step = jax.jit(
            self._train_step,
            in_shardings=(self.state_shardings, *self.batch_shardings, r, r),
            out_shardings=(self.state_shardings, r),
            donate_argnums=0,
        )
        self.eval_logits = jax.jit(
            self._eval_logits,
            in_shardings=(param_sh, *self.batch_shardings[:2]),
            out_shardings=r,
        )
        self.update_best = jax.jit(
            self._update_best,
            in_shardings=(self.state_shardings, r),
            out_shardings=self.state_shardings,
            donate_argnums=0,
        )

    # ---- checks and contexts ----------------------------------------------------------------
    def _check_batch(self) -> None:
        b, a = int(self.config.batch_size), self.accum
        if b <= 0 or a <= 0 or b % a:
            raise ConfigError(
                f"config.batch_size={b} must be a positive multiple of config.grad_accum_steps={a}"
            )
        shards = sharding.batch_shards(self.mesh, self.rules)
        if (b // a) % shards or int(self.config.data.eval_batch_size) % shards:
            raise ConfigError(
                f"config.batch_size={b} / grad_accum_steps={a} and config.data.eval_batch_size="
                f"{self.config.data.eval_batch_size} must split over the {shards} batch shards "
                f"of config.mesh {dict(self.mesh.shape)}"
            )
        if b % jax.process_count() or self.config.data.eval_batch_size % jax.process_count():
            raise ConfigError(
                f"config.batch_size and data.eval_batch_size must divide over the "
                f"{jax.process_count()} processes"
            )

    def activate(self):
        return sharding.activate(self.mesh, self.rules)

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
        grad_fn = jax.value_and_grad(self._loss)
        with nn.logical_axis_rules(self.rules):
            batch = self._augment(x_BFT, valid_BT, y_BC, lam_B, perm_B, k_aug)
            if self.accum == 1:
                loss, grads = grad_fn(state.params, *batch, k_drop)
            else:
                loss, grads = self._accumulate(grad_fn, state.params, batch, k_drop)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        g = optax.global_norm(grads)
        m = {"loss": loss, "lr": self.lr_fn(state.step), "l2_grads": g}
        m["finite"] = jnp.isfinite(loss) & jnp.isfinite(g)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), m

    def _accumulate(self, grad_fn, params, batch, key):
        """Mean loss/gradients over micro-batches (rows i, i+A, ...: no data moves)."""
        A = self.accum
        axes = sharding.batch_axes(self.rules)

        def split(x):
            x = x.reshape(x.shape[0] // A, A, *x.shape[1:]).swapaxes(0, 1)
            spec = P(None, axes, *([None] * (x.ndim - 2)))
            return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

        micro = tuple(split(x) for x in batch)

        def body(carry, xs):
            i, *b = xs
            loss, grads = grad_fn(params, *b, jax.random.fold_in(key, i))
            return (carry[0] + loss, jax.tree.map(jnp.add, carry[1], grads)), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        init = (jnp.zeros((), jnp.float32), zeros)
        (loss, grads), _ = jax.lax.scan(body, init, (jnp.arange(A), *micro))
        return loss / A, jax.tree.map(lambda g: g / A, grads)

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

    # ---- host <-> global arrays -----------------------------------------------------------------
    def global_batch(self, *local: np.ndarray) -> tuple[jax.Array, ...]:
        """This process's rows of (x, valid, y) -> global arrays sharded over the batch axes."""
        out = []
        for x, sh in zip(local, self.batch_shardings, strict=False):
            shape = (x.shape[0] * jax.process_count(), *x.shape[1:])
            out.append(jax.make_array_from_process_local_data(sh, x, shape))
        return tuple(out)

    def replicated(self, x: np.ndarray) -> jax.Array:
        """An array every process holds in full (the same values) -> replicated."""
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(self.replicated_sharding, x, x.shape)


_KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)
