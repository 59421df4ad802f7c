"""gs:// end to end, against a local Cloud Storage emulator (conftest.py starts it; the tests
skip with the reason where the emulator package is missing, and fail where it is installed
but does not start unless MSM_MAE_TEST_ALLOW_NO_GCS=1).

A few FSDD recordings are copied into a bucket and prepared into `lms:` shards there (and the
preparation resumed); training reads them by byte range (`lms:gs://...`) through the real
command with its workdir in the bucket, is killed with SIGKILL half-way and resumed, and ends
bit for bit where an uninterrupted run ends; the encoder is exported to the bucket, loaded
from there with `Runtime`, and evaluated on a task whose CSV and audio are in the bucket.
Alongside, the same training reads the audio files from the bucket (`files:gs://...`); the
HEAR API loads the exported model from the bucket and `embed` writes its `.npz` there.
TensorFlow's own gs:// client (TFDS `data_dir=gs://...`, version-1 `lms:` corpora) cannot be
pointed at an emulator and is not exercised here.
"""

import io
import json
import os
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest
from train_utils import RUN_FLAGS, read_tensorboard, xla_flags

from msm_mae_jax.core import fs, staging
from msm_mae_jax.train import checkpoints, workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 300  # seconds: a run that has not exited by then hangs
STEPS = 7
# test_trainer's SIGKILL runs: the same programs (train_utils.RUN_FLAGS), plus figures
FLAGS = {**RUN_FLAGS, "total_steps": STEPS, "figure_every_steps": 4, "figure_clips": 2}


LABELS = ("0", "1", "2")  # digits present in FSDD and in its stand-in
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
SPLITS = ("train", "train", "train", "train", "valid", "test", "test")  # per label, by take


def _train_cmd(wd: str, **overrides) -> list[str]:
    flags = {**FLAGS, **overrides}
    cmd = [sys.executable, "-m", "msm_mae_jax", "train", "--config", "tiny", "--workdir", wd]
    return cmd + [f"--config.{k}={v}" for k, v in flags.items()]


@pytest.fixture(scope="module")
def env(gcs_emulator_host):
    """One device per process, the emulator's env; the session's compilation cache
    (tests/conftest.py) is inherited."""
    return {
        **os.environ,
        "PYTHONPATH": ROOT,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": xla_flags(1),
    }


@pytest.fixture(scope="module")
def corpus(gcs_emulator_host, fsdd_dir, tmp_path_factory):
    """(bucket, audio URLs, task CSV URL, lms URL): 21 FSDD recordings (3 digits x 7) copied
    into a bucket, a task CSV beside them (paths relative to it), and their `lms:` shards
    prepared into the bucket (the preparation run twice: the second keeps every shard)."""
    import gcs_emulator

    from msm_mae_jax.data import prepare

    bucket = gcs_emulator.make_bucket(gcs_emulator_host, "corpus-fsdd")
    rows, files = ["file,label,split"], []
    for label in LABELS:
        for k, split in enumerate(SPLITS):
            name = f"{label}_{SPEAKERS[k % len(SPEAKERS)]}_{k // len(SPEAKERS)}.wav"
            url = fs.join(bucket, "audio", name)
            fs.copy_file(str(fsdd_dir / name), url)
            files.append(url)
            rows.append(f"../audio/{name},{label},{split}")
    csv = fs.join(bucket, "tasks", "digits.csv")
    fs.write_text(csv, "\n".join(rows) + "\n")
    lms = fs.join(bucket, "lms")
    first = prepare.prepare(fs.join(bucket, "audio"), lms, shard_size=8, workers=1, progress=False)
    markers = {n: fs.stamp(fs.join(lms, n + ".json")) for n in ("lms-00000-of-00003.tfrecord",)}
    again = prepare.prepare(fs.join(bucket, "audio"), lms, shard_size=8, workers=1, progress=False)
    assert again == first
    assert {n: fs.stamp(fs.join(lms, n + ".json")) for n in markers} == markers  # kept
    assert first["num_records"] == len(files) and len(first["shards"]) == 3
    return bucket, files, csv, lms


