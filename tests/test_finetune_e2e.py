"""Fine-tuning end to end: SIGTERM / SIGKILL and resume equal an uninterrupted run; FSDD digits
fine-tuned from an encoder pre-trained here beat its linear probe."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from finetune_utils import ft_config, synthetic_csv, write_encoder
from train_utils import xla_flags

from msm_mae_jax.evaluation import probe
from msm_mae_jax.finetune import data, run
from msm_mae_jax.finetune import model as ft_model
from msm_mae_jax.tasks import specs
from msm_mae_jax.train import checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_STEPS = 60  # 20 epochs of 3 steps; an evaluation and a checkpoint every 6 steps


def _cmd(enc, csv, wd):
    return [
        sys.executable,
        os.path.join(ROOT, "finetune.py"),
        "--checkpoint",
        enc,
        "--task",
        f"csv:{csv}",
        "--workdir",
        wd,
        "--out",
        os.path.join(wd, "result.json"),
        "--config",
        "configs/finetune.py:tiny",
        f"--config.epochs={TOTAL_STEPS // 3}",
        "--config.eval_every_steps=6",
        "--config.mesh=(('data',1),('fsdp',1),('tensor',1))",
        "--no-progress",
    ]


def _env():
    """One device; the session's compilation cache (tests/conftest.py) is inherited."""
    return {
        **os.environ,
        "PYTHONPATH": ROOT,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": xla_flags(1),
    }


def _logged_steps(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line)["step"] for line in f if '"loss"' in line]


def _wait(proc, run_dir, step, timeout=180):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"fine-tuning exited early: {proc.stderr.read()[-3000:]}")
        if max(_logged_steps(run_dir), default=0) >= step:
            return
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("timed out waiting for fine-tuning")


