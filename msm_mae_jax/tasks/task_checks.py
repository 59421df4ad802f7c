"""What a task's files are checked for beyond their columns: a CSV that is not text, and
rows that make a score mean less than it seems.

- `read_csv`: a task CSV as rows; a binary or non-UTF-8 file, or one the csv module cannot
  parse, is a TaskError naming the file and where.
- `leaks`: the same clip (file) listed more than once, and clips that are in a fold's test
  split and also in its train or valid split (or in valid and train): the model is then
  scored on clips it was trained or selected on. Counted, never changed: `report` warns
  with the counts in one line and they go into the results JSON (`task_checks`).

Clips are the same when their resolved paths are; tasks without file paths (synthetic, tfds)
have nothing to count.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from msm_mae_jax.core import fs
from msm_mae_jax.core.errors import TaskError

if TYPE_CHECKING:
    from msm_mae_jax.tasks.specs import Task


def read_csv(path: str) -> tuple[list[dict], list[str]]:
    """(rows, columns) of a UTF-8 task CSV; a byte-order mark (Excel's UTF-8 CSVs) is not
    part of the header. Not found, not UTF-8 text or not CSV: a TaskError naming the file."""
    if not fs.isfile(path):
        raise TaskError(f"task CSV not found: {path}")
    try:
        with fs.open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except UnicodeDecodeError as e:
        raise TaskError(
            f"{path}: not a UTF-8 text CSV (byte 0x{e.object[e.start]:02x} at offset {e.start} "
            "is not UTF-8); save the task as a UTF-8 CSV"
        ) from None
    except csv.Error as e:
        raise TaskError(f"{path}: not a readable CSV ({e})") from None
    return rows, columns


def leaks(task: Task) -> dict:
    """{'duplicate_rows': rows whose clip an earlier row already lists,
    'test_in_train': clips of a fold's test split also in its train or valid split (summed
    over folds), 'valid_in_train': valid clips also in train, 'per_fold': both per fold}."""
    paths = getattr(task.source, "paths", None)
    out = {"duplicate_rows": 0, "test_in_train": 0, "valid_in_train": 0, "per_fold": {}}
    if paths is None or len(paths) != len(task.y):
        return out
    ids = np.unique(np.asarray(paths, dtype=object), return_inverse=True)[1]
    out["duplicate_rows"] = int(sum(n - 1 for n in Counter(ids.tolist()).values()))
    for fold in task.folds:
        train = set(ids[fold.train].tolist())
        seen = train | set(ids[fold.valid].tolist())  # what the model learns or is chosen on
        counts = {
            "test_in_train": int(sum(i in seen for i in ids[fold.test].tolist())),
            "valid_in_train": int(sum(i in train for i in ids[fold.valid].tolist())),
        }
        for k, v in counts.items():
            out[k] += v
        if any(counts.values()):
            out["per_fold"][fold.name] = counts
    return out


def report(task: Task, log: Callable[[str], None]) -> dict:
    """`leaks(task)`, with one warning line through `log` when there are any."""
    found = leaks(task)
    parts = []
    if found["duplicate_rows"]:
        parts.append(f"{found['duplicate_rows']} row(s) list a clip an earlier row lists")
    for split in ("test", "valid"):
        n = found[f"{split}_in_train"]
        if n:
            folds = [k for k, v in found["per_fold"].items() if v[f"{split}_in_train"]]
            parts.append(
                f"{n} {split} clip(s) are also training clips ({', '.join(folds[:3])}"
                f"{', ...' if len(folds) > 3 else ''})"
            )
    if parts:
        log(
            f"warning: {task.spec}: {'; '.join(parts)}: scores on such clips overstate the "
            "model (counts in the results' task_checks)"
        )
    return found