@pytest.fixture
def memory_url():
    """A fresh memory:// folder (fsspec's in-process filesystem: URLs without a server)."""
    import uuid

    url = f"memory://t{uuid.uuid4().hex[:8]}"
    yield url
    fs.rmtree(url)


def test_lms_crops_read_from_a_url_equal_local_reads(fsdd_dir, tmp_path, memory_url):
    """The same crops, byte for byte, from local shards (os.preadv) and from their copy at a
    URL (one batch of concurrent ranged reads)."""
    from msm_mae_jax.data import prepare
    from msm_mae_jax.data.lms_shards import _CropReader, read_manifest

    names = sorted(p.name for p in fsdd_dir.glob("[012]_*_[01].wav"))[:12]
    audio = tmp_path / "audio"
    audio.mkdir()
    for n in names:
        (audio / n).write_bytes((fsdd_dir / n).read_bytes())
    local = str(tmp_path / "lms")
    prepare.prepare(str(audio), local, shard_size=5, workers=1, progress=False)
    staging.upload_dir(local, memory_url)
    a = _CropReader(local, read_manifest(local), seed=3, frames=48)
    b = _CropReader(memory_url, read_manifest(memory_url), seed=3, frames=48)
    assert b.remote and not a.remote
    pos_B = np.arange(100, 124)
    idx_B = np.random.default_rng(0).integers(0, len(names), len(pos_B))
    (xa, na), (xb, nb) = a(pos_B, idx_B), b(pos_B, idx_B)
    np.testing.assert_array_equal(na, nb)
    np.testing.assert_array_equal(xa.view(np.uint16), xb.view(np.uint16))
    assert len(set(idx_B.tolist())) > 5 and (na > 0).all()


def test_audio_reads_from_a_url_equal_local_reads(fsdd_dir, memory_url):
    """Headers, whole clips and spans of a clip at a URL read as the local file reads."""
    from msm_mae_jax.data import audio_io

    path = str(fsdd_dir / "1_jackson_0.wav")
    url = fs.join(memory_url, "a", "1_jackson_0.wav")
    fs.copy_file(path, url)
    assert audio_io.audio_info(url) == audio_io.audio_info(path)
    np.testing.assert_array_equal(audio_io.load_audio(url), audio_io.load_audio(path))
    with audio_io.ClipReader(path) as f, audio_io.ClipReader(url) as g:
        out_f, out_g = np.zeros(3000, np.float32), np.ones(3000, np.float32)
        f.read_into(500, out_f)
        g.read_into(500, out_g)
    np.testing.assert_array_equal(out_f, out_g)
    with pytest.raises(audio_io.AudioError, match="missing.wav"):
        audio_io.load_audio(fs.join(memory_url, "missing.wav"))


def test_reading_audio_from_a_bucket_is_one_block(fsdd_dir, gcs_bucket, monkeypatch):
    """A clip decoded from gs:// is one ranged download, not one per read of libsndfile's
    (gcsfs's default prefetching cache made about 30 for a 10 kB WAV: about 1 s a file against the
    emulator, minutes for long recordings)."""
    import gcsfs.core

    from msm_mae_jax.data import audio_io

    downloads = []
    call = gcsfs.core.GCSFileSystem._call

    async def counted(self, method, path, *args, **kwargs):  # noqa: ANN001, ANN202
        if "/download/" in str(path):
            downloads.append(path)
        return await call(self, method, path, *args, **kwargs)

    monkeypatch.setattr(gcsfs.core.GCSFileSystem, "_call", counted)
    path = str(fsdd_dir / "7_theo_3.wav")
    url = fs.join(gcs_bucket, "7_theo_3.wav")
    fs.copy_file(path, url)

    def span(p: str) -> np.ndarray:
        with audio_io.ClipReader(p) as f:
            return f.read(100, 3000)

    for read in (
        audio_io.load_audio,
        lambda p: audio_io.load_audio(p, max_seconds=0.2, rng=np.random.default_rng(1)),
        span,
    ):
        downloads.clear()
        np.testing.assert_array_equal(read(url), read(path))
        assert len(downloads) == 1, downloads


