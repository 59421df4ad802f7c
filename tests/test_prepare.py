"""prepare.py: lms shards + manifest, exact corpus statistics, resumability, lms source."""

import json
import os
import shutil

import librosa
import numpy as np
import pytest
import soundfile as sf
from reference import librosa_log_mel

from configs.msm_mae import get_config
from msm_mae_jax.cli import prepare as prepare_cli
from msm_mae_jax.core.errors import DataError
from msm_mae_jax.data import lms_shards, prepare
from msm_mae_jax.data import pipeline as ip

NAMES = [
    "0_jackson_0.wav",
    "1_jackson_0.wav",
    "2_nicolas_0.wav",
    "3_theo_0.wav",
    "4_yweweler_0.wav",
]


@pytest.fixture
def corpus(fsdd_dir, tmp_path):
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    for i, n in enumerate(NAMES):
        shutil.copy(fsdd_dir / n, (root / "sub" if i % 2 else root) / n)
    (root / "broken.wav").write_text("not audio")
    return root


def test_prepare_writes_shards_manifest_and_exact_stats(corpus, tmp_path):
    out = tmp_path / "lms"
    m = prepare.prepare(
        str(corpus), str(out), shard_size=2, workers=1, dtype="float32", progress=False
    )
    assert [s["name"] for s in m["shards"]] == [prepare.shard_name(k, 3) for k in range(3)]
    assert m["num_records"] == 5 and [s["path"] for s in m["skipped"]] == ["broken.wav"]
    assert "broken.wav" in m["skipped"][0]["reason"]
    assert json.loads((out / "manifest.json").read_text()) == m
    refs = {}
    for f in m["files"]:
        wav, _ = librosa.load(corpus / f["path"], sr=16000, res_type="soxr_hq")
        refs[f["path"]] = librosa_log_mel(wav)
        assert f["frames"] == refs[f["path"]].shape[1]
    values = np.concatenate([r.ravel() for r in refs.values()])
    assert m["norm_stats"]["mean"] == pytest.approx(values.mean(), abs=1e-3)
    assert m["norm_stats"]["std"] == pytest.approx(values.std(), abs=1e-3)
    # Records hold the log-mel of each file.
    import tensorflow as tf

    frames = {f["path"]: f["frames"] for f in m["files"]}
    n = 0
    for rec in tf.data.TFRecordDataset([str(out / s["name"]) for s in m["shards"]]):
        lms, path = lms_shards.parse_lms_record(rec, "float32")
        path = path.numpy().decode()
        assert lms.shape[1] == frames[path]
        np.testing.assert_allclose(lms.numpy(), refs[path], atol=2e-3)
        n += 1
    assert n == 5


def test_prepare_resumes_only_missing_shards(corpus, tmp_path):
    out = tmp_path / "lms"
    prepare.prepare(str(corpus), str(out), shard_size=2, workers=1, progress=False)
    names = [prepare.shard_name(k, 3) for k in range(3)]
    before = {n: os.stat(out / n).st_mtime_ns for n in names}
    os.remove(out / names[1])
    with open(out / names[2], "ab") as f:  # a torn write: size no longer matches its marker
        f.write(b"x")
    m = prepare.prepare(str(corpus), str(out), shard_size=2, workers=1, progress=False)
    after = {n: os.stat(out / n).st_mtime_ns for n in names}
    assert after[names[0]] == before[names[0]]
    assert after[names[1]] != before[names[1]] and after[names[2]] != before[names[2]]
    assert m["num_records"] == 5 and not list(out.glob("*.tmp"))


def test_lms_source_trains_resumes_and_uses_manifest_stats(corpus, tmp_path):
    out = tmp_path / "lms"
    m = prepare.prepare(str(corpus), str(out), shard_size=2, workers=1, progress=False)
    c = get_config("tiny")
    c.batch_size, c.model.input_size = 2, (80, 32)
    c.data.source, c.data.shuffle_buffer = f"lms:{out}", 4
    assert ip.count_clips(c) == 5
    stats = ip.compute_norm_stats(c)
    assert stats.to_dict() == m["norm_stats"]
    it = ip.train_iterator(c, stats)
    a = [next(it)["lms"] for _ in range(4)]  # crosses the epoch boundary (5 records)
    assert all(x.shape == (2, 1, 80, 32) and np.isfinite(x).all() for x in a)
    resumed = ip.train_iterator(c, stats, start_step=3)
    np.testing.assert_array_equal(next(resumed)["lms"], a[3])
    # Hosts: 3 shards over 2 processes -> shards {0, 2} and {1} (which lost broken.wav).
    counts = [s["num_records"] for s in m["shards"]]
    assert counts == [2, 1, 2]
    assert ip.train_iterator(c, stats, process_index=0, process_count=2).num_local == 4
    assert ip.train_iterator(c, stats, process_index=1, process_count=2).num_local == 1
    # Crops longer than every clip: whole clips, their frames as the manifest lists them.
    c.model.input_size = (80, 128)
    it = ip.train_iterator(c, stats)
    seen = [t for _ in range(5) for t in next(it)["frames"]]  # 10 crops = 2 epochs
    assert sorted(seen) == sorted(2 * [f["frames"] for f in m["files"]])


def test_prepare_cli_and_errors(tmp_path, capsys):
    root = tmp_path / "a"
    root.mkdir()
    sf.write(root / "x.wav", 0.1 * np.sin(np.arange(8000) / 5), 16000)
    assert prepare_cli.main([str(root), str(tmp_path / "o"), "--workers", "1"]) == 0
    assert "1 clips in 1 shard(s)" in capsys.readouterr().out
    bad = tmp_path / "b"
    bad.mkdir()
    (bad / "y.wav").write_bytes(b"")
    assert prepare_cli.main([str(bad), str(tmp_path / "o2"), "--workers", "1"]) == 2
    assert "none of the 1 audio file(s) is usable" in capsys.readouterr().err
    with pytest.raises(DataError, match="no manifest.json"):
        lms_shards.read_manifest(str(tmp_path))
