"""One fine-tuning run (one fold, one seed): train, validate, keep the best, test, export.

The loop: one donated jitted step per batch; every `eval_every_steps` (default: every epoch)
the validation split is scored (accuracy, or mAP for multi-label) and the parameters are kept
when the score is strictly better; training stops early once `early_stop_patience` evaluations
pass without a better one (-1: never). Checkpoints (orbax, `train.checkpoints`) hold the whole
state including the best parameters and the early-stopping counters, so a run killed at any
point and restarted continues exactly where it was; SIGTERM saves and stops at the next step.
At the end the best parameters are scored on the test split and exported.

Files under the run directory: checkpoints/, metrics.jsonl, tb/ (TensorBoard), export/ (the
encoder artifact `Runtime.load` reads, the head beside it), result.json (written last: a run
with it is complete and skipped when the job is run again).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from msm_mae_jax.core import json_files
from msm_mae_jax.core.errors import ConfigError, DataError, UserError
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.finetune import augment, data, export
from msm_mae_jax.finetune.state import FinetuneState, Setup
from msm_mae_jax.model.config import ModelConfig
from msm_mae_jax.tasks.metrics import mean_average_precision
from msm_mae_jax.tasks.splits import Fold
from msm_mae_jax.tasks.task import Task
from msm_mae_jax.train import checkpoints, metrics, preemption

RESULT_FILE = "result.json"


class NonFiniteError(UserError, FloatingPointError):
    """The loss or the gradients became NaN/Inf; the message names the step and the latest
    good checkpoint. A user error (one line, exit 2), as in pre-training: the learning rate
    or the data, most often."""


@dataclasses.dataclass
class Job:
    """What every run of one fine-tuning job shares."""

    config: Any
    task: Task
    store: data.ClipStore
    stats: NormStats
    model_config: ModelConfig  # with the compute dtype / remat of the fine-tuning config
    encoder_params: Any  # pre-trained, host numpy
    source: str  # the checkpoint fine-tuned
    identity: dict  # what must match for a run directory to be resumed
    log: Callable[[str], None] = print
    process_index: int = 0
    process_count: int = 1

    @property
    def is_main(self) -> bool:
        return self.process_index == 0


def score(logits_NC: np.ndarray, y: np.ndarray, multilabel: bool) -> float:
    """Accuracy, or macro mAP over classes with positives (`tasks.metrics`, as the linear probe)."""
    if multilabel:
        s = mean_average_precision(jax.nn.sigmoid(logits_NC), np.asarray(y, np.float32))
        return float(s)
    return float(np.mean(np.argmax(logits_NC, -1) == y))


def predict(job: Job, setup: Setup, params: Any, indices: np.ndarray) -> np.ndarray:
    """Logits [n, C] of whole clips (every process gets all of them)."""
    b = int(job.config.data.eval_batch_size)
    local = b // job.process_count
    rows = slice(job.process_index * local, (job.process_index + 1) * local)
    out = np.zeros((len(indices), setup.head.num_classes), np.float32)
    unit = job.model_config.input_size[1]
    for pos, x, valid in data.eval_batches(job.store, indices, b, unit, job.stats):
        with setup.activate():
            lg = setup.eval_logits(params, *setup.global_batch(x[rows], valid[rows]))
        out[pos] = np.asarray(lg)[: len(pos)]
    return out


def _restore(job, setup, ckpt, run_dir, seed) -> tuple[FinetuneState, bool]:
    latest = ckpt.latest_step()
    if latest is None:
        return setup.init_state(job.encoder_params, seed), False
    meta = ckpt.restore_meta(latest)
    if meta.get("identity") != job.identity:
        raise ConfigError(
            f"{run_dir} holds a fine-tuning run of another checkpoint, task or config "
            f"(saved {meta.get('identity')}, asked for {job.identity}); use a new --workdir"
        )
    with setup.activate():
        state, _ = ckpt.restore(latest, setup.abstract_state)
    job.log(f"resumed {run_dir} at step {latest}")
    return state, bool(meta.get("finished"))


def _train_batches(job: Job, setup: Setup, fold: Fold, seed: int) -> data.TrainBatches:
    c, task = job.config, job.task
    weights = None
    if c.data.balanced:
        weights = data.balanced_weights(task.y[fold.train], task.multilabel, task.num_classes)
    return data.TrainBatches(
        job.store,
        fold.train,
        data.targets(task, fold.train),
        stats=job.stats,
        seed=seed,
        batch_size=int(c.batch_size),
        crop_frames=crop_frames(c, job.model_config),
        padded_frames=setup.batch_shapes[0][2],
        time_shift=bool(c.data.time_shift),
        weights=weights,
        process_index=job.process_index,
        process_count=job.process_count,
    )


def _to_host(tree: Any) -> Any:
    """A (possibly sharded) tree -> numpy on every process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
    return jax.device_get(tree)


