"""The pre-training state and everything compiled for one run: the MAE, init, the step.

`Setup` builds the masked autoencoder and its optimizer on `train.sharded_state`'s mesh,
rules and donated, gradient-accumulating update step (shared with fine-tuning), and
initialises the state directly into its shardings. What is its own: the state's fields, the
MAE's loss, the step's input and its metrics (every metric, or the lean set). With
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

from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.data import crops, device_frontend
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.model import mae
from msm_mae_jax.model.config import ModelConfig
from msm_mae_jax.train import optim, sharding
from msm_mae_jax.train.sharded_state import ShardedSetup


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data position (= step)."""

    step: jax.Array  # int32 scalar: updates applied so far
    params: Any  # float32 master parameters {'encoder', 'decoder'}
    opt_state: Any
    rng: jax.Array  # uint32[2]; the masking key of step s is fold_in(rng, s)


# ---- state and step -------------------------------------------------------------------------
class Setup(ShardedSetup):
    """The MAE, its optimizer and the jitted functions of one pre-training run."""

    def __init__(self, config: ml_collections.ConfigDict, schedule: optim.Schedule, devices=None):
        self.model_config = ModelConfig.from_dict(config.model)
        self.model = mae.MaskedAutoencoder(self.model_config)
        super().__init__(config, schedule, devices)
        self.check_batch(int(config.batch_size))
        for key in ("log_every_steps", "ckpt_every_steps"):
            if int(config[key]) <= 0:
                raise ConfigError(f"config.{key}={config[key]} must be > 0")
        self.tx = optim.make_optimizer(config, schedule)
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
                "norm": self.replicated_sharding,
            }
        self.input_sharding = input_sharding

        with self.activate():
            boxed = mae.abstract_params(self.model_config)
        param_sh = sharding.param_shardings(boxed, self.mesh, self.rules)
        state_sh = TrainState(**self.shared_shardings(nn.meta.unbox(boxed), param_sh))
        self._shard_state(state_sh, self._init, jax.ShapeDtypeStruct((2,), jnp.uint32))
        self.init = jax.jit(self._init, out_shardings=self.state_shardings)
        # Two compiled variants of one step: `train_step` returns every logged metric,
        # `train_step_lean` (the loop's step between log steps) leaves out l2_params and
        # l2_updates, two extra reads of all parameters (about 1.5% of the ViT-B CPU step).
        # jax.jit compiles each on first use only.
        self.train_step = self.jit_step(self._train_step, self.input_sharding)
        self.train_step_lean = self.jit_step(
            functools.partial(self._train_step, all_metrics=False), self.input_sharding
        )
        # What the step feeds the model (tests and figures compare it with the host's).
        self.model_input = jax.jit(
            self._model_input,
            in_shardings=(self.input_sharding,),
            out_shardings=self.replicated_sharding,
        )

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
        """One optimizer update of input `x` (see `input_batch`); metrics: `update`'s."""
        lms_B1FT = self._model_input(x)
        key = jax.random.fold_in(state.rng, state.step)
        return self.update(state, self._loss, (lms_B1FT,), key, all_metrics)

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
        wav_BL, frames_B = self.global_batch(wav, frames)
        norm = np.array([norm_stats.mean, norm_stats.std], np.float32)
        return {"wav": wav_BL, "frames": frames_B, "norm": self.replicated(norm)}

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
