"""A labelled task: its clips, their labels and folds, and what it is checked for.

A `Task` holds an audio source (the clips), the labels (class ids [N], or multi-hot [N, C]
when multi-label) and its folds (train/valid/test index sets, `splits.Fold`). Every task a
spec builds (`specs`) is checked (`check`): two classes or more, no empty split, and every
class of a fold's valid and test splits present in its train split; the message names the file
or dataset.

Rows that make a score mean less than it seems are counted, never changed (`leaks`): the same
clip (file) listed more than once, and clips in a fold's test split that are also in its train
or valid split (or in valid and train): the model is then scored on clips it was trained or
selected on. `report_leaks` warns with the counts in one line; they go into the results JSON
(`task_checks`). Clips are the same when their resolved paths are; tasks without file paths
(synthetic, tfds) have nothing to count.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from msm_mae_jax.core.errors import TaskError
from msm_mae_jax.data.sources import AudioSource
from msm_mae_jax.tasks.splits import SPLIT_NAMES, Fold


@dataclasses.dataclass
class Task:
    """Clips, labels (class ids [N], or multi-hot [N, C] when multi-label) and folds."""

    spec: str
    source: AudioSource
    y: np.ndarray
    class_names: list[str]
    multilabel: bool
    folds: list[Fold]
    label: str = "label"

    def __len__(self) -> int:
        return len(self.source)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def train_union(self) -> np.ndarray:
        """Clips used for training in at least one fold (all clips of a fold task)."""
        return np.unique(np.concatenate([f.train for f in self.folds]))

    def without(self, indices: Sequence[int]) -> Task:
        """The task with the given clips in no split of any fold (clips that could not be
        read); checked again, so a class left only outside training is a TaskError."""
        drop = np.asarray(sorted({int(i) for i in indices}), np.int64)
        if len(drop) == 0:
            return self
        keep = lambda idx: idx[~np.isin(idx, drop)]  # noqa: E731 (order kept)
        folds = [Fold(f.name, keep(f.train), keep(f.valid), keep(f.test)) for f in self.folds]
        where = f"{self.spec} without {len(drop)} unreadable clip(s)"
        return check(dataclasses.replace(self, folds=folds), where)

    def fingerprint(self) -> str:
        """Identity of the clips (not labels/splits: embeddings depend on the audio only)."""
        return hashlib.sha256(self.source.identity().encode()).hexdigest()[:16]

    def summary(self) -> dict:
        return {
            "spec": self.spec,
            "clips": len(self),
            "classes": self.num_classes,
            "multilabel": self.multilabel,
            "label": self.label,
            "folds": {f.name: f.sizes() for f in self.folds},
        }


def _classes_present(task: Task, idx: np.ndarray) -> set[int]:
    if task.multilabel:
        return set(np.flatnonzero(task.y[idx].sum(0) > 0).tolist())
    return set(task.y[idx].tolist())


def check(task: Task, where: str) -> Task:
    """`task` when it has two classes or more, no empty split and every valid/test class in
    its training split; otherwise a TaskError naming `where`."""
    present = sorted(_classes_present(task, np.arange(len(task.y))))
    if len(present) < 2:
        names = [task.class_names[k] for k in present]
        raise TaskError(
            f"{where}: every clip of task {task.spec} has the class {names[0]!r} "
            f"(label {task.label!r}); a classification task needs two classes or more"
        )
    for fold in task.folds:
        for split in SPLIT_NAMES:
            if len(getattr(fold, split)) == 0:
                raise TaskError(f"{where}: the {split} split of {fold.name} is empty")
        in_train = _classes_present(task, fold.train)
        for split in ("valid", "test"):
            missing = sorted(_classes_present(task, getattr(fold, split)) - in_train)
            if missing:
                names = [task.class_names[k] for k in missing]
                raise TaskError(
                    f"{where}: class(es) {names} occur in the {split} split of "
                    f"{fold.name} but never in its train split"
                )
    return task


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


def report_leaks(task: Task, log: Callable[[str], None]) -> dict:
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