def _finish(job, setup, fold, seed, state, run_dir, timing) -> dict:
    """Scores the best parameters on the test split, exports them, writes result.json."""
    t0 = time.perf_counter()
    task, metric = job.task, "mAP" if job.task.multilabel else "accuracy"
    test = score(
        predict(job, setup, state.best_params, fold.test), task.y[fold.test], task.multilabel
    )
    step, best, best_step = (
        jax.device_get(v) for v in (state.step, state.best_score, state.best_step)
    )
    total = setup.sched.total_steps
    result = {
        "fold": fold.name,
        "seed": int(seed),
        "test": test,
        "valid": float(best),
        "best_step": int(best_step),
        "steps": int(step),
        "total_steps": int(total),
        "early_stopped": int(step) < int(total),
        "export": None,
    }
    if job.config.export:
        params = _to_host(state.best_params)
        out = os.path.join(run_dir, "export")
        if job.is_main:
            extra = {"fold": fold.name, "seed": int(seed), "test": test, "valid": float(best)}
            export.save(out, job, params, extra=extra)
        result["export"] = out
    result["wall_s"] = round(time.time() - timing["start"], 1)
    result["eval_s"] = round(timing["eval_s"] + time.perf_counter() - t0, 1)
    job.log(
        f"[{fold.name} seed {seed}] test {metric} {test:.4f} "
        f"(best valid {float(best):.4f} at step {int(best_step)})"
    )
    if job.is_main:
        checkpoints.write_json(os.path.join(run_dir, RESULT_FILE), result)
    return result


