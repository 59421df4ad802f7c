"""A fine-tuning job: a pre-trained encoder, a labelled task, every fold x seed, the results.

    result = finetune(task, "runs/base/export", config, "runs/ft")
    result = finetune(task, random_init("configs/msm_mae.py:fsdd_small"), config, "runs/ft0")

The encoder comes from a training workdir, an export or converted official weights
(`Runtime.load`), or is a randomly initialised one (the baseline). Run directories:
WORKDIR/<fold>/seed<k>/ (see `loop`; <fold> is the fold's name made one safe folder name by
`core.names.path_component`, as any name from the task's data); running the same job again
resumes the unfinished runs and skips the finished ones.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from msm_mae_jax.core import json_files
from msm_mae_jax.core.errors import ConfigError, TaskError
from msm_mae_jax.core.names import path_component
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.finetune import (
    config_rules,
    data,
    loop,
    model,
    optimizer,
    results,
)
from msm_mae_jax.finetune.state import Setup
from msm_mae_jax.model import mae
from msm_mae_jax.model.config import ModelConfig, load_model_config
from msm_mae_jax.model.identity import checkpoint_identity
from msm_mae_jax.tasks.task import Task, report_leaks
from msm_mae_jax.train import checkpoints, distributed

NORMS = ("task", "checkpoint")
# Keys that change how a run is logged, saved or laid out on devices, not what it computes.
_VOLATILE = (
    "log_every_steps",
    "ckpt_every_steps",
    "keep_checkpoints",
    "tensorboard",
    "export",
    "num_seeds",
    "mesh",
    "sharding_rules",
    "coordinator_address",
    "num_processes",
    "process_id",
)


@dataclasses.dataclass
class Pretrained:
    """The encoder a job starts from."""

    name: str  # the checkpoint path, or what the random initialisation was
    model_config: ModelConfig
    params: Any  # host numpy tree
    norm_stats: NormStats | None  # None: no dataset statistics stored with it
    identity: dict  # what a resumed job must find unchanged


def load_pretrained(checkpoint: str) -> Pretrained:
    """A training workdir, an export or converted official weights (`Runtime.load`)."""
    from msm_mae_jax.features.runtime import Runtime

    try:
        rt = Runtime.load(checkpoint)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"--checkpoint {checkpoint}: {e}") from None
    per_batch = rt.default_normalization == "batch"  # converted with --per-batch-norm
    return Pretrained(
        checkpoint,
        rt.model_config,
        jax.device_get(rt._params),  # Runtime has no public accessor for its parameters
        None if per_batch else rt.norm_stats,
        {
            "checkpoint": os.path.abspath(checkpoint),
            "files": checkpoint_identity(checkpoint),
        },
    )


def random_init(model_spec: str, seed: int = 0) -> Pretrained:
    """The encoder of a model config (e.g. 'configs/msm_mae.py:fsdd_small') with random
    weights: the baseline that shows what pre-training adds."""
    mc = load_model_config(model_spec)
    x = mae.dummy_input(mc)
    params = nn.unbox(jax.jit(mae.Encoder(mc).init)(jax.random.key(seed), x)["params"])
    name = f"random init ({model_spec}, seed {seed})"
    return Pretrained(name, mc, jax.device_get(params), None, {"random": name, **mc.to_dict()})


def check_task(task: Task) -> None:
    if task.num_classes < 2:
        raise TaskError(
            f"{task.spec}: column {task.label!r} has a single class {task.class_names}; "
            "classification needs at least two"
        )


def job_identity(config, encoder: Pretrained, task: Task) -> dict:
    cfg = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE}
    return {
        "encoder": encoder.identity,
        "task": task.spec,
        "label": task.label,
        "config": _jsonable(cfg),
    }


def _jsonable(obj):
    """Tuples -> lists, as the identity reads back from JSON."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def finetune(
    task: Task,
    encoder: Pretrained | str,
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict | None:
    """Fine-tunes `encoder` (a `Pretrained` or a checkpoint path) on every fold and seed;
    returns the results dict (None when preempted)."""
    t_start = time.time()
    config_rules.check_config(config)
    process_index, process_count = distributed.initialize(config)
    check_task(task)
    checks = report_leaks(task, log)  # repeated clips, test clips also trained on
    if config.data.norm not in NORMS:
        raise ConfigError(f"config.data.norm={config.data.norm!r}; expected one of {NORMS}")
    if int(config.num_seeds) < 1:
        raise ConfigError(f"config.num_seeds={config.num_seeds} must be >= 1")
    if isinstance(encoder, str):
        encoder = load_pretrained(encoder)
    mc = encoder.model_config.replace(dtype=str(config.model.dtype), remat=bool(config.model.remat))
    head = model.HeadConfig.from_config(config.head, task.num_classes, mc)
    if config.data.norm == "checkpoint" and encoder.norm_stats is None:
        raise ConfigError(
            f"config.data.norm='checkpoint': {encoder.name} stores no dataset statistics; "
            "use 'task'"
        )
    workdir = os.path.abspath(workdir)
    identity = job_identity(config, encoder, task)
    _claim_workdir(workdir, identity, config, process_index == 0)

    t0 = time.time()
    store = data.load_clips(task, float(config.data.unit_sec), progress, log)
    task = task.without(list(store.skipped))  # unreadable clips: in no split
    if config.data.norm == "checkpoint":
        stats = encoder.norm_stats
    else:
        stats = store.norm_stats(task.train_union)
    load_s = time.time() - t0
    job = loop.Job(
        config,
        task,
        store,
        stats,
        mc,
        encoder.params,
        encoder.name,
        identity,
        log,
        process_index,
        process_count,
    )
    log(
        f"fine-tuning {mc.run_name_prefix} ({mc.embed_dim}x{mc.depth}) from {encoder.name} on "
        f"{task.spec}: {task.num_classes} classes, {len(task.folds)} fold(s) x "
        f"{config.num_seeds} seed(s), workdir {workdir}"
    )
    runs = []
    t0 = time.time()
    for fold in task.folds:
        setup = _setup(config, mc, head, task, fold)
        for k in range(int(config.num_seeds)):
            seed = int(config.seed) + k
            # A fold's name comes from the task's data: one safe folder name, never a path
            run_dir = os.path.join(workdir, path_component(fold.name), f"seed{seed}")
            r = loop.run(job, setup, fold, seed, run_dir)
            if r is None:
                return None
            runs.append(r)
    timing = {
        "load_s": round(load_s, 1),
        "runs_s": round(time.time() - t0, 1),
        "total_s": round(time.time() - t_start, 1),
    }
    out = results.collect(task, encoder.name, runs, timing, _settings(config, workdir, stats))
    skipped = store.skipped_report(task)
    out["skipped"] = {"count": len(skipped), "clips": skipped}
    out["task_checks"] = checks
    return out


