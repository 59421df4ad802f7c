"""What every trainer compiles the same way: one base for pre-training (`train.state`) and
fine-tuning (`finetune.state`).

`ShardedSetup` holds the device mesh and logical sharding rules of `config.mesh` /
`config.sharding_rules`, the learning-rate schedule, the batch checks, the optimizer state
sharded like the parameters it tracks, the abstract state (shapes, dtypes, shardings: what
a checkpoint restores into), the one donated update step with its gradient accumulation,
and the host <-> global arrays. A trainer subclasses it and keeps only what differs: its
model and parameter shardings, its state's extra fields, its optimizer (`self.tx`), its
loss and its metrics.

A trainer's state is a flax struct with at least `step` (int32: updates applied so far),
`params`, `opt_state` and `rng` (the key of step s is fold_in(rng, s)).

Shape letters: A accumulation micro-batches, B batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.train import optim, sharding

# loss_fn(params, *batch, key) -> scalar loss of one (micro-)batch
LossFn = Callable[..., jax.Array]


class ShardedSetup:
    """Mesh, rules, schedule and the shared pieces of a trainer's state and step.

    A subclass sets `self.tx`, builds its state's shardings from `shared_shardings` plus its
    own fields, hands them to `_shard_state` with its init, and compiles with `jit_step` a
    step body that calls `update` with its loss.
    """

    tx: optax.GradientTransformation
    state_shardings: Any  # the state's tree of NamedSharding (after `_shard_state`)
    abstract_state: Any  # its jax.ShapeDtypeStruct tree, each leaf with its sharding

    def __init__(
        self, config: ml_collections.ConfigDict, schedule: optim.Schedule, devices=None
    ) -> None:
        self.config = config
        self.mesh = sharding.make_mesh(config.mesh, devices)
        self.rules = sharding.parse_rules(config.sharding_rules, self.mesh)
        self.accum = int(config.grad_accum_steps)
        self.schedule = schedule
        self.lr_fn = optim.lr_schedule(schedule)
        self.replicated_sharding = sharding.replicated(self.mesh)

    def activate(self):
        """Mesh + logical rules context for tracing/running the model."""
        return sharding.activate(self.mesh, self.rules)

    def check_batch(self, batch_size: int, eval_batch_size: int | None = None) -> None:
        """ConfigError for batch sizes that would otherwise fail deep inside XLA: every
        micro-batch (and evaluation batch) splits over the batch shards and the processes."""
        b, a = int(batch_size), self.accum
        if b <= 0 or a <= 0:
            raise ConfigError(f"config.batch_size={b} and config.grad_accum_steps={a} must be > 0")
        if b % a:
            raise ConfigError(
                f"config.batch_size={b} is not divisible by config.grad_accum_steps={a}"
            )
        shards, procs = sharding.batch_shards(self.mesh, self.rules), jax.process_count()
        where = f"config.mesh {dict(self.mesh.shape)} (sharding_rules 'batch' -> "
        where += f"{sharding.batch_axes(self.rules)})"
        if (b // a) % shards:
            raise ConfigError(
                f"config.batch_size={b} / grad_accum_steps={a} = {b // a} examples per "
                f"micro-batch do not split over the {shards} batch shards of {where}"
            )
        if b % procs:
            raise ConfigError(f"config.batch_size={b} is not divisible by the {procs} processes")
        if eval_batch_size is not None and (eval_batch_size % shards or eval_batch_size % procs):
            raise ConfigError(
                f"config.data.eval_batch_size={eval_batch_size} does not split over the "
                f"{shards} batch shards of {where} and the {procs} processes"
            )

    # ---- the state's shardings ----------------------------------------------------------------
    def shared_shardings(self, abstract_params: Any, param_shardings: Any) -> dict[str, Any]:
        """Shardings of the fields every trainer's state has: `params` in `param_shardings`,
        `opt_state` sharded like the parameters each part tracks (Adam's moments; what is
        not per-parameter, e.g. counts, replicated), `step` and `rng` replicated."""
        r = self.replicated_sharding
        opt_sh = optax.tree_map_params(
            self.tx,
            lambda _, s: s,
            jax.eval_shape(self.tx.init, abstract_params),
            param_shardings,
            transform_non_params=lambda _: r,
            is_leaf=lambda x: isinstance(x, NamedSharding),
        )
        return {"step": r, "params": param_shardings, "opt_state": opt_sh, "rng": r}

    def _shard_state(self, state_shardings: Any, init: Callable, *abstract_args: Any) -> None:
        """Sets `state_shardings` and `abstract_state` (the shapes of `init(*abstract_args)`,
        traced without computing, in those shardings)."""
        self.state_shardings = state_shardings
        self.abstract_state = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            jax.eval_shape(init, *abstract_args),
            state_shardings,
        )

    # ---- the step -------------------------------------------------------------------------------
    def jit_step(self, body: Callable, *input_shardings: Any) -> Callable:
        """`body(state, *inputs) -> (state, metrics)` compiled with the state donated (its
        buffers reused in place) and kept in its shardings, the metrics replicated."""
        return jax.jit(
            body,
            in_shardings=(self.state_shardings, *input_shardings),
            out_shardings=(self.state_shardings, self.replicated_sharding),
            donate_argnums=0,
        )

    def update(
        self, state: Any, loss_fn: LossFn, batch: tuple, key: jax.Array, all_metrics: bool
    ) -> tuple[Any, dict[str, jax.Array]]:
        """One optimizer update of `loss_fn(params, *batch, key)` (accumulated over `accum`
        micro-batches). Metrics: loss, lr, l2_grads, finite (loss and gradient norm finite)
        and, when `all_metrics`, l2_params (after the update) and l2_updates."""
        grad_fn = jax.value_and_grad(loss_fn)
        with nn.logical_axis_rules(self.rules):
            if self.accum == 1:
                loss, grads = grad_fn(state.params, *batch, key)
            else:
                loss, grads = self._accumulate(grad_fn, state.params, batch, key)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.global_norm(grads)
        m = {"loss": loss, "lr": self.lr_fn(state.step), "l2_grads": grad_norm}
        if all_metrics:
            m["l2_params"] = optax.global_norm(params)
            m["l2_updates"] = optax.global_norm(updates)
        m["finite"] = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), m

    def _accumulate(
        self, grad_fn: Callable, params: Any, batch: tuple, key: jax.Array
    ) -> tuple[jax.Array, Any]:
        """Mean loss/gradients over `accum` micro-batches, one at a time (lax.scan); micro-batch
        i draws its key fold_in(key, i).

        Micro-batch i takes rows i, i+A, i+2A, ...: every device already holds its share of
        each micro-batch, so no data moves between devices.
        """
        A = self.accum
        axes = sharding.batch_axes(self.rules)

        def split(x_B: jax.Array) -> jax.Array:
            x_AB = x_B.reshape(x_B.shape[0] // A, A, *x_B.shape[1:]).swapaxes(0, 1)
            spec = P(None, axes, *([None] * (x_AB.ndim - 2)))
            return jax.lax.with_sharding_constraint(x_AB, NamedSharding(self.mesh, spec))

        def body(carry, xs):
            i, *micro = xs
            loss, grads = grad_fn(params, *micro, jax.random.fold_in(key, i))
            loss_sum, grad_sum = carry
            return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        (loss, grads), _ = jax.lax.scan(
            body,
            (jnp.zeros((), jnp.float32), zeros),
            (jnp.arange(A), *(split(x) for x in batch)),
        )
        return loss / A, jax.tree.map(lambda g: g / A, grads)

    # ---- host <-> global arrays ---------------------------------------------------------------
    def global_batch(self, *local: np.ndarray) -> Any:
        """This process's rows -> global arrays (every process's rows, in process order),
        the leading axis split over the batch axes: one array for one argument, a tuple for
        several."""
        procs = jax.process_count()
        out = tuple(
            jax.make_array_from_process_local_data(
                sharding.batch_sharding(self.mesh, self.rules, ndim=x.ndim),
                x,
                (x.shape[0] * procs, *x.shape[1:]),
            )
            for x in local
        )
        return out[0] if len(out) == 1 else out

    def replicated(self, x: np.ndarray) -> jax.Array:
        """An array every process holds in full (the same values) -> replicated."""
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(self.replicated_sharding, x, x.shape)
