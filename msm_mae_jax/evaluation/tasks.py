"""Labelled downstream tasks for linear evaluation: which clips, which labels, which splits.

Task specs (the `--task` of evaluate.py):

- `csv:FILE` — a CSV with a `file` column (paths relative to the CSV's folder, or absolute),
  the label column (`label` unless another is named) and either a `split` column
  (`train` / `valid` / `test`; `val` and `validation` are accepted for `valid`) or a `fold`
  column (leave-one-fold-out: one evaluation per fold value, with that fold as test).
  A label containing `;` makes the task multi-label (`a;b` = both classes).
- `folder:DIR` — one sub-folder per class (audio files found recursively below it); each class
  is split 70/10/20 % into train/valid/test with a seeded shuffle.
- `tfds:NAME` (or `tfds:NAME/CONFIG`) — a TensorFlow Datasets dataset with its `train` and
  `test` splits (and `validation` when present); the label feature is the label column, the
  audio feature `audio` unless another is named.
- `synthetic` or `synthetic:N` — N clips (default 600) of the built-in generator of
  `msm_mae_jax.synthetic`, split 70/10/20 % per class.

Whenever there is no validation split, a seeded, stratified 10 % of the training clips is held
out as validation (EVAR's choice). A class that occurs in valid/test but never in train, an
empty split, a missing file or an unknown column is an error that names it.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
from collections.abc import Iterator, Sequence

import numpy as np

from msm_mae_jax.core.errors import TaskError
from msm_mae_jax.data import audio_io, synthetic
from msm_mae_jax.data.audio import SAMPLE_RATE
from msm_mae_jax.data.tf_setup import tensorflow

SPLIT_NAMES = ("train", "valid", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "valid": "valid",
    "val": "valid",
    "validation": "valid",
    "test": "test",
}
FOLDER_RATIOS = (0.7, 0.1, 0.2)
VALID_FRACTION = 0.1
SYNTHETIC_CLIPS = 600
SYNTHETIC_SECONDS = 2.0
_SYNTHETIC_SEED = 1_000_003  # fixed: evaluation clips are not the training generator's clips


# ---------------------------------------------------------------------------------------------
# Audio sources: clip i of a task as a 16 kHz mono float32 waveform.


class FileSource:
    """Audio files, read with `audio_io.load_audio`."""

    def __init__(self, paths: Sequence[str]):
        self.paths = [os.path.abspath(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, i: int) -> str:
        return self.paths[i]

    def iterate(
        self, indices: Sequence[int], max_seconds: float | None = None
    ) -> Iterator[np.ndarray]:
        for i in indices:
            yield audio_io.load_audio(self.paths[i], SAMPLE_RATE, max_seconds=max_seconds)

    def durations(self) -> np.ndarray:
        return np.array([audio_io.audio_info(p).seconds for p in self.paths])

    def identity(self) -> str:
        """Paths, sizes and modification times: a changed file invalidates cached embeddings."""
        h = hashlib.sha256()
        for p in self.paths:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return "files:" + h.hexdigest()


class SyntheticSource:
    """Clips of the built-in generator (deterministic in (seed, index))."""

    def __init__(self, n: int, seed: int = _SYNTHETIC_SEED, seconds: float = SYNTHETIC_SECONDS):
        self.n, self.seed, self.seconds = int(n), int(seed), float(seconds)

    def __len__(self) -> int:
        return self.n

    def name(self, i: int) -> str:
        return f"synthetic clip {i} (seed {self.seed})"

    def iterate(
        self, indices: Sequence[int], max_seconds: float | None = None
    ) -> Iterator[np.ndarray]:
        for i in indices:
            wav, _ = synthetic.make_clip(int(i), self.seed, self.seconds)
            yield wav if max_seconds is None else wav[: int(round(max_seconds * SAMPLE_RATE))]

    def durations(self) -> np.ndarray:
        return np.full(self.n, self.seconds)

    def labels(self) -> np.ndarray:
        return np.array([synthetic.label_of(i) for i in range(self.n)], np.int64)

    def identity(self) -> str:
        return f"synthetic:{self.n}:{self.seed}:{self.seconds}"


class TfdsSource:
    """The audio feature of a TFDS dataset's splits, concatenated in split order."""

    def __init__(
        self,
        name: str,
        splits: Sequence[str],
        counts: Sequence[int],
        audio_key: str,
        sample_rate: int,
        data_dir: str | None,
    ):
        self.dataset, self.splits, self.counts = name, list(splits), [int(c) for c in counts]
        self.audio_key, self.sample_rate, self.data_dir = audio_key, int(sample_rate), data_dir

    def __len__(self) -> int:
        return sum(self.counts)

    def name(self, i: int) -> str:
        for split, count in zip(self.splits, self.counts, strict=True):
            if i < count:
                return f"tfds:{self.dataset} {split}[{i}]"
            i -= count
        return f"tfds:{self.dataset} [{i}]"

    def _waves(self) -> Iterator[np.ndarray]:
        import tensorflow_datasets as tfds

        for split in self.splits:
            ds = tfds.load(self.dataset, split=split, data_dir=self.data_dir, shuffle_files=False)
            for ex in tfds.as_numpy(ds.map(lambda e: e[self.audio_key])):
                wav = np.asarray(ex)
                if np.issubdtype(wav.dtype, np.integer):  # int16 PCM -> [-1, 1]
                    wav = wav.astype(np.float32) / np.iinfo(wav.dtype).max
                if wav.ndim == 2:  # [S, channels]
                    wav = wav.mean(axis=1)
                yield wav.astype(np.float32)

    def iterate(
        self, indices: Sequence[int], max_seconds: float | None = None
    ) -> Iterator[np.ndarray]:
        wanted = np.asarray(indices)
        if np.any(np.diff(wanted) <= 0):
            raise ValueError("TfdsSource.iterate needs increasing indices (one pass in order)")
        pos = 0
        for i, wav in enumerate(self._waves()):
            if pos == len(wanted):
                return
            if i != wanted[pos]:
                continue
            pos += 1
            if max_seconds is not None:
                wav = wav[: int(round(max_seconds * self.sample_rate))]
            if not np.all(np.isfinite(wav)) or wav.size == 0:
                raise audio_io.AudioError(f"{self.name(i)}: empty or non-finite audio")
            yield audio_io.resample(wav, self.sample_rate, SAMPLE_RATE)

    def durations(self) -> np.ndarray:
        return np.array([len(w) / self.sample_rate for w in self._waves()])

    def identity(self) -> str:
        return f"tfds:{self.dataset}:{','.join(self.splits)}:{self.data_dir or ''}"


