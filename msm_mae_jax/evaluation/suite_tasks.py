"""The tasks of a suite folder (`discover`), every one checked before the first extraction.

A suite folder holds tasks of two kinds, in EVAR's column order, then the others by name:
- built tasks: every `*.json` is a task's settings (`table.TaskSettings`, as `msm-mae tasks
  make` writes them beside `NAME.csv`): unit_sec and the published numbers from the
  settings, audio below the settings' `audio_dir`;
- EVAR's metadata CSVs (`esc50.csv`, ... a name of `table.TASKS` that no settings file uses):
  the settings from the table, audio in `AUDIO_ROOT/NAME/` (EVAR's `work/16k/NAME`).

The table is right or the suite says why not: a `*.json` that is not valid settings (not
JSON, a missing or unknown key, a `unit_sec` that is not a number of seconds > 0, ...), a
settings file whose CSV is not a file, or two tasks with one name (two settings files, or a
settings file and an EVAR CSV) end the command with one line naming the files and the key,
before any work; nothing is "ignored" that was meant as a task. Other CSVs are named as
ignored. Only regular files are read: FIFOs, sockets and devices (a named pipe would block
the read for ever) are skipped and named (`core.scan.names`).

This module imports neither jax nor TensorFlow: the suite's mistakes are found in a second.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

from msm_mae_jax.core import fs, scan
from msm_mae_jax.core.errors import TaskError, UserError
from msm_mae_jax.tasks.evar.table import ORDER, TASKS, read_settings

EVAR_AUDIO = os.path.join("..", "..", "work", "16k")  # from evar/metadata to work/16k
EVAR_TABLE = "EVAR table"  # the origin of an EVAR metadata CSV's settings


@dataclasses.dataclass(frozen=True)
class SuiteTask:
    """One task of a suite: where its CSV and audio are, and its settings."""

    name: str
    csv: str
    audio_dir: str
    unit_sec: float
    published: dict[str, float]
    origin: str  # the settings file, or EVAR_TABLE for EVAR's own CSVs


def default_audio_root(suite_dir: str) -> str:
    return fs.join(fs.absolute(suite_dir), EVAR_AUDIO)


def _norm(path: str) -> str:
    return path if fs.is_remote(path) else os.path.normpath(path)


def _settings_task(path: str) -> SuiteTask:
    """The task of settings file `path`; TaskError naming the file and the key."""
    if not fs.isfile(path):
        raise TaskError(f"{path}: not a regular file, so not a task's settings")
    s = read_settings(path)
    csv = _norm(s.csv_path(path))
    if not fs.isfile(csv):
        raise TaskError(f'{path}: "csv": {s.csv!r}: {csv} is not a file')
    audio = _norm(s.audio_path(path))
    return SuiteTask(s.name, csv, audio, float(s.unit_sec), dict(s.published), path)


def _evar_task(name: str, csv: str, root: str) -> SuiteTask:
    info = TASKS[name]
    audio = _norm(fs.join(root, name))
    return SuiteTask(name, csv, audio, info.unit_sec, dict(info.published), EVAR_TABLE)


def _one_line(problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    return f"{problems[0]} (and {len(problems) - 1} more: {' | '.join(problems[1:])})"


def discover(
    suite_dir: str,
    audio_root: str | None = None,
    only: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
) -> list[SuiteTask]:
    """The tasks of `suite_dir` (see the module docstring); UserError naming what is wrong
    when a task is broken, two tasks share a name, there is none, an asked-for task is
    missing, or EVAR CSVs have no audio root."""
    if not fs.isdir(suite_dir):
        raise UserError(f"--suite {suite_dir}: not a folder")
    names, special = scan.names(suite_dir)
    if special:
        log(f"suite: skipped in {suite_dir}: {', '.join(f'{n} ({why})' for n, why in special)}")
    problems: list[str] = []
    built: list[SuiteTask] = []
    for n in (n for n in names if n.endswith(".json")):
        try:
            built.append(_settings_task(fs.join(suite_dir, n)))
        except TaskError as e:
            problems.append(str(e))
    used = {t.csv for t in built}
    evar, ignored = {}, []
    for n in (n for n in names if n.endswith(".csv")):
        path = _norm(fs.join(fs.absolute(suite_dir), n))
        if path in used:
            continue
        if n[:-4] not in TASKS:
            ignored.append(n)
        elif not fs.isfile(path):
            problems.append(f"{fs.join(suite_dir, n)}: not a regular file, so not a task CSV")
        else:
            evar[n[:-4]] = path
    origins: dict[str, list[str]] = {}
    for t in built:
        origins.setdefault(t.name, []).append(t.origin)
    for t in evar:
        origins.setdefault(t, []).append(f"{fs.join(suite_dir, t)}.csv (EVAR's metadata CSV)")
    for name, where in origins.items():
        if len(where) > 1:
            problems.append(
                f'{" and ".join(where)}: "name": each is the task {name!r}; give every task '
                "its own name (or move one out of the folder)"
            )
    if problems:
        raise UserError(_one_line(problems))
    found = {t.name: t for t in built}
    if evar:
        root = audio_root or default_audio_root(suite_dir)
        if not fs.isdir(root):
            raise UserError(
                f"--suite {suite_dir}: EVAR's metadata CSVs ({', '.join(evar)}) read their "
                f"audio from ROOT/<task>/ (EVAR's work/16k); {root} is not a folder: give "
                "--suite-audio ROOT"
            )
        found.update({t: _evar_task(t, csv, root) for t, csv in evar.items()})
    if ignored:
        log(f"suite: ignored in {suite_dir} (not a task): {', '.join(ignored)}")
    if not found:
        raise UserError(
            f"--suite {suite_dir}: no tasks; expected NAME.json + NAME.csv (msm-mae tasks make) "
            f"or EVAR's metadata CSVs named {', '.join(f'{t}.csv' for t in ORDER)}"
        )
    if only:
        unknown = sorted(set(only) - found.keys())
        if unknown:
            raise UserError(
                f"--suite-tasks: {', '.join(unknown)} not in {suite_dir}; it holds "
                f"{', '.join(order(found))}"
            )
        found = {k: v for k, v in found.items() if k in set(only)}
    return [found[k] for k in order(found)]


def order(names) -> list[str]:  # noqa: ANN001 (any iterable of task names)
    """EVAR's column order, then the other names sorted."""
    names = set(names)
    return [t for t in ORDER if t in names] + sorted(names - set(ORDER))
