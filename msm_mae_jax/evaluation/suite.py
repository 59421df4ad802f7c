"""The EVAR tasks of a folder in one run: each with its own settings, resumable, one results
JSON per task, then the table (`suite_summary`).

    tasks = suite_tasks.discover("tasks/")          # or EVAR's metadata folder + audio root
    outcomes = run_suite(tasks, Model(checkpoint="runs/base"), Protocol(), "evar-results/base")

The tasks and their settings, all checked before the first extraction: `suite_tasks.discover`;
what is evaluated and how: `protocol.Model`, `protocol.Protocol` (as `linear.evaluate`).

Each finished task is `OUT/NAME.json` (`linear.evaluate`'s results plus a `suite` block),
written atomically when the task completes. Its `suite.key` is a digest of what decides the
numbers: the model's identity, the task (CSV bytes, settings, the audio files' identity) and
the protocol (fitting, unit_sec, seeds, normalisation, layers, probe). Run again, a task whose
JSON holds the same key is reused; any other is computed (and its JSON replaced). A task that
fails (missing audio, a bad CSV, an exception) is reported in one line, its traceback written
to `OUT/NAME.error.txt`, and the suite goes on with the next task.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import traceback
from collections.abc import Callable, Sequence

from msm_mae_jax.core import fs, outputs
from msm_mae_jax.core.errors import UserError
from msm_mae_jax.core.names import path_component
from msm_mae_jax.evaluation import linear
from msm_mae_jax.evaluation.protocol import Model, Protocol
from msm_mae_jax.evaluation.suite_tasks import SuiteTask
from msm_mae_jax.tasks import specs
from msm_mae_jax.tasks.task import Task

SUITE_VERSION = 1
DEFAULT_OUT_ROOT = "evar-results"


@dataclasses.dataclass
class Outcome:
    """How one task ended: 'done', 'reused' or 'failed' (with `error`)."""

    task: SuiteTask
    status: str
    path: str
    result: dict | None = None
    error: str | None = None


def default_out_dir(model: Model) -> str:
    """evar-results/<a name of the model>: the basename of the checkpoint plus a digest of
    its absolute path, or the baseline (and its config)."""
    if model.checkpoint:
        path = fs.absolute(model.checkpoint)
        digest = hashlib.sha256(path.encode()).hexdigest()[:8]
        name = f"{path_component(fs.basename(path.rstrip('/')) or 'model')}-{digest}"
    else:
        name = path_component("-".join(["baseline", model.baseline, model.config or ""]))
    return os.path.join(DEFAULT_OUT_ROOT, name.strip("-"))


def check_out_dir(out_dir: str, suite_dir: str) -> None:
    """The results folder can be written and is not the tasks' folder (NAME.json would be
    overwritten); `suite_outputs.check_out_dir` checks the files written there too."""
    if fs.absolute(out_dir).rstrip("/") == fs.absolute(suite_dir).rstrip("/"):
        raise UserError(
            f"--out {out_dir}: the results folder is the --suite folder, whose NAME.json "
            "files it would replace; give another --out"
        )
    outputs.check_dir(out_dir)


def result_key(st: SuiteTask, task: Task, model: Model, protocol: Protocol) -> str:
    """Digest of everything that decides a task's numbers (see the module docstring)."""
    what = {
        "version": SUITE_VERSION,
        "model": model.identity(),
        "task": {
            "name": st.name,
            "csv": hashlib.sha256(fs.read_bytes(st.csv)).hexdigest(),
            "unit_sec": st.unit_sec,
            "audio": task.fingerprint(),
        },
        "protocol": protocol.identity(),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def result_path(out_dir: str, name: str) -> str:
    return fs.join(out_dir, f"{path_component(name)}.json")


def error_path(out_dir: str, name: str) -> str:
    return fs.join(out_dir, f"{path_component(name)}.error.txt")


def _finished(path: str, key: str) -> dict | None:
    """The results at `path` when they were made with `key`."""
    if not fs.isfile(path):
        return None
    try:
        result = json.loads(fs.read_text(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(result, dict) and (result.get("suite") or {}).get("key") == key:
        return result
    return None


def run_task(
    st: SuiteTask,
    model: Model,
    protocol: Protocol,
    out_dir: str,
    *,
    batch_size: int = 32,
    cache_dir: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Outcome:
    """One task: its finished results when the key matches, else evaluated and written."""
    path = result_path(out_dir, st.name)
    task = specs.load_csv_task(
        st.csv, label=protocol.label, seed=protocol.split_seed, audio_dir=st.audio_dir
    )
    key = result_key(st, task, model, protocol)
    done = _finished(path, key)
    if done is not None:
        return Outcome(st, "reused", path, done)
    result = linear.evaluate(
        task,
        model,
        protocol,
        unit_sec=st.unit_sec,
        batch_size=batch_size,
        cache_dir=cache_dir,
        progress=progress,
        log=log,
    )
    result["suite"] = {
        "name": st.name,
        "key": key,
        "task_settings": st.origin,
        "csv": st.csv,
        "audio_dir": st.audio_dir,
        "published": st.published,
    }
    outputs.write_text(path, json.dumps(result, indent=2), "--out:")  # only a finished task
    return Outcome(st, "done", path, result)


def run_suite(
    suite_tasks: Sequence[SuiteTask],
    model: Model,
    protocol: Protocol,
    out_dir: str,
    *,
    batch_size: int = 32,
    cache_dir: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[Outcome]:
    """Every task in turn (see the module docstring); failures are outcomes, not raised."""
    fs.makedirs(out_dir)
    outcomes = []
    for k, st in enumerate(suite_tasks, 1):
        head = f"suite [{k}/{len(suite_tasks)}] {st.name}"
        log(f"{head}: {st.csv} (audio {st.audio_dir}), unit_sec {st.unit_sec:g}")
        t0 = time.time()
        error_file = error_path(out_dir, st.name)
        try:
            o = run_task(
                st,
                model,
                protocol,
                out_dir,
                batch_size=batch_size,
                cache_dir=cache_dir,
                progress=progress,
                log=log,
            )
        except Exception as e:  # noqa: BLE001 (a task's failure must not end a long suite)
            message = _one_line(e)
            outputs.write_text(error_file, traceback.format_exc(), "--out:")
            log(f"{head}: FAILED: {message} (details: {error_file})")
            outcomes.append(Outcome(st, "failed", result_path(out_dir, st.name), error=message))
            continue
        if fs.exists(error_file):
            fs.remove(error_file)
        r = o.result
        score = r[r["metric"]]
        what = "reused" if o.status == "reused" else f"done in {time.time() - t0:.0f} s"
        log(
            f"{head}: {r['metric']} {100 * score['mean']:.2f} ± {100 * score['std']:.2f} % "
            f"({what}) -> {o.path}"
        )
        outcomes.append(o)
    return outcomes


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if isinstance(e, (UserError, ValueError, FileNotFoundError)):
        return text
    return f"{type(e).__name__}: {text}"