def test_embed_finds_audio_at_urls(fsdd_dir, memory_url):
    """`embed` inputs: a folder URL (searched recursively, names relative to it), a glob URL."""
    from msm_mae_jax.features import embed

    for name in ("0_george_0.wav", "1_george_0.wav"):
        fs.copy_file(str(fsdd_dir / name), fs.join(memory_url, "clips", "sub", name))
    fs.write_text(fs.join(memory_url, "clips", "notes.txt"), "not audio")
    folder = fs.join(memory_url, "clips")
    assert embed.find_audio([folder]) == [
        (fs.join(folder, "sub", "0_george_0.wav"), "sub/0_george_0.wav"),
        (fs.join(folder, "sub", "1_george_0.wav"), "sub/1_george_0.wav"),
    ]
    found = embed.find_audio([fs.join(folder, "sub", "1_*.wav")])
    assert found == [(fs.join(folder, "sub", "1_george_0.wav"),) * 2]


@pytest.fixture
def background():
    """Processes a test starts in the background: killed when it ends, however it ends."""
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def _rows(wd: str) -> list[dict]:
    return [json.loads(line) for line in fs.read_text(fs.join(wd, "metrics.jsonl")).splitlines()]


def _kill_at_step(cmd: list[str], env: dict, step: int) -> str:
    """Starts `cmd`, SIGKILLs it once its console shows `step`; returns its output."""
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    watchdog = threading.Timer(TIMEOUT, p.kill)  # a run that hangs silently ends the read
    watchdog.start()
    try:
        for line in p.stdout:
            out.append(line)
            if line.startswith(f"[{step}/{STEPS} "):
                break
    finally:
        watchdog.cancel()
        p.kill()
        p.wait()
    text = "".join(out)
    assert f"[{step}/{STEPS} " in text, text[-3000:]
    return text


