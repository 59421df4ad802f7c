"""gs:// end to end, against a local Cloud Storage emulator (conftest.py starts it; the tests
skip with the reason where the emulator package is missing or does not start).

Training runs through the real command with its workdir in a bucket: killed with SIGKILL
half-way and resumed, its final parameters equal an uninterrupted run's bit for bit; the
encoder is exported to the bucket and loaded from there. TensorFlow's own gs:// client (TFDS
`data_dir=gs://...`) cannot be pointed at an emulator and is not exercised here.
"""

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from train_utils import read_tensorboard

from msm_mae_jax.core import fs
from msm_mae_jax.train import checkpoints, workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 300  # seconds: a run that has not exited by then hangs
STEPS = 7
FLAGS = {
    "total_steps": STEPS,
    "batch_size": 4,
    "warmup_steps": 1,
    "log_every_steps": 1,
    "ckpt_every_steps": 2,
    "figure_every_steps": 4,
    "figure_clips": 2,
    "probe.every_steps": 0,
    "data.synthetic_clips": 16,
    "data.synthetic_seconds": 2.5,
    "data.norm_mean": -9.0,
    "data.norm_std": 4.0,
    "mesh": "(('data',1),('fsdp',1),('tensor',1))",
}


def _train_cmd(wd: str, **overrides) -> list[str]:
    flags = {**FLAGS, **overrides}
    cmd = [sys.executable, "-m", "msm_mae_jax", "train", "--config", "tiny", "--workdir", wd]
    return cmd + [f"--config.{k}={v}" for k, v in flags.items()]


@pytest.fixture(scope="module")
def env(gcs_emulator_host, tmp_path_factory):
    """One device per process, a compilation cache shared by the runs, the emulator's env."""
    return {
        **os.environ,
        "PYTHONPATH": ROOT,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }


def _rows(wd: str) -> list[dict]:
    return [json.loads(line) for line in fs.read_text(fs.join(wd, "metrics.jsonl")).splitlines()]


def _kill_at_step(cmd: list[str], env: dict, step: int) -> str:
    """Starts `cmd`, SIGKILLs it once its console shows `step`; returns its output."""
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, deadline = [], time.time() + TIMEOUT
    try:
        for line in p.stdout:
            out.append(line)
            if line.startswith(f"[{step}/{STEPS} ") or time.time() > deadline:
                break
    finally:
        p.kill()
        p.wait()
    text = "".join(out)
    assert f"[{step}/{STEPS} " in text, text[-3000:]
    return text


@pytest.mark.slow
def test_train_kill_resume_export_load_on_gcs(gcs_bucket, env, tmp_path):
    """Workdir in a bucket: killed during the save of step 4 or just after (the console shows
    step 5; orbax waits for the save of step 2 before starting that of step 4), resumed from a
    checkpoint, bitwise equal to an uninterrupted run in a local workdir (run alongside)."""
    wd, ref = fs.join(gcs_bucket, "runs", "tiny"), str(tmp_path / "ref")
    reference = subprocess.Popen(
        _train_cmd(ref), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    _kill_at_step(_train_cmd(wd), env, 5)
    assert fs.exists(fs.join(wd, workdir_lock.LOCK_NAME))  # left by the killed run
    r = subprocess.run(_train_cmd(wd), env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "resumed from" in r.stdout, r.stdout[-3000:]
    assert "took over the lock" in r.stderr, r.stderr[-3000:]
    out, _ = reference.communicate(timeout=TIMEOUT)
    assert reference.returncode == 0, out[-3000:]

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
    fs.download_dir(fs.join(wd, "tb"), str(local / "tb"))
    scalars, images = read_tensorboard(str(local))
    assert sorted(scalars["loss"]) == list(range(1, STEPS + 1))
    assert sorted(images["reconstruction"]) == [4, STEPS]

    # Export into the bucket through the command, then load it from there.
    out_dir = fs.join(gcs_bucket, "export", "tiny")
    r = subprocess.run(
        [sys.executable, "-m", "msm_mae_jax", "export", "--workdir", wd, "--out", out_dir],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    from msm_mae_jax.features.runtime import Runtime

    rt = Runtime.load(out_dir)
    jax.tree.map(np.testing.assert_array_equal, dict(rt._params), a["encoder"])
    wav = np.sin(np.arange(16000 * 2, dtype=np.float32) / 7.0) * 0.1
    emb = np.asarray(rt.scene_embeddings(wav[None], 16000))
    ref_emb = np.asarray(Runtime.load(ref).scene_embeddings(wav[None], 16000))
    np.testing.assert_array_equal(emb, ref_emb)
