"""Task parsing: csv (split / fold, EVAR metadata CSVs), folder and synthetic specs, and their
errors."""

import os

import numpy as np
import pytest
import soundfile as sf

from msm_mae_jax.data.sources import FileSource
from msm_mae_jax.tasks import specs


def _wav(path, seconds=0.2, sr=16000, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    sf.write(path, (0.1 * rng.normal(size=int(seconds * sr))).astype(np.float32), sr)
    return path


def _files(tmp_path, n, sub="audio"):
    return [_wav(str(tmp_path / sub / f"c{i}.wav"), seed=i) for i in range(n)]


def test_stratified_split_is_seeded_and_stratified():
    y = np.repeat(np.arange(3), [10, 20, 30])
    valid, test, train = specs.stratified_split(y, [0.1, 0.2], seed=0)
    assert sorted(np.concatenate([valid, test, train]).tolist()) == list(range(60))
    for c, n in enumerate([10, 20, 30]):
        assert np.sum(y[valid] == c) == round(0.1 * n)
        assert np.sum(y[test] == c) == round(0.2 * n)
    again = specs.stratified_split(y, [0.1, 0.2], seed=0)
    other = specs.stratified_split(y, [0.1, 0.2], seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(again, [valid, test, train], strict=True))
    assert not np.array_equal(other[1], test)
    # a singleton class stays in the last (training) part
    v, t, tr = specs.stratified_split(np.array([0, 0, 0, 0, 0, 1]), [0.5, 0.5], seed=0)
    assert 5 in tr


def test_csv_split_column(tmp_path):
    files = _files(tmp_path, 12)
    labels = ["a", "b"] * 6
    splits = ["train"] * 6 + ["val"] * 2 + ["test"] * 4
    path = specs.write_csv(str(tmp_path / "task.csv"), files, labels, splits=splits)
    with open(path) as f:
        assert "audio/c0.wav" in f.read()  # stored relative to the CSV
    task = specs.parse_task(f"csv:{path}")
    assert task.class_names == ["a", "b"] and not task.multilabel
    (fold,) = task.folds
    assert fold.sizes() == {"train": 6, "valid": 2, "test": 4}
    np.testing.assert_array_equal(fold.test, [8, 9, 10, 11])
    assert task.source.name(0) == files[0]
    np.testing.assert_array_equal(task.y, [0, 1] * 6)


def test_csv_without_valid_holds_out_ten_percent_of_train(tmp_path):
    files = _files(tmp_path, 60)
    labels = [str(i % 3) for i in range(60)]
    splits = ["train"] * 50 + ["test"] * 10
    path = specs.write_csv(str(tmp_path / "t.csv"), files, labels, splits=splits)
    (fold,) = specs.parse_task(f"csv:{path}", seed=3).folds
    assert len(fold.valid) == 5 and len(fold.train) == 45
    assert set(fold.valid) | set(fold.train) == set(range(50))
    assert max(np.bincount(np.array(labels, int)[fold.valid])) <= 2  # stratified


def test_csv_folds_leave_one_out(tmp_path):
    files = _files(tmp_path, 40)
    labels = [["x", "y"][i % 2] for i in range(40)]
    folds = [1 + (i // 2) % 4 for i in range(40)]
    path = specs.write_csv(str(tmp_path / "f.csv"), files, labels, folds=folds)
    task = specs.parse_task(f"csv:{path}")
    assert [f.name for f in task.folds] == ["fold1", "fold2", "fold3", "fold4"]
    for k, fold in enumerate(task.folds):
        np.testing.assert_array_equal(fold.test, np.flatnonzero(np.array(folds) == k + 1))
        rest = set(range(40)) - set(fold.test)
        assert set(fold.train) | set(fold.valid) == rest
        assert len(fold.valid) == 3  # 10% of the 30 training clips
    np.testing.assert_array_equal(task.train_union, np.arange(40))


def test_csv_multilabel(tmp_path):
    files = _files(tmp_path, 8)
    labels = ["dog;cat", "cat", "bird", "dog", "cat;bird", "dog", "cat", "bird;dog"]
    splits = ["train"] * 5 + ["valid", "test", "test"]
    path = specs.write_csv(str(tmp_path / "m.csv"), files, labels, splits=splits)
    task = specs.parse_task(f"csv:{path}")
    assert task.multilabel and task.class_names == ["bird", "cat", "dog"]
    np.testing.assert_array_equal(task.y[0], [0, 1, 1])
    np.testing.assert_array_equal(task.y[7], [1, 0, 1])


def test_csv_errors_name_the_problem(tmp_path):
    files = _files(tmp_path, 6)
    path = str(tmp_path / "e.csv")
    with pytest.raises(specs.TaskError, match="task CSV not found"):
        specs.parse_task(f"csv:{tmp_path / 'nope.csv'}")
    specs.write_csv(path, files, ["a", "b"] * 3, splits=["train"] * 4 + ["test"] * 2)
    with pytest.raises(specs.TaskError, match=r"no label column 'speaker'.*\['file', 'label'"):
        specs.parse_task(f"csv:{path}", label="speaker")
    specs.write_csv(
        path,
        files[:5] + [str(tmp_path / "gone.wav")],
        ["a", "b"] * 3,
        splits=["train"] * 4 + ["test"] * 2,
    )
    with pytest.raises(specs.TaskError, match="gone.wav"):
        specs.parse_task(f"csv:{path}")
    specs.write_csv(
        path, files, ["a", "a", "a", "a", "b", "a"], splits=["train"] * 3 + ["valid"] + ["test"] * 2
    )
    with pytest.raises(specs.TaskError, match=r"\['b'\] occur in the test split"):
        specs.parse_task(f"csv:{path}")
    specs.write_csv(path, files, ["a", "b"] * 3, splits=["train"] * 6)
    with pytest.raises(specs.TaskError, match="test split of split is empty"):
        specs.parse_task(f"csv:{path}")
    specs.write_csv(path, files, ["a", "b"] * 3, splits=["train"] * 4 + ["dev"] * 2)
    with pytest.raises(specs.TaskError, match="'dev'"):
        specs.parse_task(f"csv:{path}")
    specs.write_csv(path, files, ["a", "b"] * 3)
    with pytest.raises(specs.TaskError, match="'split'.*'fold'"):
        specs.parse_task(f"csv:{path}")
    with pytest.raises(specs.TaskError, match="unknown task spec"):
        specs.parse_task("mp3:/x")


def test_folder_task(tmp_path):
    root = tmp_path / "data"
    for c, n in (("cow", 10), ("owl", 20)):
        for i in range(n):
            _wav(str(root / c / ("sub" if i % 2 else "") / f"{i}.wav"), seed=i)
    (root / "owl" / "notes.txt").write_text("not audio")
    task = specs.parse_task(f"folder:{root}", seed=0)
    assert task.class_names == ["cow", "owl"] and len(task) == 30
    (fold,) = task.folds
    assert fold.sizes() == {"train": 21, "valid": 3, "test": 6}
    assert np.sum(task.y[fold.test] == 0) == 2 and np.sum(task.y[fold.test] == 1) == 4
    (root / "empty").mkdir()
    with pytest.raises(specs.TaskError, match="empty: class folder without audio"):
        specs.parse_task(f"folder:{root}")
    with pytest.raises(specs.TaskError, match="task folder not found"):
        specs.parse_task(f"folder:{tmp_path / 'missing'}")


def test_synthetic_task_and_file_source(tmp_path):
    task = specs.parse_task("synthetic:60")
    assert len(task) == 60 and task.num_classes == 6
    (fold,) = task.folds
    assert fold.sizes() == {"train": 42, "valid": 6, "test": 12}
    wavs = list(task.source.iterate([0, 7], max_seconds=0.5))
    assert [len(w) for w in wavs] == [8000, 8000]
    # file sources read at 16 kHz and change identity when a file changes
    path = _wav(str(tmp_path / "a" / "x.wav"), seconds=0.5, sr=8000)
    src = FileSource([path])
    (wav,) = src.iterate([0])
    assert len(wav) == 8000 and src.durations()[0] == pytest.approx(0.5)
    ident = src.identity()
    _wav(path, seconds=0.6, sr=8000)
    assert src.identity() != ident


def _write_rows(path, header, rows, bom=False):
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
        f.write(",".join(header) + "\n")
        for r in rows:
            f.write(",".join(str(v) for v in r) + "\n")
    return str(path)


def test_evar_metadata_csv_with_index_column_and_audio_dir(tmp_path):
    # EVAR's evar/metadata/<task>.csv: a leading unnamed pandas index, `file_name` relative to
    # the task's audio folder (work/16k/<task>/), extra columns; the CSV lives elsewhere.
    audio_dir = tmp_path / "work" / "16k" / "cremad"
    files = [_wav(str(audio_dir / f"spk{i % 3}" / f"{i}.wav"), seed=i) for i in range(12)]
    rel = [os.path.relpath(f, audio_dir) for f in files]
    labels = ["ANG", "HAP"] * 6
    splits = ["train"] * 6 + ["valid"] * 2 + ["test"] * 4
    meta = tmp_path / "evar" / "metadata"
    meta.mkdir(parents=True)
    rows = [(i, *r, i % 3, s) for i, (*r, s) in enumerate(zip(rel, labels, splits, strict=True))]
    path = _write_rows(meta / "cremad.csv", ["", "file_name", "label", "speaker_id", "split"], rows)
    task = specs.parse_task(f"csv:{path}", audio_dir=str(audio_dir))
    assert [task.source.name(i) for i in range(12)] == files
    assert task.class_names == ["ANG", "HAP"] and task.folds[0].sizes()["valid"] == 2
    np.testing.assert_array_equal(task.y, [0, 1] * 6)
    # Without audio_dir the paths are relative to the CSV's folder: the error names the
    # column and the folder it looked in.
    with pytest.raises(
        specs.TaskError, match=rf"12 audio file\(s\) of column 'file_name' .*{meta}"
    ):
        specs.parse_task(f"csv:{path}")
    with pytest.raises(specs.TaskError, match="audio_dir .*nowhere is not a folder"):
        specs.parse_task(f"csv:{path}", audio_dir=str(tmp_path / "nowhere"))


def test_csv_file_column_choice_and_errors(tmp_path):
    files = _files(tmp_path, 6)
    labels, splits = ["a", "b"] * 3, ["train"] * 4 + ["test"] * 2
    both = [(f, "/missing.wav", y, s) for f, y, s in zip(files, labels, splits, strict=True)]
    path = _write_rows(tmp_path / "both.csv", ["file", "file_name", "label", "split"], both)
    assert specs.parse_task(f"csv:{path}").source.name(0) == files[0]  # `file` first
    with pytest.raises(specs.TaskError, match=r"file_name' not found .*missing\.wav"):
        specs.parse_task(f"csv:{path}", file_column="file_name")
    rows = list(zip(files, labels, splits, strict=True))
    path = _write_rows(tmp_path / "path.csv", ["path", "label", "split"], rows)
    assert specs.parse_task(f"csv:{path}", file_column="path").source.name(5) == files[5]
    with pytest.raises(
        specs.TaskError,
        match=r"path\.csv: no file column \(looked for \['file', 'file_name'\].*"
        r"columns: \['path', 'label', 'split'\]",
    ):
        specs.parse_task(f"csv:{path}")
    with pytest.raises(specs.TaskError, match=r"no file column 'wav'; available columns: \['path'"):
        specs.parse_task(f"csv:{path}", file_column="wav")
    with pytest.raises(specs.TaskError, match="apply to csv: tasks only"):
        specs.parse_task("synthetic:12", audio_dir=str(tmp_path))


def test_csv_with_utf8_byte_order_mark(tmp_path):
    files = _files(tmp_path, 6)
    rows = list(zip(files, ["é", "ü"] * 3, ["train"] * 4 + ["test"] * 2, strict=True))
    path = _write_rows(tmp_path / "bom.csv", ["file", "label", "split"], rows, bom=True)
    with open(path, "rb") as f:
        assert f.read(3) == b"\xef\xbb\xbf"
    task = specs.parse_task(f"csv:{path}")  # the header's first column is `file`, not BOM+file
    assert task.class_names == ["é", "ü"] and len(task) == 6


def test_a_single_class_is_an_error_naming_task_and_class(tmp_path):
    files = _files(tmp_path, 6)
    path = specs.write_csv(
        str(tmp_path / "one.csv"), files, ["dog"] * 6, splits=["train"] * 4 + ["test"] * 2
    )
    with pytest.raises(
        specs.TaskError, match=rf"task csv:{path} has the class 'dog' \(label 'label'\)"
    ):
        specs.parse_task(f"csv:{path}")
    root = tmp_path / "folder"
    for i in range(10):
        _wav(str(root / "cow" / f"{i}.wav"), seed=i)
    with pytest.raises(specs.TaskError, match=rf"task folder:{root} has the class 'cow'"):
        specs.parse_task(f"folder:{root}")
