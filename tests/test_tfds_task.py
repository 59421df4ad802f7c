"""`tfds:NAME` evaluation tasks over a small TFDS dataset built offline from FSDD wavs: the
clips, labels and splits match the source files, and the logmel linear evaluation runs on it
with the same features as the equivalent CSV task."""

import shutil

import numpy as np
import pytest

from msm_mae_jax.data import audio_io
from msm_mae_jax.data.tfds_audio_folder import build_audio_folder
from msm_mae_jax.evaluation import embeddings, linear
from msm_mae_jax.evaluation.protocol import Model, Protocol
from msm_mae_jax.tasks import specs, task_audio

DIGITS = ("0", "1", "2")


def _copy(fsdd_dir, dst, speaker, takes):
    dst.mkdir(parents=True)
    names = [f"{d}_{speaker}_{t}.wav" for d in DIGITS for t in takes]
    for n in names:
        shutil.copy(fsdd_dir / n, dst / n)
    return names


def _build(fsdd_dir, tmp_path, splits):
    """Folder root/<split>/ of FSDD digits 0-2 -> a TFDS data_dir; {split: file names}."""
    root = tmp_path / "src"
    files = {s: _copy(fsdd_dir, root / s, "jackson", takes) for s, takes in splits.items()}
    data_dir = tmp_path / "tfds"
    build_audio_folder(str(root), str(data_dir), label_from="prefix")
    return root, str(data_dir), files


def _identify(task, root, files):
    """Source file (split/name) of every clip, matched on the decoded samples."""
    ref = {
        f"{s}/{n}": audio_io.load_audio(str(root / s / n))
        for s, names in files.items()
        for n in names
    }
    found = []
    for wav in task.source.iterate(range(len(task))):
        hits = [k for k, r in ref.items() if r.shape == wav.shape and np.array_equal(r, wav)]
        assert len(hits) == 1, (len(hits), wav.shape)
        found.append(hits[0])
    return found


def test_tfds_task_with_train_and_test_splits(fsdd_dir, tmp_path):
    root, data_dir, files = _build(fsdd_dir, tmp_path, {"train": range(6), "test": range(6, 8)})
    task = specs.parse_task("tfds:audio_folder", tfds_data_dir=data_dir, seed=0)
    assert task.spec == "tfds:audio_folder" and not task.multilabel
    assert len(task) == 24 and task.class_names == list(DIGITS)
    clip_of = _identify(task, root, files)
    assert sorted(clip_of) == sorted(f"{s}/{n}" for s, ns in files.items() for n in ns)
    # Labels: the digit before the first '_' of each clip's file name.
    assert [task.class_names[y] for y in task.y] == [c.split("/")[1][0] for c in clip_of]
    (fold,) = task.folds
    split_of = np.array([c.split("/")[0] for c in clip_of])
    assert (split_of[fold.test] == "test").all() and len(fold.test) == 6
    # No validation split in the dataset: a stratified 10 % of train is held out.
    assert (split_of[np.concatenate([fold.train, fold.valid])] == "train").all()
    assert len(fold.train) + len(fold.valid) == 18 and len(fold.valid) > 0
    assert not set(fold.train) & set(fold.valid)
    assert set(task.y[fold.train]) == {0, 1, 2}
    # Durations are unknown without decoding the dataset: unit_sec must be given.
    with pytest.raises(ValueError, match="give unit_sec"):
        task_audio.default_unit_sec(task)

    res = linear.evaluate(
        task,
        Model(baseline="logmel"),
        Protocol(seeds=(0, 1)),
        unit_sec=1.0,
        cache_dir=None,
        progress=False,
        log=lambda m: None,
    )
    assert res["clips"] == {"train": len(fold.train), "valid": len(fold.valid), "test": 6}
    assert res["feature_dim"] == 160
    assert res["task"]["spec"] == "tfds:audio_folder"

    # The same clips as a CSV task (same order, same splits): identical logmel features.
    split_names = np.full(len(task), "train", dtype=object)
    split_names[fold.valid], split_names[fold.test] = "valid", "test"
    csv = specs.write_csv(
        str(tmp_path / "same.csv"),
        [str(root / c) for c in clip_of],
        [c.split("/")[1][0] for c in clip_of],
        splits=list(split_names),
    )
    csv_task = specs.parse_task(f"csv:{csv}")
    np.testing.assert_array_equal(csv_task.y, task.y)
    kw = dict(baseline="logmel", unit_sec=1.0, cache_dir=None, progress=False, log=lambda m: None)
    (f_tfds,) = embeddings.extract(task, **kw)[0].values()
    (f_csv,) = embeddings.extract(csv_task, **kw)[0].values()
    np.testing.assert_allclose(f_tfds, f_csv, rtol=0, atol=1e-5)
    # and the same probe results: the accuracy is that of the clips' own labels and splits.
    # (Six test clips and 16 training clips, one probe step an epoch: too few for a bar above
    # chance; the digits themselves are probed in test_evaluation.)
    want = linear.probe_features(csv_task, f_csv, seeds=(0, 1))
    np.testing.assert_allclose(res["accuracy"]["per_seed"], want["per_seed"], atol=1e-6)
    assert res["accuracy"]["best_epochs"] == want["best_epochs"]


def test_tfds_task_validation_split_and_errors(fsdd_dir, tmp_path):
    splits = {"train": range(3), "validation": range(3, 4), "test": range(4, 5)}
    root, data_dir, files = _build(fsdd_dir, tmp_path, splits)
    task = specs.parse_task("tfds:audio_folder", tfds_data_dir=data_dir)
    clip_of = np.array([c.split("/")[0] for c in _identify(task, root, files)])
    (fold,) = task.folds
    assert fold.sizes() == {"train": 9, "valid": 3, "test": 3}
    for part, name in ((fold.train, "train"), (fold.valid, "validation"), (fold.test, "test")):
        assert (clip_of[part] == name).all(), name
    with pytest.raises(specs.TaskError, match="label feature 'speaker'"):
        specs.parse_task("tfds:audio_folder", label="speaker", tfds_data_dir=data_dir)
    with pytest.raises(specs.TaskError, match="audio feature 'wave'"):
        specs.parse_task("tfds:audio_folder", audio_key="wave", tfds_data_dir=data_dir)
    with pytest.raises(specs.TaskError, match="tfds:no_such_dataset"):
        specs.parse_task("tfds:no_such_dataset", tfds_data_dir=data_dir)


def test_tfds_task_without_test_split_is_refused(fsdd_dir, tmp_path):
    _, data_dir, _ = _build(fsdd_dir, tmp_path, {"train": range(1)})
    with pytest.raises(specs.TaskError, match="needs 'train' and 'test' splits"):
        specs.parse_task("tfds:audio_folder", tfds_data_dir=data_dir)
