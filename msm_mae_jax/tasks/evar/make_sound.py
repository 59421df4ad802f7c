"""Task builders for the sound-event datasets: ESC-50, UrbanSound8K and FSD50K.

Each reads the dataset's own metadata file, keeps its row order (as EVAR's metadata maker
does) and drops the rows whose audio file is absent.
"""

from __future__ import annotations

import os

from msm_mae_jax.tasks.evar.layout import (
    Built,
    DatasetLayoutError,
    find_root,
    list_files,
    read_csv,
)


def esc50(dataset_dir: str) -> Built:
    """ESC-50 (github.com/karolpiczak/ESC-50): `meta/esc50.csv` (filename, fold, category,
    ...) and `audio/<filename>`; label = category, the 5 official folds."""
    root = find_root(
        dataset_dir,
        "meta/esc50.csv",
        ("ESC-50-master",),
        "the ESC-50 release folder ESC-50-master/ with meta/ and audio/",
    )
    meta = read_csv(os.path.join(root, "meta", "esc50.csv"), ("filename", "fold", "category"))
    have = set(list_files(root, "audio"))
    rows = [(f"audio/{r['filename']}", r["category"], r["fold"]) for r in meta]
    return Built(
        root,
        [r for r in rows if r[0] in have],
        "fold",
        "official: the 5 folds of meta/esc50.csv",
    )


def us8k(dataset_dir: str) -> Built:
    """UrbanSound8K: `metadata/UrbanSound8K.csv` (slice_file_name, fold, class, ...) and
    `audio/fold<k>/<slice_file_name>`; label = class, the 10 official folds."""
    root = find_root(
        dataset_dir,
        "metadata/UrbanSound8K.csv",
        ("UrbanSound8K",),
        "the UrbanSound8K release folder with metadata/ and audio/fold1 ... fold10",
    )
    meta = read_csv(
        os.path.join(root, "metadata", "UrbanSound8K.csv"), ("slice_file_name", "fold", "class")
    )
    have = set(list_files(root, "audio"))
    rows = [(f"audio/fold{r['fold']}/{r['slice_file_name']}", r["class"], r["fold"]) for r in meta]
    return Built(
        root,
        [r for r in rows if r[0] in have],
        "fold",
        "official: the 10 folds of metadata/UrbanSound8K.csv",
    )


_FSD_SPLITS = {"train": "train", "val": "valid"}


def fsd50k(dataset_dir: str) -> Built:
    """FSD50K (zenodo.org/record/4060432): `FSD50K.ground_truth/dev.csv` (fname, labels,
    mids, split train/val) and `eval.csv` (test); audio in `FSD50K.dev_audio/` and
    `FSD50K.eval_audio/`. Labels stay comma-separated in one field (multi-label)."""
    root = find_root(
        dataset_dir,
        "FSD50K.ground_truth/dev.csv",
        ("FSD50K",),
        "the folder holding FSD50K.ground_truth/, FSD50K.dev_audio/ and FSD50K.eval_audio/",
    )
    truth = os.path.join(root, "FSD50K.ground_truth")
    if not os.path.exists(os.path.join(truth, "eval.csv")):
        raise DatasetLayoutError(
            f"{dataset_dir}: no FSD50K.ground_truth/eval.csv (expected it beside dev.csv)"
        )
    dev = read_csv(os.path.join(truth, "dev.csv"), ("fname", "labels", "split"))
    test = read_csv(os.path.join(truth, "eval.csv"), ("fname", "labels"))
    rows = []
    for i, r in enumerate(dev, start=2):
        if r["split"] not in _FSD_SPLITS:
            raise DatasetLayoutError(
                f"{os.path.join(truth, 'dev.csv')}: line {i}: split {r['split']!r} "
                "(expected train or val)"
            )
        rows.append((f"FSD50K.dev_audio/{r['fname']}.wav", r["labels"], _FSD_SPLITS[r["split"]]))
    rows += [(f"FSD50K.eval_audio/{r['fname']}.wav", r["labels"], "test") for r in test]
    have = set(list_files(root, "FSD50K.dev_audio")) | set(list_files(root, "FSD50K.eval_audio"))
    kept = [r for r in rows if r[0] in have]
    return Built(
        root,
        kept,
        "split",
        "official: dev.csv train/val -> train/valid, eval.csv -> test",
    )
