"""MSM-MAE pre-training loop: restore or initialise, step, check, log, save; hooks evaluate.

The same code runs on one CPU, a multi-GPU host or a TPU pod: the mesh and the logical
sharding rules come from the config (train/state.py), every process feeds its slice of the
global batch. In-training evaluation (figures, the few-shot probe) lives in train/hooks.py;
the loop only asks each hook whether it is due.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.model import mae
from msm_mae_jax.train import checkpoints, distributed, hooks, metrics, optim
from msm_mae_jax.train.state import Setup, TrainState

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """Loss or gradients became NaN/Inf; the message names the step."""


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


def _checkpoint_meta(
    setup: Setup, ckpt: checkpoints.Checkpointer, step: int | None, workdir: str
) -> dict | None:
    """The meta of checkpoint `step` (None: a fresh run), checked against the config."""
    if step is None:
        return None
    meta = ckpt.restore_meta(step)
    mc = setup.model_config
    if meta["model"] != mc.to_dict():
        raise ConfigError(
            f"{workdir}: the checkpoint at step {step} has model config "
            f"{meta['model']}, the config asks for {mc.to_dict()}; use a new "
            "workdir or the same config.model"
        )
    return meta


def _restore_or_init(setup: Setup, ckpt: checkpoints.Checkpointer, step: int | None) -> TrainState:
    if step is None:
        return setup.init_state(int(setup.config.seed))
    with setup.activate():
        state, _ = ckpt.restore(step, setup.abstract_state)
    return state


def _start_line(config, setup: Setup, state: TrainState, process_count: int, start: int) -> str:
    sch = setup.schedule
    return (
        f"MSM-MAE {setup.model_config.run_name_prefix}: {mae.count_params(state.params):,} "
        f"parameters, {distributed.describe_devices(setup.mesh.devices.flat)}, mesh "
        f"{dict(setup.mesh.shape)}, {process_count} process(es), batch {config.batch_size} "
        f"(x{setup.accum} accumulation), steps {start}->{sch.total_steps}, lr "
        f"{sch.base_lr:.3g}, warm-up {sch.warmup_steps}"
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes) in `workdir`; returns the last logged metrics and `preempted`."""
    from msm_mae_jax.data import pipeline  # noqa: PLC0415 (TF: imported when training)

    process_index, process_count = distributed.initialize(config)
    is_main = process_index == 0
    workdir = os.path.abspath(workdir)
    hooks.check_config(config, process_count)
    os.makedirs(workdir, exist_ok=True)

    schedule = optim.resolve_schedule(config, lambda: pipeline.count_clips(config))
    setup = Setup(config, schedule)
    mc = setup.model_config
    ckpt = checkpoints.Checkpointer(workdir, keep=int(config.keep_checkpoints))
    writer = metrics.MetricWriter(workdir, enabled=is_main)
    run_hooks: list[hooks.Hook] = []
    if is_main:
        checkpoints.write_json(os.path.join(workdir, "config.json"), config.to_dict())
    preempt = _Preemption(ckpt.manager)
    try:
        latest = ckpt.latest_step()
        meta = _checkpoint_meta(setup, ckpt, latest, workdir)
        norm_stats = _norm_stats(config, workdir, meta, is_main)
        state = _restore_or_init(setup, ckpt, latest)
        start, total = int(jax.device_get(state.step)), schedule.total_steps
        if latest is not None:
            writer.console(f"resumed from {ckpt.directory}/{latest}")
        writer.console(_start_line(config, setup, state, process_count, start))
        base_meta = {
            "model": mc.to_dict(),
            "norm_stats": norm_stats.to_dict(),
            "config": config.to_dict(),
        }
        run_hooks = hooks.build_hooks(config, setup, norm_stats, workdir, writer)
        it = pipeline.train_iterator(
            config,
            norm_stats,
            process_index=process_index,
            process_count=process_count,
            start_step=start,
        )
        local_shape = (config.batch_size // process_count, *setup.batch_shape[1:])

        def check(step: int, m: dict):
            if not bool(m["finite"]):
                ckpt.wait()
                raise NonFiniteError(
                    f"non-finite loss ({float(m['loss'])}) or gradient norm "
                    f"({float(m['l2_grads'])}) at step {step}; stopping. The latest good "
                    f"checkpoint is {ckpt.latest_step()} in {ckpt.directory}"
                )

        speed = metrics.Throughput(total, int(config.batch_size), start)
        last: dict[str, Any] = {"step": start}
        pending = None  # (step, measurements) of the previous update, checked one step late
        step = start
        preempted = False
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
                extra: dict[str, float] = {}
                for hook in run_hooks:
                    if hook.due(step, total):
                        extra.update(hook.run(step, state))
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
                    ckpt.save(step, state, {**base_meta, "step": step, "data_position": step})
                if preempted:
                    writer.console(f"preemption signal: saved step {step}, exiting")
                    break
            if pending is not None:
                check(*pending)
    finally:
        for hook in run_hooks:
            hook.close()
        preempt.restore()
        ckpt.close()  # waits for the async save in flight
        writer.close()
    last["preempted"] = preempted
    return last
