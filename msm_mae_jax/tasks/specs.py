"""Task specs -> a labelled `task.Task`: which clips, which labels, which splits.

Task specs (the `--task` of `eval` and `finetune`):

- `csv:FILE` — a CSV with a file column (`file`, else `file_name` as in EVAR's metadata CSVs,
  unless another is named), the label column (`label` unless another is named) and either a
  `split` column (`train` / `valid` / `test`; `val` and `validation` are accepted for `valid`;
  a row with an empty split is left out, as EVAR does)
  or a `fold` column (leave-one-fold-out: one evaluation per fold value, with that fold as
  test). Relative paths are below `audio_dir` (default: the CSV's folder); other columns (an
  unnamed pandas index, speaker ids) are ignored; a UTF-8 byte-order mark is accepted.
  A label containing `,` (EVAR's format: `"a,b"` quoted in one field) or `;` makes the task
  multi-label (`labels.py`).
- `folder:DIR` — one sub-folder per class (audio files found recursively below it); each class
  is split 70/10/20 % into train/valid/test with a seeded shuffle.
- `tfds:NAME` (or `tfds:NAME/CONFIG`) — a TensorFlow Datasets dataset with its `train` and
  `test` splits (and `validation` when present); the label feature is the label column, the
  audio feature `audio` unless another is named.
- `synthetic` or `synthetic:N` — N clips (default 600) of the built-in generator of
  `msm_mae_jax.synthetic`, split 70/10/20 % per class.

Clips are read through the data sources (`msm_mae_jax.data.sources`). Whenever there is no
validation split, a seeded, stratified 10 % of the training clips is held out as validation
(EVAR's choice). A single class, a class that occurs in valid/test but never in train, an
empty split, a missing file or an unknown column is an error that names it.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import numpy as np

from msm_mae_jax.core import fs, paths
from msm_mae_jax.core.errors import DataError, TaskError
from msm_mae_jax.data import audio_io, synthetic
from msm_mae_jax.data.sources import FileSource, SyntheticSource, TfdsSource
from msm_mae_jax.tasks.labels import encode_labels
from msm_mae_jax.tasks.splits import (
    Fold,
    strata_of,
    stratified_split,
    valid_from_train,
)
from msm_mae_jax.tasks.task import Task, check

_SPLIT_ALIASES = {
    "train": "train",
    "valid": "valid",
    "val": "valid",
    "validation": "valid",
    "test": "test",
}
FILE_COLUMNS = ("file", "file_name")  # the file column when none is named, in this order
FOLDER_RATIOS = (0.7, 0.1, 0.2)
SYNTHETIC_CLIPS = 600
SYNTHETIC_SECONDS = 2.0
_SYNTHETIC_SEED = 1_000_003  # fixed: evaluation clips are not the training generator's clips


def _read_csv(path: str) -> tuple[list[dict], list[str]]:
    """(rows, columns) of a UTF-8 task CSV; a byte-order mark (Excel's UTF-8 CSVs) is not
    part of the header. Not found, not UTF-8 text, not CSV or no rows: a TaskError naming the
    file."""
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
    if not rows:
        raise TaskError(f"{path}: no data rows")
    return rows, columns


def _file_column(path: str, columns: list[str], file_column: str | None) -> str:
    if file_column is not None:
        if file_column not in columns:
            raise TaskError(f"{path}: no file column {file_column!r}; available columns: {columns}")
        return file_column
    for col in FILE_COLUMNS:
        if col in columns:
            return col
    raise TaskError(
        f"{path}: no file column (looked for {list(FILE_COLUMNS)}; name another with "
        f"file_column); available columns: {columns}"
    )


def _csv_folds(path: str, rows: list[dict], columns: list[str], strata, seed: int) -> list[Fold]:  # noqa: ANN001
    """The single split of a `split` column, or one fold per value of a `fold` column."""
    if "split" in columns:
        splits = []
        for i, r in enumerate(rows):
            s = _SPLIT_ALIASES.get(str(r["split"]).strip().lower())
            if s is None:
                raise TaskError(
                    f"{path}: data row {i + 1} has split {r['split']!r}; expected "
                    f"one of train/valid/test"
                )
            splits.append(s)
        splits = np.array(splits)
        train, valid = np.flatnonzero(splits == "train"), np.flatnonzero(splits == "valid")
        test = np.flatnonzero(splits == "test")
        if len(valid) == 0 and len(train) > 0:
            train, valid = valid_from_train(train, strata, seed)
        return [Fold("split", train, valid, test)]
    fold_ids = [str(r["fold"]).strip() for r in rows]
    order = sorted(set(fold_ids), key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v))
    if len(order) < 2:
        raise TaskError(
            f"{path}: column 'fold' has a single value {order}; leave-one-fold-"
            "out needs at least two folds"
        )
    fold_ids = np.array(fold_ids)
    folds = []
    for k, fv in enumerate(order):
        test = np.flatnonzero(fold_ids == fv)
        train, valid = valid_from_train(np.flatnonzero(fold_ids != fv), strata, seed + k)
        folds.append(Fold(f"fold{fv}", train, valid, test))
    return folds


def load_csv_task(
    path: str,
    label: str = "label",
    seed: int = 0,
    file_column: str | None = None,
    audio_dir: str | None = None,
) -> Task:
    rows, columns = _read_csv(path)
    file_column = _file_column(path, columns, file_column)
    if label not in columns:
        raise TaskError(f"{path}: no label column {label!r}; available columns: {columns}")
    if "split" not in columns and "fold" not in columns:
        raise TaskError(
            f"{path}: needs a 'split' (train/valid/test) or a 'fold' column; "
            f"available columns: {columns}"
        )
    if "split" in columns:  # EVAR's rule: a row without a split is in no split (gtzan's extras)
        rows = [r for r in rows if str(r["split"] or "").strip()]
        if not rows:
            raise TaskError(f"{path}: every row has an empty 'split'")
    if audio_dir is not None and not fs.isdir(audio_dir):
        raise TaskError(f"{path}: audio_dir {audio_dir} is not a folder")
    base = fs.absolute(audio_dir) if audio_dir is not None else fs.dirname(fs.absolute(path))
    files = [fs.resolve(base, r[file_column]) for r in rows]
    missing = _missing_files(files, base)
    if missing:
        raise TaskError(
            f"{path}: {len(missing)} audio file(s) of column {file_column!r} not found below "
            f"{base}, e.g. {missing[:3]}"
        )
    y, names, multilabel = encode_labels([r[label] for r in rows], f"{path} column {label!r}")
    folds = _csv_folds(path, rows, columns, strata_of(y, multilabel), seed)
    source = FileSource(files, spec=f"csv:{path}")
    return check(Task(f"csv:{path}", source, y, names, multilabel, folds, label), path)


def _missing_files(files: list[str], base: str) -> list[str]:
    """The files that do not exist; below a URL one listing instead of a request per file."""
    if not fs.is_remote(base):  # a FIFO is there (skipped and counted when it is read)
        return [f for f in files if not os.path.isfile(f) and not paths.not_regular(f)]
    present = set(fs.walk_files(base))
    return [f for f in files if f not in present and not fs.isfile(f)]


def load_folder_task(root: str, seed: int = 0) -> Task:
    if not fs.isdir(root):
        raise TaskError(f"task folder not found: {root}")
    classes = [d for d in fs.listdir(root) if fs.isdir(fs.join(root, d))]
    if not classes:
        raise TaskError(f"{root}: no class sub-folders (expected DIR/<class>/<audio files>)")
    files, labels = [], []
    for k, c in enumerate(classes):
        found = [f for f in fs.walk_files(fs.join(root, c)) if audio_io.is_audio_file(f)]
        if not found:
            raise TaskError(
                f"{fs.join(root, c)}: class folder without audio files "
                f"(extensions {sorted(audio_io.AUDIO_EXTENSIONS)})"
            )
        files += found
        labels += [k] * len(found)
    y = np.array(labels, np.int64)
    valid, test, train = stratified_split(y, [FOLDER_RATIOS[1], FOLDER_RATIOS[2]], seed)
    source = FileSource([fs.absolute(f) for f in files], spec=f"folder:{root}")
    task = Task(f"folder:{root}", source, y, classes, False, [Fold("split", train, valid, test)])
    return check(task, root)


def load_synthetic_task(
    n: int = SYNTHETIC_CLIPS, seed: int = 0, seconds: float = SYNTHETIC_SECONDS
) -> Task:
    source = SyntheticSource(n, _SYNTHETIC_SEED, seconds, spec=f"synthetic:{n}")
    y = source.labels()
    valid, test, train = stratified_split(y, [FOLDER_RATIOS[1], FOLDER_RATIOS[2]], seed)
    names = list(synthetic.CLASS_NAMES)
    task = Task(f"synthetic:{n}", source, y, names, False, [Fold("split", train, valid, test)])
    return check(task, "synthetic")


def load_tfds_task(
    name: str,
    label: str = "label",
    audio_key: str = "audio",
    seed: int = 0,
    data_dir: str | None = None,
) -> Task:
    where = f"tfds:{name}"
    try:
        opened = TfdsSource(name, [], audio_key=audio_key, data_dir=data_dir, spec=where)
        split_names = list(opened.info.splits)
        if "train" not in split_names or "test" not in split_names:
            raise TaskError(f"{where}: needs 'train' and 'test' splits; has {split_names}")
        valid_name = next((s for s in ("validation", "valid", "val") if s in split_names), None)
        splits = ["train"] + ([valid_name] if valid_name else []) + ["test"]
        source = TfdsSource(name, splits, audio_key=audio_key, data_dir=data_dir, spec=where)
        features = source.info.features
        if label not in features:
            raise TaskError(f"{where}: no label feature {label!r}; features: {sorted(features)}")
        raw = source.feature_values(label)
    except DataError as e:  # the source's message names the dataset, split or feature
        raise TaskError(str(e)) from e
    if hasattr(features[label], "names"):
        names, y = list(features[label].names), np.array(raw, np.int64)
    else:
        y, names, _ = encode_labels(
            [v.decode() if isinstance(v, bytes) else v for v in raw],
            f"{where} feature {label!r}",
        )
    offsets = np.cumsum([0] + source.counts)
    parts = {s: np.arange(offsets[k], offsets[k + 1]) for k, s in enumerate(splits)}
    train, test = parts["train"], parts["test"]
    if valid_name:
        valid = parts[valid_name]
    else:
        train, valid = valid_from_train(train, y, seed)
    task = Task(where, source, y, names, False, [Fold("split", train, valid, test)], label)
    return check(task, where)


def parse_task(
    spec: str,
    *,
    label: str = "label",
    file_column: str | None = None,
    audio_dir: str | None = None,
    seed: int = 0,
    audio_key: str = "audio",
    tfds_data_dir: str | None = None,
) -> Task:
    """Builds a Task from a spec (see the module docstring); `file_column` and `audio_dir`
    apply to `csv:` tasks (EVAR's metadata CSVs: audio_dir=.../work/16k/<task>)."""
    kind, _, arg = spec.partition(":")
    if kind != "csv" and (file_column is not None or audio_dir is not None):
        raise TaskError(f"task {spec!r}: file_column and audio_dir apply to csv: tasks only")
    if kind == "csv" and arg:
        return load_csv_task(
            arg, label=label, seed=seed, file_column=file_column, audio_dir=audio_dir
        )
    if kind == "folder" and arg:
        return load_folder_task(arg, seed=seed)
    if kind == "tfds" and arg:
        return load_tfds_task(
            arg, label=label, audio_key=audio_key, seed=seed, data_dir=tfds_data_dir
        )
    if kind == "synthetic":
        try:
            n = int(arg) if arg else SYNTHETIC_CLIPS
        except ValueError:
            raise TaskError(f"task {spec!r}: expected synthetic or synthetic:N") from None
        return load_synthetic_task(n, seed=seed)
    raise TaskError(
        f"unknown task spec {spec!r}; expected csv:FILE, folder:DIR, tfds:NAME or synthetic[:N]"
    )


def write_csv(
    path: str,
    files: Sequence[str],
    labels: Sequence[str],
    splits: Sequence[str] | None = None,
    folds: Sequence | None = None,
) -> str:
    """Writes a task CSV (files made relative to the CSV's folder when possible)."""
    base = fs.dirname(fs.absolute(path))
    cols = (
        ["file", "label"]
        + (["split"] if splits is not None else [])
        + (["fold"] if folds is not None else [])
    )
    with fs.atomic_write(path) as f:
        w = csv.writer(f)
        w.writerow(cols)
        for i, (p, lab) in enumerate(zip(files, labels, strict=True)):
            same_kind = fs.is_remote(p) == fs.is_remote(base)
            row = [fs.relpath(p, base) if same_kind else p, lab]
            row += [splits[i]] if splits is not None else []
            row += [folds[i]] if folds is not None else []
            w.writerow(row)
    return path