def _settings(config, workdir: str, stats: NormStats) -> dict:
    """What the results record of how they were made."""
    return {
        "config": f"{config.variant}",
        "workdir": workdir,
        "norm": str(config.data.norm),
        "norm_stats": stats.to_dict(),
        "unit_sec": float(config.data.unit_sec),
        "freeze_encoder": bool(config.freeze_encoder),
        "seeds": [int(config.seed) + k for k in range(int(config.num_seeds))],
        "full_config": _jsonable(config.to_dict()),
    }


def _setup(config, mc, head, task: Task, fold) -> Setup:
    b = int(config.batch_size)
    spe = len(fold.train) // b
    if spe < 1:
        raise ConfigError(
            f"config.batch_size={b} exceeds the {len(fold.train)} training clips of "
            f"{task.spec} ({fold.name}); lower it"
        )
    sched = optimizer.schedule(config, spe)
    return Setup(config, mc, head, task.multilabel, sched, loop.padded_frames(config, mc))


def _claim_workdir(workdir: str, identity: dict, config, is_main: bool) -> None:
    """The workdir belongs to one job; another job's workdir is a ConfigError."""
    path = os.path.join(workdir, "job.json")
    if os.path.isfile(path):
        saved = json_files.read_object(
            path, "the job file", hint="use a new --workdir, or delete the file to start over"
        )
        if saved != identity:
            diff = sorted(k for k in identity if saved.get(k) != identity[k])
            raise ConfigError(
                f"--workdir {workdir} holds another fine-tuning job (different {', '.join(diff)}); "
                "use a new --workdir or delete it"
            )
    elif is_main:
        os.makedirs(workdir, exist_ok=True)
        checkpoints.write_json(path, identity)
        checkpoints.write_json(os.path.join(workdir, "config.json"), config.to_dict())