# ---------------------------------------------------------------------------------------------
# Tasks.


@dataclasses.dataclass(frozen=True)
class Fold:
    """One train/valid/test assignment: indices into the task's clips."""

    name: str
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)}


@dataclasses.dataclass
class Task:
    """Clips, labels (class ids [N], or multi-hot [N, C] when multi-label) and folds."""

    spec: str
    source: FileSource | SyntheticSource | TfdsSource
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


def stratified_split(strata: Sequence, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Splits positions 0..N-1 into len(fractions)+1 parts, stratified, with a seeded shuffle.

    Part k gets round(fractions[k] * N) items in all, shared among the strata in proportion
    to their sizes (largest remainders); the last part (training) gets the rest, and every
    stratum keeps at least one item there.
    """
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    keys = sorted(set(strata.tolist()), key=str)
    members = [np.flatnonzero(strata == s) for s in keys]
    members = [idx[rng.permutation(len(idx))] for idx in members]
    sizes = np.array([len(m) for m in members])
    left = sizes - 1  # items each stratum can still give away
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    start = np.zeros(len(keys), np.int64)
    for k, frac in enumerate(fractions):
        quota = frac * sizes
        take = np.minimum(np.floor(quota).astype(np.int64), left)
        extra = int(round(frac * len(strata))) - int(take.sum())
        # hand the remaining items to the largest remainders (random tie-break)
        order = np.lexsort((rng.random(len(keys)), -(quota - np.floor(quota))))
        for j in order:
            if extra <= 0:
                break
            if take[j] < left[j]:
                take[j] += 1
                extra -= 1
        for j, idx in enumerate(members):
            parts[k].extend(idx[start[j] : start[j] + take[j]].tolist())
        start += take
        left -= take
    for j, idx in enumerate(members):
        parts[-1].extend(idx[start[j] :].tolist())
    return [np.sort(np.asarray(p, np.int64)) for p in parts]


def _encode_labels(raw: Sequence[str], where: str) -> tuple[np.ndarray, list[str], bool]:
    raw = [str(r).strip() for r in raw]
    empty = [i for i, r in enumerate(raw) if not r]
    if empty:
        raise TaskError(
            f"{where}: empty label in {len(empty)} row(s), first at data row {empty[0] + 1}"
        )
    multilabel = any(";" in r for r in raw)
    if multilabel:
        sets = [[t.strip() for t in r.split(";") if t.strip()] for r in raw]
        names = sorted({t for s in sets for t in s})
        index = {n: k for k, n in enumerate(names)}
        y = np.zeros((len(raw), len(names)), np.int32)
        for i, s in enumerate(sets):
            y[i, [index[t] for t in s]] = 1
        return y, names, True
    names = sorted(set(raw))
    index = {n: k for k, n in enumerate(names)}
    return np.array([index[r] for r in raw], np.int64), names, False


def _classes_present(task: Task, idx: np.ndarray) -> set[int]:
    if task.multilabel:
        return set(np.flatnonzero(task.y[idx].sum(0) > 0).tolist())
    return set(task.y[idx].tolist())


def _check_folds(task: Task, where: str) -> Task:
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


def _valid_from_train(
    train: np.ndarray, strata: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    # at least one validation clip: early stopping needs a validation score
    frac = max(VALID_FRACTION, 1.0 / len(train)) if len(train) >= 2 else 0.0
    valid, rest = stratified_split(strata[train], [frac], seed)
    return train[rest], train[valid]


def _strata(y: np.ndarray, multilabel: bool) -> np.ndarray:
    # Multi-label clips are stratified by their full label set.
    if multilabel:
        return np.array([";".join(map(str, np.flatnonzero(r))) for r in y])
    return y


def load_csv_task(path: str, label: str = "label", seed: int = 0) -> Task:
    if not os.path.isfile(path):
        raise TaskError(f"task CSV not found: {path}")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
        columns = list(rows[0].keys()) if rows else []
    if not rows:
        raise TaskError(f"{path}: no data rows")
    for col in ("file", label):
        if col not in columns:
            what = "label column" if col == label else "column"
            raise TaskError(f"{path}: no {what} {col!r}; available columns: {columns}")
    if "split" not in columns and "fold" not in columns:
        raise TaskError(
            f"{path}: needs a 'split' (train/valid/test) or a 'fold' column; "
            f"available columns: {columns}"
        )
    base = os.path.dirname(os.path.abspath(path))
    files = [os.path.join(base, r["file"]) for r in rows]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise TaskError(f"{path}: {len(missing)} audio file(s) not found, e.g. {missing[:3]}")
    y, names, multilabel = _encode_labels([r[label] for r in rows], f"{path} column {label!r}")
    strata = _strata(y, multilabel)
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
            train, valid = _valid_from_train(train, strata, seed)
        folds = [Fold("split", train, valid, test)]
    else:
        fold_ids = [str(r["fold"]).strip() for r in rows]
        order = sorted(
            set(fold_ids), key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v)
        )
        if len(order) < 2:
            raise TaskError(
                f"{path}: column 'fold' has a single value {order}; leave-one-fold-"
                "out needs at least two folds"
            )
        fold_ids = np.array(fold_ids)
        folds = []
        for k, fv in enumerate(order):
            test = np.flatnonzero(fold_ids == fv)
            train, valid = _valid_from_train(np.flatnonzero(fold_ids != fv), strata, seed + k)
            folds.append(Fold(f"fold{fv}", train, valid, test))
    task = Task(f"csv:{path}", FileSource(files), y, names, multilabel, folds, label)
    return _check_folds(task, path)


def load_folder_task(root: str, seed: int = 0) -> Task:
    if not os.path.isdir(root):
        raise TaskError(f"task folder not found: {root}")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise TaskError(f"{root}: no class sub-folders (expected DIR/<class>/<audio files>)")
    files, labels = [], []
    for k, c in enumerate(classes):
        found = sorted(
            os.path.join(dp, f)
            for dp, _, fs in os.walk(os.path.join(root, c))
            for f in fs
            if audio_io.is_audio_file(f)
        )
        if not found:
            raise TaskError(
                f"{os.path.join(root, c)}: class folder without audio files "
                f"(extensions {sorted(audio_io.AUDIO_EXTENSIONS)})"
            )
        files += found
        labels += [k] * len(found)
    y = np.array(labels, np.int64)
    valid, test, train = stratified_split(y, [FOLDER_RATIOS[1], FOLDER_RATIOS[2]], seed)
    task = Task(
        f"folder:{root}", FileSource(files), y, classes, False, [Fold("split", train, valid, test)]
    )
    return _check_folds(task, root)


def load_synthetic_task(
    n: int = SYNTHETIC_CLIPS, seed: int = 0, seconds: float = SYNTHETIC_SECONDS
) -> Task:
    src = SyntheticSource(n, seconds=seconds)
    y = src.labels()
    valid, test, train = stratified_split(y, [FOLDER_RATIOS[1], FOLDER_RATIOS[2]], seed)
    task = Task(
        f"synthetic:{n}",
        src,
        y,
        list(synthetic.CLASS_NAMES),
        False,
        [Fold("split", train, valid, test)],
    )
    return _check_folds(task, "synthetic")


def load_tfds_task(
    name: str,
    label: str = "label",
    audio_key: str = "audio",
    seed: int = 0,
    data_dir: str | None = None,
) -> Task:
    import tensorflow_datasets as tfds

    tensorflow()
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises several types for unknown names
        raise TaskError(f"tfds:{name}: cannot open the dataset ({e})") from e
    info = builder.info
    features = info.features
    for key, what in ((audio_key, "audio feature"), (label, "label feature")):
        if key not in features:
            raise TaskError(f"tfds:{name}: no {what} {key!r}; features: {sorted(features)}")
    split_names = list(info.splits)
    if "train" not in split_names or "test" not in split_names:
        raise TaskError(f"tfds:{name}: needs 'train' and 'test' splits; has {split_names}")
    valid_name = next((s for s in ("validation", "valid", "val") if s in split_names), None)
    splits = ["train"] + ([valid_name] if valid_name else []) + ["test"]
    raw, counts = [], []
    for s in splits:
        ds = tfds.load(
            name,
            split=s,
            data_dir=data_dir,
            shuffle_files=False,
            decoders={audio_key: tfds.decode.SkipDecoding()},
        )
        values = [np.asarray(v).item() for v in tfds.as_numpy(ds.map(lambda e: e[label]))]
        raw += values
        counts.append(len(values))
    feature = features[label]
    if hasattr(feature, "names"):
        names = list(feature.names)
        y = np.array(raw, np.int64)
    else:
        y, names, _ = _encode_labels(
            [v.decode() if isinstance(v, bytes) else v for v in raw],
            f"tfds:{name} feature {label!r}",
        )
    sr = getattr(features[audio_key], "sample_rate", None) or SAMPLE_RATE
    src = TfdsSource(name, splits, counts, audio_key, sr, data_dir)
    offsets = np.cumsum([0] + counts)
    parts = {s: np.arange(offsets[k], offsets[k + 1]) for k, s in enumerate(splits)}
    train, test = parts["train"], parts["test"]
    if valid_name:
        valid = parts[valid_name]
    else:
        train, valid = _valid_from_train(train, y, seed)
    task = Task(f"tfds:{name}", src, y, names, False, [Fold("split", train, valid, test)], label)
    return _check_folds(task, f"tfds:{name}")


def parse_task(
    spec: str,
    *,
    label: str = "label",
    seed: int = 0,
    audio_key: str = "audio",
    tfds_data_dir: str | None = None,
) -> Task:
    """Builds a Task from a spec (see the module docstring)."""
    kind, _, arg = spec.partition(":")
    if kind == "csv" and arg:
        return load_csv_task(arg, label=label, seed=seed)
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
    base = os.path.dirname(os.path.abspath(path))
    cols = (
        ["file", "label"]
        + (["split"] if splits is not None else [])
        + (["fold"] if folds is not None else [])
    )
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for i, (p, lab) in enumerate(zip(files, labels, strict=True)):
            row = [os.path.relpath(os.path.abspath(p), base), lab]
            row += [splits[i]] if splits is not None else []
            row += [folds[i]] if folds is not None else []
            w.writerow(row)
    return path