def _read_result(path: str) -> dict:
    """A finished run's result.json; a DataError naming it when it is not what `_finish`
    writes (its scores are averaged into the job's results)."""
    hint = "delete it to run this fold and seed again"
    result = json_files.read_object(path, "a finished run's result", ("test", "valid"), hint)
    for key in ("test", "valid"):
        v = result[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise DataError(
                f"{path}: a finished run's result is damaged ({key!r} is {json.dumps(v)[:40]}, "
                f"not a finite number); {hint}"
            )
    return result


def run(job: Job, setup: Setup, fold: Fold, seed: int, run_dir: str) -> dict | None:
    """Fine-tunes one (fold, seed); returns its result, or None when preempted."""
    path = os.path.join(run_dir, RESULT_FILE)
    if os.path.isfile(path):
        return _read_result(path)
    c, task = job.config, job.task
    t_start = time.time()
    batches = _train_batches(job, setup, fold, seed)
    total = setup.sched.total_steps
    eval_every = int(c.eval_every_steps) or setup.sched.steps_per_epoch
    ckpt = checkpoints.Checkpointer(run_dir, keep=int(c.keep_checkpoints))
    tag = f"[{fold.name} seed {seed}]"
    metric = "mAP" if task.multilabel else "accuracy"
    state, finished = _restore(job, setup, ckpt, run_dir, seed)
    step = int(jax.device_get(state.step))
    # Rows logged after the checkpoint resumed from are dropped: they are logged again.
    writer = metrics.MetricWriter(
        run_dir, enabled=job.is_main, tensorboard=bool(c.tensorboard), start_step=step
    )
    patience = int(c.early_stop_patience)
    mixup = float(c.augment.mixup)  # (the draws are unused when 0)

    def save(step: int, done: bool):
        meta = {"identity": job.identity, "step": step, "finished": done, "seed": seed}
        meta.update(model=job.model_config.to_dict(), norm_stats=job.stats.to_dict())
        ckpt.save(step, state, meta)

    def check(step: int, m: dict):
        if not bool(m["finite"]):
            ckpt.wait()
            raise NonFiniteError(
                f"{tag} non-finite loss ({float(m['loss'])}) or gradient norm "
                f"({float(m['l2_grads'])}) at step {step}; the latest good checkpoint is "
                f"{ckpt.latest_step()} in {ckpt.directory}"
            )

    preempt = preemption.Preemption(ckpt.manager)
    speed = metrics.Throughput(total, int(c.batch_size), step)
    eval_s, pending = 0.0, None
    # The host builds step s + 1's batch while the device runs step s (batches are pure
    # functions of the step, so the order of work does not change them).
    host_batch = lambda s: (  # noqa: E731
        *batches.batch(s),
        *augment.sample_mixup(seed, s, int(c.batch_size), mixup or 1.0),
    )
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    ahead = pool.submit(host_batch, step)
    try:
        while not finished and step < total:
            t0 = time.perf_counter()
            x, valid, y, lam, perm = ahead.result()
            if step + 1 < total:
                ahead = pool.submit(host_batch, step + 1)
            batch = setup.global_batch(x, valid, y)
            mix = (setup.replicated(lam), setup.replicated(perm))
            speed.add_data_wait(time.perf_counter() - t0)
            with setup.activate():
                state, m = setup.train_step(state, *batch, *mix)
            step += 1
            do_save = False
            if pending is not None:
                check(*pending)
            pending = (step, m)
            if step % int(c.log_every_steps) == 0 or step == total:
                check(*pending)
                host = {k: float(v) for k, v in jax.device_get(m).items() if k != "finite"}
                host.update(speed.measure(step))
                writer.write_scalars(step, host)
                writer.console(f"{tag} {metrics.console_line(step, total, host)}")
            if step % eval_every == 0 or step == total:
                check(*pending)
                t0 = time.perf_counter()
                valid = score(
                    predict(job, setup, state.params, fold.valid),
                    task.y[fold.valid],
                    task.multilabel,
                )
                with setup.activate():
                    state = setup.update_best(state, setup.replicated(np.float32(valid)))
                eval_s += time.perf_counter() - t0
                best, best_step, bad = jax.device_get(
                    (state.best_score, state.best_step, state.bad_evals)
                )
                writer.write_scalars(step, {f"valid/{metric}": valid})
                writer.console(
                    f"{tag} step {step}/{total}: valid {metric} {valid:.4f} "
                    f"(best {float(best):.4f} at step {int(best_step)})"
                )
                finished = step == total or (patience >= 0 and int(bad) > patience)
                if finished and step < total:
                    writer.console(
                        f"{tag} early stop: {int(bad)} evaluations without a better score"
                    )
                do_save = finished or c.ckpt_every_steps == 0
            if c.ckpt_every_steps > 0 and step % int(c.ckpt_every_steps) == 0:
                do_save = True
            if do_save:
                save(step, finished)
            if not finished and preempt.reached(step):
                if not do_save:
                    save(step, False)
                writer.console(f"{tag} preemption signal: saved step {step}, stopping")
                return None
        if pending is not None:
            check(*pending)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        preempt.restore()
        ckpt.close()
        writer.close()

    return _finish(job, setup, fold, seed, state, run_dir, {"start": t_start, "eval_s": eval_s})


def crop_frames(config, mc: ModelConfig) -> int:
    """Training crop length: config.data.crop_frames, or the model's input width when 0."""
    c = int(config.data.crop_frames) or mc.input_size[1]
    if c <= 0:
        raise ConfigError(f"config.data.crop_frames={config.data.crop_frames} must be >= 0")
    return c


def padded_frames(config, mc: ModelConfig) -> int:
    """The crop padded up to whole model units."""
    fu = mc.input_size[1]
    return -(-crop_frames(config, mc) // fu) * fu
