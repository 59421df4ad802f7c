"""MSM-MAE pre-training loop: sharded state, one donated jitted step, checkpoints, logs.

The same code runs on one CPU, a multi-GPU host or a TPU pod: the mesh and the logical
sharding rules come from the config, every process feeds its slice of the global batch.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
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
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.model import mae
from msm_mae_jax.model.config import ModelConfig
from msm_mae_jax.train import checkpoints, distributed, metrics, optim, sharding

log = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data position (= step)."""

    step: jax.Array  # int32 scalar: updates applied so far
    params: Any  # float32 master parameters {'encoder', 'decoder'}
    opt_state: Any
    rng: jax.Array  # uint32[2]; the masking key of step s is fold_in(rng, s)


class NonFiniteError(FloatingPointError):
    """Loss or gradients became NaN/Inf; the message names the step."""


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
    if config.probe.every_steps > 0 and config.probe.task != "synthetic":
        raise ConfigError(
            f"config.probe.task={config.probe.task!r}: the in-training probe supports "
            "'synthetic' only (evaluate.py runs any task on a saved checkpoint)"
        )
    if config.figure_every_steps > 0 and config.figure_clips > b // process_count:
        raise ConfigError(
            f"config.figure_clips={config.figure_clips} exceeds the per-process "
            f"batch ({b // process_count})"
        )


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
            in_shardings=(self.state_shardings, self.batch_sharding),
            out_shardings=(self.state_shardings, self.replicated),
            donate_argnums=0,
        )
        self.train_step = jax.jit(self._train_step, **step_jit)
        self.train_step_lean = jax.jit(
            functools.partial(self._train_step, all_metrics=False), **step_jit
        )

    def activate(self):
        """Mesh + logical rules context for tracing/running the model."""
        return _Both(jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules))

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

    def _train_step(
        self, state: TrainState, lms_B1FT: jax.Array, all_metrics: bool = True
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        """One optimizer update. Metrics: loss, lr, l2_grads, finite (loss and gradient
        norm finite) and, when `all_metrics`, l2_params (after the update) and l2_updates."""
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

    def global_batch(self, lms_local: np.ndarray) -> jax.Array:
        """This process's rows -> the global batch array sharded over the batch axes."""
        return jax.make_array_from_process_local_data(
            self.batch_sharding, lms_local, self.batch_shape
        )

    def replicated_input(self, x: np.ndarray) -> jax.Array:
        """An array every process holds in full (same values everywhere) -> replicated."""
        return jax.make_array_from_process_local_data(self.replicated, x, x.shape)


class _Both:
    def __init__(self, *cms):
        self.cms = cms

    def __enter__(self):
        for cm in self.cms:
            cm.__enter__()
        return self

    def __exit__(self, *exc):
        for cm in reversed(self.cms):
            cm.__exit__(*exc)


# ---- figures and probe ------------------------------------------------------------------------
def _reconstruct_fn(setup: Setup) -> Callable:
    def fn(params, lms, key):
        with nn.logical_axis_rules(setup.rules):
            _, pred, mask = setup.model.apply({"params": params}, lms, key)
        return pred, mask

    return jax.jit(
        fn,
        in_shardings=(setup.state_shardings.params, setup.replicated, setup.replicated),
        out_shardings=setup.replicated,
    )


def _clip_embedding_fn(setup: Setup) -> Callable:
    """Clip embeddings as the evaluation uses them: unmasked encoder, [CLS] dropped,
    '(f t) d -> t (f d)', mean over t."""
    mc = setup.model_config
    encoder = mae.Encoder(mc)

    def fn(enc_params, lms):
        with nn.logical_axis_rules(setup.rules):
            x = encoder.apply({"params": enc_params}, lms).x_BKD
        if mc.use_cls_token:
            x = x[:, 1:]
        gf, gt = mc.grid_size
        x = x.astype(jnp.float32).reshape(x.shape[0], gf, gt, -1)
        return x.mean(axis=2).reshape(x.shape[0], -1)

    return jax.jit(
        fn,
        in_shardings=(setup.state_shardings.params["encoder"], setup.replicated),
        out_shardings=setup.replicated,
    )


def probe_data(config: ml_collections.ConfigDict, mc: ModelConfig, norm_stats: NormStats):
    """(train lms, train labels, test lms, test labels) of the in-training probe, normalised
    log-mel crops of the model's input size (the built-in synthetic labelled clips)."""
    task = str(config.probe.task)
    n_tr, n_te = int(config.probe.max_train), int(config.probe.max_test)
    if task == "synthetic":
        from msm_mae_jax.data import (
            audio,  # noqa: PLC0415
            synthetic,  # noqa: PLC0415
        )

        T = mc.input_size[1]
        seconds = (T - 1) * audio.HOP_LENGTH / audio.SAMPLE_RATE + 1e-3
        wavs, labels = synthetic.make_dataset(n_tr + n_te, seed=config.seed + 7919, seconds=seconds)
        wav_BS = np.stack([w[: int(round(seconds * audio.SAMPLE_RATE))] for w in wavs])
        lms = []
        for i in range(0, len(wav_BS), 64):  # bounded memory
            lms.append(np.asarray(audio.log_mel_jax(jnp.asarray(wav_BS[i : i + 64]))))
        lms_BFT = np.concatenate(lms)[..., :T]
        if lms_BFT.shape[-1] < T:
            raise ValueError(f"probe clips give {lms_BFT.shape[-1]} frames, need {T}")
        lms_B1FT = ((lms_BFT - norm_stats.mean) / norm_stats.std)[:, None].astype(np.float32)
        y = np.asarray(labels, np.int64)
        return lms_B1FT[:n_tr], y[:n_tr], lms_B1FT[n_tr:], y[n_tr:]
    raise ConfigError(
        f"config.probe.task={task!r}: the in-training probe supports 'synthetic' only; "
        "evaluate.py runs any task on a saved checkpoint"
    )


# ---- the loop -----------------------------------------------------------------------------------
class _Preemption:
    """SIGTERM -> save and exit at the next step boundary (all processes at the same step)."""

    def __init__(self, manager):
        self.flag = False
        self.manager = manager
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.flag = True

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:  # jax's preemption sync: same step on every process
            return self.flag or bool(self.manager.reached_preemption(step))
        return self.flag

    def restore(self):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _norm_stats(config, workdir: str, ckpt_meta: dict | None, is_main: bool) -> NormStats:
    path = os.path.join(workdir, "norm_stats.json")
    if ckpt_meta is not None:
        return NormStats.from_dict(ckpt_meta["norm_stats"])
    if os.path.isfile(path):
        return NormStats.load(path)
    if config.data.norm_std > 0:
        stats = NormStats(float(config.data.norm_mean), float(config.data.norm_std))
    else:
        from msm_mae_jax.data import pipeline  # noqa: PLC0415

        t0 = time.perf_counter()
        stats = pipeline.compute_norm_stats(config, seed=config.seed)
        log.info("normalisation statistics %s (%.1f s)", stats, time.perf_counter() - t0)
    if is_main:
        stats.save(path)
    return stats


def _to_host(m: dict) -> dict:
    return {k: np.asarray(v).item() for k, v in jax.device_get(m).items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes) in `workdir`; returns the last logged metrics."""
    from msm_mae_jax.data import pipeline  # noqa: PLC0415

    process_index, process_count = distributed.initialize(config)
    is_main = process_index == 0
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)

    schedule = optim.resolve_schedule(config, lambda: pipeline.count_clips(config))
    setup = Setup(config, schedule)
    mc = setup.model_config
    ckpt = checkpoints.Checkpointer(workdir, keep=int(config.keep_checkpoints))
    writer = metrics.MetricWriter(workdir, enabled=is_main)
    if is_main:
        checkpoints.write_json(os.path.join(workdir, "config.json"), config.to_dict())

    latest = ckpt.latest_step()
    meta = ckpt.restore_meta(latest) if latest is not None else None
    if meta is not None and meta["model"] != mc.to_dict():
        raise ConfigError(
            f"{workdir}: the checkpoint at step {latest} has model config "
            f"{meta['model']}, the config asks for {mc.to_dict()}; use a new "
            "workdir or the same config.model"
        )
    norm_stats = _norm_stats(config, workdir, meta, is_main)
    if latest is None:
        state = setup.init_state(int(config.seed))
    else:
        with setup.activate():
            state, _ = ckpt.restore(latest, setup.abstract_state)
        writer.console(f"resumed from {ckpt.directory}/{latest}")
    start = int(jax.device_get(state.step))
    total = schedule.total_steps
    base_meta = {
        "model": mc.to_dict(),
        "norm_stats": norm_stats.to_dict(),
        "config": config.to_dict(),
    }

    def save(step: int):
        ckpt.save(step, state, {**base_meta, "step": step, "data_position": step})

    writer.console(
        f"MSM-MAE {mc.run_name_prefix}: {mae.count_params(state.params):,} parameters, "
        f"{jax.device_count()} devices mesh {dict(setup.mesh.shape)}, {process_count} "
        f"process(es), batch {config.batch_size} (x{setup.accum} accumulation), steps "
        f"{start}->{total}, lr {schedule.base_lr:.3g}, warm-up {schedule.warmup_steps}"
    )

    it = pipeline.train_iterator(
        config,
        norm_stats,
        process_index=process_index,
        process_count=process_count,
        start_step=start,
    )
    local_shape = (config.batch_size // process_count, *setup.batch_shape[1:])

    fig_every, probe_every = int(config.figure_every_steps), int(config.probe.every_steps)
    fig_inputs = None
    if fig_every > 0:  # fixed clips: the first of process 0's first batch, on every process
        first = next(
            pipeline.train_iterator(
                config, norm_stats, process_index=0, process_count=process_count, start_step=0
            )
        )
        clips = np.asarray(first["lms"][: config.figure_clips], np.float32)
        fig_inputs = (
            setup.replicated_input(clips),
            setup.replicated_input(np.asarray(jax.random.PRNGKey(config.seed + 1))),
        )
        reconstruct = _reconstruct_fn(setup)
    probe = None
    if probe_every > 0:
        try:
            from msm_mae_jax.evaluation.probe import ridge_fewshot  # noqa: PLC0415
        except ImportError as e:  # evaluation package absent: train without the probe
            writer.console(f"in-training probe disabled: {e}")
        else:
            tr_x, tr_y, te_x, te_y = probe_data(config, mc, norm_stats)
            probe = (
                ridge_fewshot,
                setup.replicated_input(tr_x),
                tr_y,
                setup.replicated_input(te_x),
                te_y,
                _clip_embedding_fn(setup),
            )

    def run_probe(step: int) -> dict:
        ridge, tr_x, tr_y, te_x, te_y, embed = probe
        with setup.activate():
            f_tr = np.asarray(embed(state.params["encoder"], tr_x))
            f_te = np.asarray(embed(state.params["encoder"], te_x))
        if not is_main:
            return {}
        res = ridge(f_tr, tr_y, f_te, te_y)
        return {"probe/accuracy": res["best_accuracy"], "probe/best_l2": res["best_l2"]}

    def write_figure(step: int):
        with setup.activate():
            pred, mask = reconstruct(state.params, *fig_inputs)
        pred, mask = np.asarray(pred), np.asarray(mask)
        if is_main:
            from msm_mae_jax.train import figures  # noqa: PLC0415

            figures.save_reconstruction_figure(
                os.path.join(workdir, "figures", f"recon_{step:08d}.png"),
                np.asarray(fig_inputs[0]),
                pred,
                mask,
                mc,
                title=f"step {step}",
            )

    def check(step: int, m: dict):
        if not bool(m["finite"]):
            ckpt.wait()
            raise NonFiniteError(
                f"non-finite loss ({float(m['loss'])}) or gradient norm "
                f"({float(m['l2_grads'])}) at step {step}; stopping. The latest good "
                f"checkpoint is {ckpt.latest_step()} in {ckpt.directory}"
            )

    preempt = _Preemption(ckpt.manager)
    speed = metrics.Throughput(total, int(config.batch_size), start)
    last: dict[str, Any] = {"step": start}
    pending = None  # (step, measurements) of the previous update, checked one step late
    step = start
    preempted = False
    try:
        with setup.activate():
            while step < total:
                t0 = time.perf_counter()
                batch = next(it)["lms"]
                speed.add_data_wait(time.perf_counter() - t0)
                if batch.shape != local_shape:
                    raise ValueError(
                        f"input pipeline yielded {batch.shape}, expected {local_shape}"
                    )
                do_log = (step + 1) % config.log_every_steps == 0 or step + 1 == total
                train_step = setup.train_step if do_log else setup.train_step_lean
                state, m = train_step(state, setup.global_batch(batch))
                step += 1
                if pending is not None:  # the previous step has finished by now
                    check(*pending)
                pending = (
                    step,
                    {"finite": m["finite"], "loss": m["loss"], "l2_grads": m["l2_grads"]},
                )
                do_save = step % config.ckpt_every_steps == 0 or step == total
                preempted = preempt.reached(step)
                if do_log or do_save or preempted:
                    check(*pending)
                    pending = None
                extra = {}
                if fig_every > 0 and step % fig_every == 0:
                    write_figure(step)
                if probe is not None and step % probe_every == 0:
                    extra = run_probe(step)
                if do_log:
                    host = _to_host(m)
                    host.pop("finite")
                    host.update(speed.measure(step))
                    host.update(extra)
                    writer.write_scalars(step, host)
                    writer.console(metrics.console_line(step, total, host))
                    last = {"step": step, **host}
                elif extra:
                    writer.write_scalars(step, extra)
                if do_save or preempted:
                    save(step)
                if preempted:
                    writer.console(f"preemption signal: saved step {step}, exiting")
                    break
            if pending is not None:
                check(*pending)
    finally:
        preempt.restore()
        ckpt.close()  # waits for the async save in flight
        writer.close()
    last["preempted"] = preempted
    return last
