"""The train state and everything compiled for one run: mesh, shardings, init, the step.

`Setup` builds the model and optimizer, the device mesh and the logical sharding rules from
the config, initialises the state directly into its shardings and compiles one donated
update step (optionally accumulating gradients over micro-batches). With
`config.data.logmel_on_device` the step takes crop windows instead of log-mels and computes
the normalised log-mel itself (`data/device_frontend.py`), so the host only decodes audio.

Shape letters: B batch, F mel bins, T frames, L window samples, A accumulation micro-batches.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.data import crops, device_frontend
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.model import mae
from msm_mae_jax.model.config import ModelConfig
from msm_mae_jax.train import optim, sharding


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data position (= step)."""

    step: jax.Array  # int32 scalar: updates applied so far
    params: Any  # float32 master parameters {'encoder', 'decoder'}
    opt_state: Any
    rng: jax.Array  # uint32[2]; the masking key of step s is fold_in(rng, s)


# ---- configuration checks -------------------------------------------------------------------
def check_config(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    rules: sharding.Rules,
    process_count: int,
) -> None:
    """Batch-size and schedule checks that would otherwise fail deep inside XLA."""
    b, a = int(config.batch_size), int(config.grad_accum_steps)
    if b <= 0 or a <= 0:
        raise ConfigError(f"config.batch_size={b} and config.grad_accum_steps={a} must be > 0")
    if b % a:
        raise ConfigError(f"config.batch_size={b} is not divisible by config.grad_accum_steps={a}")
    shards = sharding.batch_shards(mesh, rules)
    if (b // a) % shards:
        raise ConfigError(
            f"config.batch_size={b} / grad_accum_steps={a} = {b // a} examples per micro-batch "
            f"do not split over the {shards} batch shards of config.mesh "
            f"{dict(mesh.shape)} (sharding_rules 'batch' -> {sharding.batch_axes(rules)})"
        )
    if b % process_count:
        raise ConfigError(
            f"config.batch_size={b} is not divisible by the {process_count} processes"
        )
    for key in ("log_every_steps", "ckpt_every_steps"):
        if int(config[key]) <= 0:
            raise ConfigError(f"config.{key}={config[key]} must be > 0")


# ---- state and step -------------------------------------------------------------------------
class Setup:
    """Model, optimizer, mesh, shardings and jitted functions of one run."""

    def __init__(self, config: ml_collections.ConfigDict, schedule: optim.Schedule, devices=None):
        self.config = config
        self.model_config = ModelConfig.from_dict(config.model)
        self.model = mae.MaskedAutoencoder(self.model_config)
        self.mesh = sharding.make_mesh(config.mesh, devices)
        self.rules = sharding.parse_rules(config.sharding_rules, self.mesh)
        check_config(config, self.mesh, self.rules, jax.process_count())
        self.schedule = schedule
        self.lr_fn = optim.lr_schedule(schedule)
        self.tx = optim.make_optimizer(config, schedule)
        self.accum = int(config.grad_accum_steps)
        self.replicated = sharding.replicated(self.mesh)
        self.batch_sharding = sharding.batch_sharding(self.mesh, self.rules, ndim=4)
        F, T = self.model_config.input_size
        self.batch_shape = (int(config.batch_size), 1, F, T)
        self.logmel_on_device = bool(config.data.get("logmel_on_device", False))
        # The step's input: log-mels [B, 1, F, T], or crop windows [B, L], their valid frames
        # [B] and the normalisation (mean, std) [2] (an input, so one program serves any stats).
        input_sharding: Any = self.batch_sharding
        if self.logmel_on_device:
            self.window_shape = (int(config.batch_size), crops.window_samples(T))
            input_sharding = {
                "wav": sharding.batch_sharding(self.mesh, self.rules, ndim=2),
                "frames": sharding.batch_sharding(self.mesh, self.rules, ndim=1),
                "norm": self.replicated,
            }
        self.input_sharding = input_sharding

        with self.activate():
            boxed = mae.abstract_params(self.model_config)
        param_sh = sharding.param_shardings(boxed, self.mesh, self.rules)
        abstract_opt = jax.eval_shape(self.tx.init, nn.meta.unbox(boxed))
        opt_sh = optax.tree_map_params(
            self.tx,
            lambda _, s: s,
            abstract_opt,
            param_sh,
            transform_non_params=lambda _: self.replicated,
            is_leaf=lambda x: isinstance(x, NamedSharding),
        )
        self.state_shardings = TrainState(
            step=self.replicated, params=param_sh, opt_state=opt_sh, rng=self.replicated
        )
        abstract = jax.eval_shape(self._init, jax.ShapeDtypeStruct((2,), jnp.uint32))
        self.abstract_state = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            abstract,
            self.state_shardings,
        )
        self.init = jax.jit(self._init, out_shardings=self.state_shardings)
        # Two compiled variants of one step: `train_step` returns every logged metric,
        # `train_step_lean` (the loop's step between log steps) leaves out l2_params and
        # l2_updates, two extra reads of all parameters (about 1.5% of the ViT-B CPU step).
        # jax.jit compiles each on first use only.
        step_jit = dict(
            in_shardings=(self.state_shardings, self.input_sharding),
            out_shardings=(self.state_shardings, self.replicated),
            donate_argnums=0,
        )
        self.train_step = jax.jit(self._train_step, **step_jit)
        self.train_step_lean = jax.jit(
            functools.partial(self._train_step, all_metrics=False), **step_jit
        )
        # What the step feeds the model (tests and figures compare it with the host's).
        self.model_input = jax.jit(
            self._model_input, in_shardings=(self.input_sharding,), out_shardings=self.replicated
        )

    def activate(self):
        """Mesh + logical rules context for tracing/running the model."""
        return sharding.activate(self.mesh, self.rules)

    def _init(self, seed_key: jax.Array) -> TrainState:
        param_key, mask_key, rng = jax.random.split(seed_key, 3)
        lms = mae.dummy_input(self.model_config)
        with nn.logical_axis_rules(self.rules):
            variables = self.model.init(param_key, lms, mask_key)
        params = nn.meta.unbox(variables["params"])
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params), rng=rng
        )

    def _loss(self, params, lms_B1FT, key):
        loss, _, _ = self.model.apply({"params": params}, lms_B1FT, key)
        return loss

    @staticmethod
    def _model_input(x: Any) -> jax.Array:
        """The step's input -> normalised log-mels [B, 1, F, T] (computed from crop windows
        with `logmel_on_device`, as the host front end computes them)."""
        if not isinstance(x, dict):
            return x
        lms_BFT = device_frontend.masked_log_mel(x["wav"], x["frames"])
        return ((lms_BFT - x["norm"][0]) / x["norm"][1])[:, None]

    def _train_step(
        self, state: TrainState, x: Any, all_metrics: bool = True
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        """One optimizer update of input `x` (see `input_batch`). Metrics: loss, lr,
        l2_grads, finite (loss and gradient norm finite) and, when `all_metrics`, l2_params
        (after the update) and l2_updates."""
        lms_B1FT = self._model_input(x)
        key = jax.random.fold_in(state.rng, state.step)
        grad_fn = jax.value_and_grad(self._loss)
        with nn.logical_axis_rules(self.rules):
            if self.accum == 1:
                loss, grads = grad_fn(state.params, lms_B1FT, key)
            else:
                loss, grads = self._accumulate(grad_fn, state.params, lms_B1FT, key)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.global_norm(grads)
        m = {"loss": loss, "lr": self.lr_fn(state.step), "l2_grads": grad_norm}
        if all_metrics:
            m["l2_params"] = optax.global_norm(params)
            m["l2_updates"] = optax.global_norm(updates)
        m["finite"] = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=state.rng)
        return new, m

    def _accumulate(self, grad_fn, params, lms_B1FT, key):
        """Mean loss/gradients over `accum` micro-batches, one at a time (lax.scan).

        Micro-batch i takes rows i, i+A, i+2A, ...: every device already holds its share of
        each micro-batch, so no data moves between devices.
        """
        A = self.accum
        B = lms_B1FT.shape[0]
        micro = lms_B1FT.reshape(B // A, A, *lms_B1FT.shape[1:]).swapaxes(0, 1)
        micro = jax.lax.with_sharding_constraint(
            micro, NamedSharding(self.mesh, P(None, sharding.batch_axes(self.rules)))
        )

        def body(carry, xs):
            i, lms = xs
            loss, grads = grad_fn(params, lms, jax.random.fold_in(key, i))
            loss_sum, grad_sum = carry
            return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        (loss, grads), _ = jax.lax.scan(
            body, (jnp.zeros((), jnp.float32), zeros), (jnp.arange(A), micro)
        )
        return loss / A, jax.tree.map(lambda g: g / A, grads)

    def init_state(self, seed: int) -> TrainState:
        with self.activate():
            return self.init(jax.random.PRNGKey(seed))

    def init_state_from(self, seed: int, params: dict[str, Any]) -> TrainState:
        """Step 0 with the given parameters ({'encoder', 'decoder'}, in the state's shardings;
        decoder None: its initialiser's, as `init_state(seed)`), a fresh optimizer state and
        the masking key of `init_state(seed)`: a run from scratch but for the weights."""
        with self.activate():
            return self._init_from(jax.random.PRNGKey(seed), params["encoder"], params["decoder"])

    @functools.cached_property
    def _init_from(self):  # noqa: ANN202
        def build(seed_key: jax.Array, encoder: Any, decoder: Any) -> TrainState:
            fresh = self._init(seed_key)  # XLA drops what is not used (the encoder's init)
            decoder = fresh.params["decoder"] if decoder is None else decoder
            p = {"encoder": encoder, "decoder": decoder}
            return TrainState(step=fresh.step, params=p, opt_state=self.tx.init(p), rng=fresh.rng)

        return jax.jit(build, out_shardings=self.state_shardings)

    def global_batch(self, lms_local: np.ndarray) -> jax.Array:
        """This process's rows -> the global batch array sharded over the batch axes."""
        return jax.make_array_from_process_local_data(
            self.batch_sharding, lms_local, self.batch_shape
        )

    def input_batch(self, batch: dict[str, np.ndarray], norm_stats: NormStats) -> Any:
        """This process's batch of the training iterator -> the step's global input: the
        "lms" rows, or with `logmel_on_device` {"wav", "frames", "norm"}. ValueError if the
        iterator's shapes are not this run's."""
        procs = jax.process_count()
        local_b = int(self.config.batch_size) // procs
        if not self.logmel_on_device:
            lms, want = batch["lms"], (local_b, *self.batch_shape[1:])
            if lms.shape != want:
                raise ValueError(f"input pipeline yielded {lms.shape}, expected {want}")
            return self.global_batch(lms)
        wav, frames = batch["wav"], batch["frames"]
        if wav.shape != (local_b, self.window_shape[1]) or frames.shape != (local_b,):
            raise ValueError(
                f"input pipeline yielded windows {wav.shape} and frames {frames.shape}, "
                f"expected {(local_b, self.window_shape[1])} and {(local_b,)}"
            )
        sh = self.input_sharding
        norm = np.array([norm_stats.mean, norm_stats.std], np.float32)
        return {
            "wav": jax.make_array_from_process_local_data(sh["wav"], wav, self.window_shape),
            "frames": jax.make_array_from_process_local_data(
                sh["frames"], frames, self.window_shape[:1]
            ),
            "norm": jax.make_array_from_process_local_data(sh["norm"], norm, norm.shape),
        }

    def abstract_input(self) -> Any:
        """Shapes, dtypes and shardings of the step's input (what `input_batch` returns): to
        compile the step without data, e.g. for compile-only TPU devices."""
        if not self.logmel_on_device:
            return jax.ShapeDtypeStruct(self.batch_shape, jnp.float32, sharding=self.batch_sharding)
        sh = self.input_sharding
        return {
            "wav": jax.ShapeDtypeStruct(self.window_shape, jnp.float32, sharding=sh["wav"]),
            "frames": jax.ShapeDtypeStruct(self.window_shape[:1], jnp.int32, sharding=sh["frames"]),
            "norm": jax.ShapeDtypeStruct((2,), jnp.float32, sharding=sh["norm"]),
        }

    def replicated_input(self, x: np.ndarray) -> jax.Array:
        """An array every process holds in full (same values everywhere) -> replicated."""
        return jax.make_array_from_process_local_data(self.replicated, x, x.shape)
