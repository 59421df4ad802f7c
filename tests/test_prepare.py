"""prepare.py: lms shards + manifest, exact corpus statistics, resumability, lms source."""

import json
import os
import re
import shutil
import time

import librosa
import numpy as np
import pytest
import soundfile as sf
from fifo import unblock_readers
from reference import librosa_log_mel

from configs.msm_mae import get_config
from msm_mae_jax.cli import prepare as prepare_cli
from msm_mae_jax.core.errors import ConfigError, DataError
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
    # Records: each file's log-mel as raw time-major bytes at the offset the manifest lists,
    # inside valid TFRecord files.
    import tensorflow as tf

    assert m["version"] == lms_shards.MANIFEST_VERSION == 2
    by_shard = {}
    for f in m["files"]:
        nbytes = f["frames"] * 80 * 4
        with open(out / f["shard"], "rb") as fh:
            fh.seek(f["offset"])
            data = fh.read(nbytes)
        lms_TF = np.frombuffer(data, "<f4").reshape(f["frames"], 80)
        np.testing.assert_allclose(lms_TF.T, refs[f["path"]], atol=2e-3)
        by_shard.setdefault(f["shard"], []).append(data)
    for s in m["shards"]:
        records = [r.numpy() for r in tf.data.TFRecordDataset(str(out / s["name"]))]
        assert records == by_shard[s["name"]]