@pytest.mark.slow
def test_train_kill_resume_export_load_evaluate_on_gcs(corpus, env, tmp_path, background):
    """Data and workdir in a bucket: killed during the save of step 4 or just after (the
    console shows step 5; orbax finishes the save of step 2 before starting that of step 4),
    resumed from a checkpoint, bitwise equal to an uninterrupted run in a local workdir (run
    alongside, from the same shards)."""
    bucket, files, csv, lms = corpus
    source = {"data.source": f"lms:{lms}"}
    wd, ref = fs.join(bucket, "runs", "tiny"), str(tmp_path / "ref")
    reference = subprocess.Popen(
        _train_cmd(ref, **source),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    background.append(reference)
    _kill_at_step(_train_cmd(wd, **source), env, 5)
    assert fs.exists(fs.join(wd, workdir_lock.LOCK_NAME))  # left by the killed run
    # Alongside the resumed run: the same training from the audio files in the bucket
    # (`files:gs://`; the same compiled programs, read from the cache by now).
    from_files = subprocess.Popen(
        _train_cmd(str(tmp_path / "files"), **{"data.source": f"files:{bucket}/audio"}),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    background.append(from_files)
    r = subprocess.run(
        _train_cmd(wd, **source), env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "resumed from" in r.stdout, r.stdout[-3000:]
    assert "took over the lock" in r.stderr, r.stderr[-3000:]
    out, _ = reference.communicate(timeout=TIMEOUT)
    assert reference.returncode == 0, out[-3000:]
    out, _ = from_files.communicate(timeout=TIMEOUT)
    assert from_files.returncode == 0, out[-3000:]
    rows = _rows(str(tmp_path / "files"))
    assert [row["step"] for row in rows] == list(range(1, STEPS + 1))
    assert all(np.isfinite(row["loss"]) and row["loss"] > 0 for row in rows)
    saved = json.load(open(tmp_path / "files" / "config.json"))
    assert saved["data"]["source"] == f"files:{bucket}/audio"

    a = checkpoints.load_state_numpy(wd, STEPS)[0]["params"]
    b = checkpoints.load_state_numpy(ref, STEPS)[0]["params"]
    jax.tree.map(np.testing.assert_array_equal, a, b)
    # What the workdir holds: each step logged once, TensorBoard events, figures, no lock.
    assert [row["step"] for row in _rows(wd)] == list(range(1, STEPS + 1))
    names = fs.listdir(wd)
    for name in ("config.json", "norm_stats.json", "metrics.jsonl", "checkpoints", "tb"):
        assert name in names, names
    assert workdir_lock.LOCK_NAME not in names
    assert fs.listdir(fs.join(wd, "figures")) == [
        "recon_00000004.png",
        "recon_00000007.png",
    ]  # and the last step
    local = tmp_path / "tb_copy"
    staging.download_dir(fs.join(wd, "tb"), str(local / "tb"))
    scalars, images = read_tensorboard(str(local))
    assert sorted(scalars["loss"]) == list(range(1, STEPS + 1))
    assert sorted(images["reconstruction"]) == [4, STEPS]

    # Export into the bucket with the command (in this process: one interpreter start less),
    # then load it from there.
    from msm_mae_jax.cli.main import main

    out_dir = fs.join(bucket, "export", "tiny")
    assert main(["export", "--workdir", wd, "--out", out_dir]) == 0
    from msm_mae_jax.features.runtime import Runtime

    rt = Runtime.load(out_dir)
    jax.tree.map(np.testing.assert_array_equal, dict(rt._params), a["encoder"])
    wav = np.sin(np.arange(16000 * 2, dtype=np.float32) / 7.0) * 0.1
    emb = np.asarray(rt.scene_embeddings(wav[None], 16000))
    ref_emb = np.asarray(Runtime.load(ref).scene_embeddings(wav[None], 16000))
    np.testing.assert_array_equal(emb, ref_emb)
    from msm_mae_jax.features import hear

    model = hear.load_model(out_dir)  # the HEAR API from the bucket
    np.testing.assert_array_equal(hear.get_scene_embeddings(wav[None], model), emb)

    # Embeddings of the bucket's audio folder, written into the bucket.
    from msm_mae_jax.data import audio_io

    emb_url = fs.join(bucket, "embeddings", "digits.npz")
    assert main(["embed", "--checkpoint", out_dir, "--out", emb_url, fs.join(bucket, "audio")]) == 0
    with np.load(io.BytesIO(fs.read_bytes(emb_url))) as z:
        names, scene = list(z["paths"]), z["scene"]
    assert names == sorted(fs.basename(f) for f in files) and scene.shape == (len(files), 5 * 64)
    for i in (0, len(files) - 1):
        one = rt.scene_embeddings(audio_io.load_audio(fs.join(bucket, "audio", names[i]))[None])
        np.testing.assert_allclose(scene[i], np.asarray(one)[0], rtol=1e-5, atol=1e-5)

    # Evaluate the exported encoder on the task in the bucket (CSV, audio, cache, results).
    cache, result = fs.join(bucket, "cache"), fs.join(bucket, "results", "digits.json")
    cmd = ["eval", "--checkpoint", out_dir, "--task", f"csv:{csv}", "--cache-dir", cache]
    cmd += ["--out", result, "--seeds", "1", "--max-epochs", "20", "--no-progress"]
    assert main(cmd) == 0
    res = json.loads(fs.read_text(result))
    assert res["clips"] == {"train": 12, "valid": 3, "test": 6} and res["skipped"]["count"] == 0
    assert len(res["accuracy"]["per_seed"]) == 1  # one seed probed
    assert res["settings"]["cache_file"].startswith(cache + "/")
    assert fs.listdir(cache) == [fs.basename(res["settings"]["cache_file"])]


def test_a_workdir_in_a_missing_bucket_is_one_error(gcs_emulator_host):
    from msm_mae_jax.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"gs://no-such-bucket/w is not writable \(FileNotFound"):
        workdir_lock.lock_workdir("gs://no-such-bucket/w")


def test_the_lock_of_a_bucket_workdir_is_exclusive(gcs_bucket):
    """A second trainer is refused while the first holds the lock; released, it is free."""
    wd = fs.join(gcs_bucket, "run")
    first = workdir_lock.lock_workdir(wd)
    with pytest.raises(workdir_lock.WorkdirLockedError, match=f"pid {os.getpid()} on host"):
        workdir_lock.WorkdirLock(wd).acquire()
    assert first.check() is None
    first.release()
    assert not fs.exists(fs.join(wd, workdir_lock.LOCK_NAME))
    workdir_lock.lock_workdir(wd).release()