@pytest.mark.slow
def test_sigterm_then_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    enc = write_encoder(str(tmp_path / "enc"))
    csv = synthetic_csv(str(tmp_path / "task"))
    wd, ref = str(tmp_path / "killed"), str(tmp_path / "ref")
    run_dir = os.path.join(wd, "split", "seed0")
    env = _env()
    p = subprocess.Popen(
        _cmd(enc, csv, wd), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    _wait(p, run_dir, 4)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 3 and "run the same command again" in err, (p.returncode, err[-2000:])
    saved = checkpoints.Checkpointer(run_dir).all_steps()
    # saved where it stopped
    assert saved and max(saved) == max(_logged_steps(run_dir)) < TOTAL_STEPS
    p = subprocess.Popen(
        _cmd(enc, csv, wd), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    _wait(p, run_dir, max(saved) + 5)  # past a checkpoint, before the end
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert max(_logged_steps(run_dir)) < TOTAL_STEPS, "finished before it could be killed"
    r = subprocess.run(_cmd(enc, csv, wd), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed" in r.stderr and "accuracy (%)" in r.stdout
    r = subprocess.run(_cmd(enc, csv, ref), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a = checkpoints.load_state_numpy(run_dir, TOTAL_STEPS)[0]
    b = checkpoints.load_state_numpy(os.path.join(ref, "split", "seed0"), TOTAL_STEPS)[0]
    jax.tree.map(np.testing.assert_array_equal, a, b)  # params, best params, optimizer, counters
    ra, rb = (json.load(open(os.path.join(d, "result.json"))) for d in (wd, ref))
    assert ra["accuracy"] == rb["accuracy"] and ra["valid"] == rb["valid"]
    assert ra["runs"][0]["best_step"] == rb["runs"][0]["best_step"]
    la = [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl"))]
    lb = [json.loads(x) for x in open(os.path.join(ref, "split", "seed0", "metrics.jsonl"))]
    loss = lambda rows: {r["step"]: r["loss"] for r in rows if "loss" in r}  # noqa: E731
    assert loss(la) == loss(lb)  # every step's loss, including the replayed ones


# ---- FSDD ------------------------------------------------------------------------------------
def _pretrain(store, train_idx, stats, out, steps=200, width=128):
    """Pre-trains a small encoder (128 wide, 2 blocks, 80x96) on crops of the training clips with
    the pre-training step of train.loop; saves it as an encoder artifact."""
    from msm_mae_jax.core.config_files import load_config
    from msm_mae_jax.finetune import data
    from msm_mae_jax.model import artifact
    from msm_mae_jax.model.config import ModelConfig
    from msm_mae_jax.train import optim
    from msm_mae_jax.train.state import Setup

    c = load_config(
        "tiny",
        {
            "batch_size": 32,
            "total_steps": steps,
            "warmup_steps": steps // 10,
            "model.input_size": (80, 96),
            "model.embed_dim": width,
            "mesh": (("data", 1), ("fsdp", 1), ("tensor", 1)),
        },
    )
    setup = Setup(c, optim.resolve_schedule(c))
    state = setup.init_state(0)
    y = np.zeros((len(train_idx), 1), np.float32)
    crops = data.TrainBatches(
        store,
        train_idx,
        y,
        stats=stats,
        seed=0,
        batch_size=32,
        crop_frames=96,
        padded_frames=96,
        time_shift=True,
    )
    with setup.activate():
        for step in range(steps):
            x = crops.batch(step)[0][:, None]
            state, _ = setup.train_step(state, setup.global_batch(x))
    enc = jax.device_get(state.params["encoder"])
    mc = ModelConfig.from_dict(c.model)
    return artifact.save_model_dir(out, mc, enc, stats, "test"), mc, enc


@pytest.mark.slow
def test_fsdd_digits_finetuning_reaches_95_and_beats_the_linear_probe(
    fsdd_dir, fsdd_synthetic, tmp_path, monkeypatch, optimised_compiles
):
    """Takes 5-49 train (10% of them valid), takes 0-4 test (300 clips); whole clips. The
    recordings: 5 epochs of batch 32 (375 updates) without SpecAugment masks, validated once at
    the end, reach the claimed 95% (measured: 98%, the probe 89%; 8 epochs of batch 64 with
    masks and a validation every epoch, 1.6x the examples, gave the same 98%; fewer clips, as
    takes 5-29 in 7 epochs, fell to 96%). On the synthetic stand-in (540 clips,
    tests/fsdd_like.py; harder, and 8x less data) ~300 updates with batch 16 must beat the
    probe by as much, and reach 60% (measured: 71%, the probe 43%)."""
    files = sorted(str(p) for p in fsdd_dir.glob("*.wav"))
    names = [os.path.basename(f)[:-4].split("_") for f in files]
    splits = ["test" if int(n[2]) < 5 else "train" for n in names]
    csv = specs.write_csv(str(tmp_path / "fsdd.csv"), files, [n[0] for n in names], splits)
    task = specs.parse_task(f"csv:{csv}")
    fold = task.folds[0]
    store = data.load_clips(task, 0.0, progress=False, log=lambda m: None)
    stats = store.norm_stats(task.train_union)
    enc, mc, params = _pretrain(store, fold.train, stats, str(tmp_path / "encoder"))

    # the EVAR linear probe of the same encoder on its clip embeddings (whole clips)
    emb = np.zeros((len(task), mc.feature_dim), np.float32)
    fn = jax.jit(lambda x, v: ft_model.clip_features(params, x, v, mc))
    for pos, x, v in data.eval_batches(store, np.arange(len(task)), 64, 96, stats):
        emb[pos] = np.asarray(fn(x, v))[: len(pos)]
    lin = probe.linear_probe(
        emb[fold.train],
        task.y[fold.train],
        emb[fold.valid],
        task.y[fold.valid],
        emb[fold.test],
        task.y[fold.test],
    )

    monkeypatch.setattr(data, "load_clips", lambda *a, **k: store)  # read once above
    # masks slow a short schedule down (4 epochs: 96% with them, 97% without)
    short = {"epochs": "5", "batch_size": "32", "augment.freq_mask": "0", "augment.time_mask": "0"}
    short["eval_every_steps"] = "1000000"  # once, at the last step: its parameters are tested
    stand_in = {"epochs": "15", "batch_size": "16", "augment.freq_mask": "16"}
    stand_in["augment.time_mask"] = "24"
    c = ft_config(
        **{
            "warmup_epochs": "1",
            "optim.lr": "2e-3",
            "augment.mixup": "0",
            "augment.rrc": "false",
            "data.time_shift": "false",  # converges faster in a short schedule (98 vs 94%)
            "early_stop_patience": "-1",
            "data.eval_batch_size": "64",
            "log_every_steps": "1000",
            "export": "false",
            **(stand_in if fsdd_synthetic else short),
        }
    )
    res = run.finetune(task, enc, c, str(tmp_path / "ft"), log=lambda m: None, progress=False)
    acc = res["accuracy"]["mean"]
    assert acc >= (0.6 if fsdd_synthetic else 0.95) and acc > lin.score + 0.05, (acc, lin.score)