def test_a_fifo_in_the_corpus_is_skipped_and_counted_never_opened(fsdd_dir, tmp_path):
    """Opened, a FIFO blocks until a writer comes: forever. A writer thread ends such a wait
    after a few seconds (the test then fails on the time) instead of blocking the suite."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(fsdd_dir / NAMES[0], src / NAMES[0])
    os.mkfifo(src / "pipe.wav")
    unblock_readers(str(src / "pipe.wav"), 30)
    t0 = time.time()
    m = prepare.prepare(str(src), str(tmp_path / "lms"), shard_size=4, workers=1, progress=False)
    assert time.time() - t0 < 25
    why = f"{src / 'pipe.wav'}: a named pipe (FIFO), not a regular file"
    assert m["num_records"] == 1 and m["skipped"] == [{"path": "pipe.wav", "reason": why}]


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
    # A shard written in an older record format (its marker has no version 2) is rewritten.
    marker = out / (names[0] + ".json")
    marker.write_text(
        json.dumps({k: v for k, v in json.loads(marker.read_text()).items() if k != "version"})
    )
    m = prepare.prepare(str(corpus), str(out), shard_size=2, workers=1, progress=False)
    assert os.stat(out / names[0]).st_mtime_ns != after[names[0]]
    assert json.loads(marker.read_text())["version"] == 2 and m["num_records"] == 5


def _lms_config(out, frames=32, batch=2):
    c = get_config("tiny")
    c.batch_size, c.model.input_size = batch, (80, frames)
    c.data.source, c.data.shuffle_buffer = f"lms:{out}", 4
    c.data.norm_stats_method = "frames"  # the manifest's statistics (of the real frames)
    return c


def test_lms_source_reads_crops_in_the_global_order(corpus, tmp_path):
    out = tmp_path / "lms"
    m = prepare.prepare(str(corpus), str(out), shard_size=2, workers=1, progress=False)
    c = _lms_config(out)
    assert ip.count_clips(c) == 5
    stats = ip.compute_norm_stats(c)
    assert stats.to_dict() == m["norm_stats"]
    it = ip.train_iterator(c, stats)
    first = [next(it) for _ in range(6)]  # crosses epoch boundaries (5 records)
    a = [b["lms"] for b in first]
    assert all(x.shape == (2, 1, 80, 32) and np.isfinite(x).all() for x in a)
    resumed = ip.train_iterator(c, stats, start_step=3)
    np.testing.assert_array_equal(next(resumed)["lms"], a[3])
    # Any process count gives the same global batches (hosts' rows concatenated).
    hosts = [ip.train_iterator(c, stats, process_index=p, process_count=2) for p in (0, 1)]
    assert [h.num_local for h in hosts] == [3, 3]
    for s in range(6):
        np.testing.assert_array_equal(np.concatenate([next(h)["lms"] for h in hosts]), a[s])
    # Every crop is a crop of its clip's stored log-mel: frames of one record, normalised.
    refs = {}
    for f in m["files"]:
        with open(out / f["shard"], "rb") as fh:
            fh.seek(f["offset"])
            raw = np.frombuffer(fh.read(f["frames"] * 160), "<f2").reshape(f["frames"], 80)
        refs[f["path"]] = stats.normalize(raw.T.astype(np.float32))
    frames = np.concatenate([b["frames"] for b in first])
    for x, n in zip(np.concatenate(a)[:, 0], frames, strict=True):
        assert any(
            np.allclose(x[:, :n], r[:, t : t + n], atol=1e-6)
            for r in refs.values()
            for t in range(r.shape[1] - n + 1)
        )
        assert n == 32 or (x[:, n:] == stats.normalize(np.float32(0.0))).all()
    # Crops longer than every clip: whole clips, zero (raw) after their frames.
    c.model.input_size = (80, 128)
    it = ip.train_iterator(c, stats)
    batches = [next(it) for _ in range(5)]  # 10 crops = 2 epochs
    seen = [t for b in batches for t in b["frames"]]
    assert sorted(seen) == sorted(2 * [f["frames"] for f in m["files"]])
    for b in batches:
        for x, t in zip(b["lms"][:, 0], b["frames"], strict=True):
            np.testing.assert_array_equal(x[:, t:], stats.normalize(np.float32(0.0)))
    c.data.logmel_on_device = True
    with pytest.raises(ConfigError, match="logmel_on_device needs an audio source"):
        ip.train_iterator(c, stats)


def _write_version1_corpus(src, dst):
    """The corpus of `src` (version 2) rewritten as version 1 (Example records of [80, T])."""
    import tensorflow as tf

    m = json.loads((src / "manifest.json").read_text())
    dst.mkdir()
    for s in m["shards"]:
        with tf.io.TFRecordWriter(str(dst / s["name"])) as w:
            for f in [f for f in m["files"] if f["shard"] == s["name"]]:
                with open(src / s["name"], "rb") as fh:
                    fh.seek(f["offset"])
                    raw = np.frombuffer(fh.read(f["frames"] * 160), "<f2")
                lms_FT = raw.reshape(f["frames"], 80).T.copy()
                feature = {
                    "lms": tf.train.Feature(
                        bytes_list=tf.train.BytesList(value=[lms_FT.tobytes()])
                    ),
                    "frames": tf.train.Feature(int64_list=tf.train.Int64List(value=[f["frames"]])),
                    "path": tf.train.Feature(
                        bytes_list=tf.train.BytesList(value=[f["path"].encode()])
                    ),
                }
                ex = tf.train.Example(features=tf.train.Features(feature=feature))
                w.write(ex.SerializeToString())
    m["version"] = 1  # version 1 recorded neither offsets nor shard sizes
    for f in m["files"]:
        del f["offset"]
    for s in m["shards"]:
        del s["bytes"]
    (dst / "manifest.json").write_text(json.dumps(m))
    return m


def test_version1_corpus_is_still_read(corpus, tmp_path):
    prepare.prepare(str(corpus), str(tmp_path / "v2"), shard_size=2, workers=1, progress=False)
    m = _write_version1_corpus(tmp_path / "v2", tmp_path / "v1")
    c = _lms_config(tmp_path / "v1")
    stats = ip.compute_norm_stats(c)
    assert stats.to_dict() == m["norm_stats"]
    # The official statistics of records read in order: crops of a seeded pass, with their
    # zero padding (the clips' log-mels are negative: it raises the mean).
    c.data.norm_stats_method, c.data.norm_stats_crops = "official", 6
    official = ip.compute_norm_stats(c)
    assert official.mean > stats.mean and official.std > 0
    it = ip.train_iterator(c, stats)
    a = [next(it)["lms"] for _ in range(4)]  # crosses the epoch boundary (5 records)
    assert all(x.shape == (2, 1, 80, 32) and np.isfinite(x).all() for x in a)
    np.testing.assert_array_equal(next(ip.train_iterator(c, stats, start_step=3))["lms"], a[3])
    # Hosts: 3 shards over 2 processes -> shards {0, 2} and {1} (which lost broken.wav).
    assert [s["num_records"] for s in m["shards"]] == [2, 1, 2]
    assert [
        ip.train_iterator(c, stats, process_index=p, process_count=2).num_local for p in (0, 1)
    ] == [4, 1]
    c.model.input_size = (80, 128)
    it = ip.train_iterator(c, stats)
    seen = [t for _ in range(5) for t in next(it)["frames"]]  # 10 crops = 2 epochs
    assert sorted(seen) == sorted(2 * [f["frames"] for f in m["files"]])


def test_bad_corpora_fail_clearly(corpus, tmp_path):
    out = tmp_path / "lms"
    m = prepare.prepare(str(corpus), str(out), shard_size=8, workers=1, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["version"] = 3
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="manifest version 3 is not one this code reads"):
        ip.count_clips(_lms_config(out))
    manifest["version"] = 2
    (out / "manifest.json").write_text(json.dumps(manifest))
    shard = out / m["shards"][0]["name"]
    size = shard.stat().st_size
    assert m["shards"][0]["bytes"] == size
    shard.write_bytes(shard.read_bytes()[:1000])  # lost its end: crops cannot be read
    c = _lms_config(out, frames=8)
    cut = rf"{re.escape(str(shard))}: 1000 of {size} bytes; the shard is shorter than its manifest"
    with pytest.raises(DataError, match=cut):  # refused when the corpus is opened
        ip.count_clips(c)
    # A manifest without shard sizes: the first crop read past the end names the shard.
    for sh in manifest["shards"]:
        del sh["bytes"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=rf"{re.escape(str(shard))}: \d+ of \d+ bytes at offset"):
        next(ip.train_iterator(c, ip.compute_norm_stats(c)))
    shard.write_bytes(b"x" * (size + 1))
    manifest["shards"][0]["bytes"] = size
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=rf"{re.escape(shard.name)}: {size + 1} bytes, the manif"):
        ip.count_clips(c)


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
