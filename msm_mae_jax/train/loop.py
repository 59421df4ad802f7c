"""MSM-MAE pre-training loop: restore or initialise, step, check, log, save; hooks evaluate.

The same code runs on one CPU, a multi-GPU host or a TPU pod: the mesh and the logical
sharding rules come from the config (train/state.py), every process feeds its slice of the
global batch. In-training evaluation (figures, the few-shot probe) lives in train/hooks.py;
the loop only asks each hook whether it is due.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import re
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from msm_mae_jax.core import fs, interrupts
from msm_mae_jax.core.errors import ConfigError, DataError, UserError
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.data.tf_setup import tensorflow
from msm_mae_jax.model import mae
from msm_mae_jax.train import (
    checkpoint_meta,
    checkpoints,
    config_rules,
    distributed,
    hooks,
    init_source,
    metrics,
    optim,
    preemption,
    resume,
    workdir_lock,
)
from msm_mae_jax.train.state import Setup, TrainState

log = logging.getLogger(__name__)


class NonFiniteError(UserError, FloatingPointError):
    """Loss or gradients became NaN/Inf; the message names the step and the latest good
    checkpoint. A user error (one line, exit 2): the learning rate or the data, most often."""


# ---- the loop -----------------------------------------------------------------------------------
def _norm_stats(
    config,
    workdir: str,
    ckpt_meta: dict | None,
    is_main: bool,
    source: init_source.InitSource | None = None,
) -> NormStats:
    """The run's statistics: its checkpoint's, those of a start stopped before its first
    checkpoint, the config's, the init source's (`data.norm_from_init`) or computed."""
    path = fs.join(workdir, "norm_stats.json")
    if ckpt_meta is not None:
        return NormStats.from_dict(ckpt_meta["norm_stats"])
    if fs.isfile(path):  # the statistics of a run stopped before its first checkpoint
        return NormStats.load(path, hint="delete it to estimate them again")
    if config.data.norm_std > 0:
        stats = NormStats(float(config.data.norm_mean), float(config.data.norm_std))
    elif source is not None and config.data.norm_from_init:
        if source.norm_stats is None:
            raise ConfigError(
                f"config.data.norm_from_init: {source.describe()} has no dataset statistics "
                "(converted with --per-batch-norm); compute them on this data "
                "(data.norm_from_init=false) or convert with --norm-mean/--norm-std"
            )
        stats = source.norm_stats
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


def _restore(
    setup: Setup, ckpt: checkpoints.Checkpointer, workdir: str, allow_config_change: bool
) -> tuple[checkpoints.Restored | None, list]:
    """The newest checkpoint that restores (None: a fresh run) and the config changes allowed.

    A checkpoint of another model is an error; other config changes are errors unless
    allowed (train/resume.py)."""
    mc = setup.model_config
    changes: list = []

    def check_meta(step: int, meta: dict) -> None:
        saved, _ = checkpoint_meta.model_entries(meta, fs.join(ckpt.directory, str(step)))
        if saved != mc.to_dict():
            raise ConfigError(
                f"{workdir}: the checkpoint at step {step} is another model: "
                f"{_model_diff(saved, mc.to_dict())} (checkpoint -> config); use a "
                "new workdir or the checkpoint's config.model"
            )
        changes[:] = resume.check_config_change(
            meta.get("config", {}),
            setup.config.to_dict(),
            f"{workdir} (checkpoint step {step})",
            allow_config_change,
        )

    with setup.activate():
        restored = ckpt.restore_newest(setup.abstract_state, check_meta)
    return restored, changes


def _model_diff(saved: dict, asked: dict) -> str:
    """'model.depth 2 -> 4, model.embed_dim 64 -> 128': only the keys that differ."""
    same = lambda a, b: json.dumps(a) == json.dumps(b)  # noqa: E731 (tuples equal lists)
    keys = sorted(set(saved) | set(asked), key=str)
    return ", ".join(
        f"model.{k} {saved.get(k, '(none)')!r} -> {asked.get(k, '(none)')!r}"
        for k in keys
        if not same(saved.get(k), asked.get(k))
    )


def _start_line(config, setup: Setup, state: TrainState, process_count: int, start: int) -> str:
    sch = setup.schedule
    return (
        f"MSM-MAE {setup.model_config.run_name_prefix}: {mae.count_params(state.params):,} "
        f"parameters, {distributed.describe_devices(setup.mesh.devices.flat)}, mesh "
        f"{dict(setup.mesh.shape)}, {process_count} process(es), batch {config.batch_size} "
        f"(x{setup.accum} accumulation), steps {start}->{sch.total_steps}, lr "
        f"{sch.base_lr:.3g}, warm-up {sch.warmup_steps}"
    )


def _resume_lines(
    restored: checkpoints.Restored, changes: list, writer: metrics.MetricWriter, directory: str
) -> None:
    for step, why, dest in restored.damaged:
        writer.console(f"checkpoint step {step} is damaged ({why}); moved to {dest}")
    writer.console(f"resumed from {directory}/{restored.step}")
    if changes:
        writer.console(f"config changed on resume (allowed): {resume.describe_changes(changes)}")


class _DataFeed:
    """The training batches; errors of the input pipeline as DataErrors; the tf.data iterator
    released explicitly when the run ends.

    A tf.data iterator freed while Python shuts down (an exception ending the program keeps
    the loop's frame, and so the iterator, alive until then) waits forever for its
    in-flight `tf.numpy_function` calls, whose threads can no longer take the GIL: the
    traceback prints and the process never exits. Released here, while the interpreter
    runs, those calls finish and the iterator is gone within about a second."""

    def __init__(self, it, source: str):  # noqa: ANN001
        self._it, self.source = it, source

    def __next__(self) -> dict[str, np.ndarray]:
        try:
            return next(self._it)
        except Exception as e:
            raise _data_error(e, self.source) or e from None

    def close(self) -> None:
        self._it = None
        gc.collect()  # iterators held in reference cycles too


def _data_error(e: Exception, source: str) -> DataError | None:
    """The DataError a tf.data error stands for: one raised by the source inside a
    `tf.numpy_function` (TF wraps it), or a corrupt, missing or unreadable input file."""
    tf = tensorflow()
    if not isinstance(e, tf.errors.OpError):
        return None
    inner = re.search(r"DataError: (.+)", e.message)
    if inner:
        return DataError(inner.group(1).strip())
    if isinstance(
        e, tf.errors.DataLossError | tf.errors.NotFoundError | tf.errors.PermissionDeniedError
    ):
        first = e.message.strip().splitlines()[0] if e.message.strip() else ""
        first = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", first)
        first = re.sub(r"\s*\[Op:\w+\].*$", "", first)  # TF's op name, not the user's
        return DataError(
            f"config.data.source={source!r}: reading the data failed ({type(e).__name__}: {first})"
        )
    return None


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False
) -> dict[str, Any]:
    """Trains (or resumes) in `workdir`; returns the last logged metrics and `preempted`
    (SIGTERM: saved at step `preempted_at` and stopped; `train/preemption.py`).

    One trainer per workdir (train/workdir_lock.py). Resuming takes the newest checkpoint
    that restores (damaged ones are moved aside) and refuses config changes that would make
    another run unless `allow_config_change` (train/resume.py)."""
    from msm_mae_jax.data import pipeline  # noqa: PLC0415 (TF: imported when training)

    config_rules.check_config(config)
    process_index, process_count = distributed.initialize(config)
    is_main = process_index == 0
    workdir = fs.absolute(workdir)
    hooks.check_config(config, process_count)
    # Cleanups run in reverse order whatever happens, each even if an earlier one fails: the
    # data iterator first, the lock last (after the last checkpoint is on disk).
    with contextlib.ExitStack() as cleanup:
        lock = workdir_lock.lock_workdir(workdir, is_main, process_count)
        cleanup.callback(lock.release)
        schedule = optim.resolve_schedule(config, lambda: pipeline.count_clips(config))
        setup = Setup(config, schedule)
        ckpt = checkpoints.Checkpointer(workdir, keep=int(config.keep_checkpoints))
        cleanup.callback(ckpt.close)  # waits for the async save in flight
        preempt = preemption.Preemption(ckpt.manager)
        cleanup.callback(preempt.restore)
        restored, changes = _restore(setup, ckpt, workdir, allow_config_change)
        # Further pre-training: a fresh start takes the source's weights; a resumed run never
        # reads the source again (its checkpoint holds the run, its meta the source's record).
        source = None
        if restored is None and config.init_from:
            source = init_source.open_source(str(config.init_from))
            init_source.check_architecture(source, setup.model_config)
        start = restored.step if restored is not None else 0
        writer = metrics.MetricWriter(workdir, enabled=is_main, start_step=start)
        cleanup.callback(writer.close)
        if is_main:
            checkpoints.write_json(fs.join(workdir, "config.json"), config.to_dict())
        if restored is not None:
            _resume_lines(restored, changes, writer, ckpt.directory)
        if writer.dropped_rows:
            writer.console(
                f"dropped {writer.dropped_rows} metrics.jsonl row(s) past step {start}, logged "
                "after the last checkpoint of an interrupted run (the steps run again)"
            )
        meta = restored.meta if restored is not None else None
        norm_stats = _norm_stats(config, workdir, meta, is_main, source)
        if restored is not None:
            state, init_record = restored.state, restored.meta.get("init_from")
        elif source is not None:
            params = init_source.load_params(source, setup.abstract_state.params)
            init_record = init_source.record(source, params)
            state = setup.init_state_from(int(config.seed), params)
            del params
            kept = bool(config.data.norm_from_init)  # (with norm_std > 0: refused)
            writer.console(init_source.start_line(source, init_record, kept))
        else:
            state, init_record = setup.init_state(int(config.seed)), None
        del restored  # the loop donates the state's buffers
        total = schedule.total_steps
        writer.console(_start_line(config, setup, state, process_count, start))
        base_meta = {
            "model": setup.model_config.to_dict(),
            "norm_stats": norm_stats.to_dict(),
            "config": config.to_dict(),
        }
        if init_record is not None:
            base_meta["init_from"] = init_record
        run_hooks = hooks.build_hooks(config, setup, norm_stats, workdir, writer)
        for hook in run_hooks:
            cleanup.callback(hook.close)
        feed = _DataFeed(
            pipeline.train_iterator(
                config,
                norm_stats,
                process_index=process_index,
                process_count=process_count,
                start_step=start,
            ),
            str(config.data.source),
        )
        cleanup.callback(feed.close)

        def check(step: int, m: dict):
            if not bool(m["finite"]):
                ckpt.wait()
                latest = ckpt.latest_step()
                good = "none was saved" if latest is None else f"step {latest} in {ckpt.directory}"
                raise NonFiniteError(
                    f"non-finite loss ({float(m['loss'])}) or gradient norm "
                    f"({float(m['l2_grads'])}) at step {step}; stopping. The latest good "
                    f"checkpoint: {good}"
                )

        def save(step: int):
            problem = lock.check()
            if problem:
                raise workdir_lock.WorkdirLockedError(f"not saving step {step}: {problem}")
            writer.flush()  # remote workdirs: the metrics logged so far go with the checkpoint
            ckpt.save(step, state, {**base_meta, "step": step, "data_position": step})

        speed = metrics.Throughput(total, int(config.batch_size), start)
        last: dict[str, Any] = {"step": start}
        pending = None  # (step, measurements) of the previous update, checked one step late
        step = start
        preempted = False
        try:
            with setup.activate():
                while step < total:
                    t0 = time.perf_counter()
                    batch = setup.input_batch(next(feed), norm_stats)
                    speed.add_data_wait(time.perf_counter() - t0)
                    do_log = (step + 1) % config.log_every_steps == 0 or step + 1 == total
                    train_step = setup.train_step if do_log else setup.train_step_lean
                    state, m = train_step(state, batch)
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
                        save(step)
                    if preempted:
                        writer.console(f"preemption signal: saved step {step}, exiting")
                        break
                if pending is not None:
                    check(*pending)
        except KeyboardInterrupt:
            # A second Ctrl-C exits at once (a command's rule): its line says what is then true.
            interrupts.set_exit_note(ckpt.newest_complete_now)
            latest = ckpt.finish_saves()  # the save in flight first: then this is true
            writer.console(
                f"interrupted after step {step}; newest complete checkpoint: "
                f"{'none' if latest is None else f'step {latest}'}"
            )
            raise
    last["preempted"] = preempted
    if preempted:
        last["preempted_at"] = step  # the step saved
    return last
