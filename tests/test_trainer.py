"""The training loop end to end (tiny config, synthetic audio) and the jitted step."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from train_utils import (
    final_params,
    read_metrics,
    read_tensorboard,
    run_flags,
    tiny_config,
    xla_flags,
)

from configs.msm_mae import get_config
from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.data import pipeline
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.train import checkpoints, loop, optim, preemption
from msm_mae_jax.train.state import Setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(steps=3, mesh=(("data", 1), ("fsdp", 1), ("tensor", 1)), **kw):
    return tiny_config(steps, mesh=mesh, **kw)


def _write_clips(folder, n=12):
    """Audio files of the synthetic generator's clips: 16 kHz WAV and 22.05 kHz FLAC."""
    import soundfile as sf
    import soxr

    from msm_mae_jax.data import synthetic

    folder.mkdir()
    for i in range(n):
        wav, _ = synthetic.make_clip(i, 11, 2.5 - 0.1 * (i % 4))
        if i % 3:
            sf.write(folder / f"{i:02d}.wav", wav, 16000)
        else:
            sf.write(folder / f"{i:02d}.flac", soxr.resample(wav, 16000, 22050), 22050)


def _probe_accuracy(c, wd, step):
    """The probe's accuracy recomputed from the checkpoint of `step`: its encoder's tokens
    ([CLS] dropped) averaged over time, by hand, and the ridge probe on the hook's clips."""
    from msm_mae_jax.model import mae
    from msm_mae_jax.train import fewshot, hooks

    mc, enc, stats = checkpoints.load_encoder_from_workdir(wd, step=step)
    data = hooks.probe_data(c, mc, stats)
    gf, gt = mc.grid_size

    def embed(lms):
        x = np.asarray(mae.Encoder(mc).apply({"params": enc}, lms, mask_ratio=0.0).x_BKD)
        return x[:, 1:].reshape(len(lms), gf, gt, -1).mean(axis=2).reshape(len(lms), -1)

    res = fewshot.ridge_fewshot(embed(data[0]), data[1], embed(data[2]), data[3])
    return res["best_accuracy"]


@pytest.mark.slow
def test_end_to_end_files_and_resume(tmp_path, capsys):
    """A files: source (WAV and FLAC at two rates) through the real loop: metrics, the
    schedule, TensorBoard, figures, the probe (recomputed from the saved steps), checkpoints;
    then a crash after the last step's log resumes and ends where the uninterrupted run did."""
    _write_clips(tmp_path / "audio")
    wd = str(tmp_path / "run")
    c = tiny(
        3,
        figure_every_steps=2,
        figure_clips=2,
        **{
            "data.source": f"files:{tmp_path / 'audio'}",
            "probe.every_steps": 2,
            "probe.max_train": 24,
            "probe.max_test": 12,
        },
    )
    out = loop.train_and_evaluate(c, wd)
    assert "parameters, cpu backend, 1 device, mesh {" in capsys.readouterr().out
    rows = read_metrics(wd)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
    assert out["step"] == 3 and out["loss"] == rows[-1]["loss"] and not out["preempted"]
    # Hooks run every 2 steps and at the last step (3), whatever total_steps is.
    assert ["probe/accuracy" in r for r in rows] == [False, True, True]
    assert out["probe/accuracy"] == rows[-1]["probe/accuracy"]
    for row in rows[1:]:  # the probe of the parameters saved at that step
        assert row["probe/accuracy"] == _probe_accuracy(c, wd, row["step"]), row
    # lr follows the schedule: warm-up 1 step, then cosine from 1e-3 to 0 at step 3.
    np.testing.assert_allclose([r["lr"] for r in rows], [0.0, 1e-3, 5e-4], rtol=1e-6)
    scalars, images = read_tensorboard(wd)
    assert scalars["loss"] == pytest.approx({r["step"]: r["loss"] for r in rows}, rel=1e-6)
    assert json.load(open(os.path.join(wd, "config.json")))["batch_size"] == 8
    assert set(json.load(open(os.path.join(wd, "norm_stats.json")))) == {"mean", "std"}
    figure_files = sorted(os.listdir(os.path.join(wd, "figures")))
    assert figure_files == ["recon_00000002.png", "recon_00000003.png"]
    assert sorted(images["reconstruction"]) == [2, 3]
    for step in (2, 3):
        with open(os.path.join(wd, "figures", f"recon_{step:08d}.png"), "rb") as f:
            assert images["reconstruction"][step][1][2] == f.read()
    assert checkpoints.Checkpointer(wd).all_steps() == [2, 3]
    mc, enc, ns = checkpoints.load_encoder_from_workdir(wd)
    assert mc.embed_dim == 64 and "blocks_0" in enc

    # A crash after step 3 was logged but before its checkpoint: the same command resumes
    # from step 2 and ends where the uninterrupted run ended, each step logged once.
    uninterrupted = final_params(wd, 3)
    shutil.rmtree(os.path.join(checkpoints.checkpoint_dir(wd), "3"))
    again = loop.train_and_evaluate(c, wd)
    assert f"resumed from {checkpoints.checkpoint_dir(wd)}/2" in capsys.readouterr().out
    jax.tree.map(np.testing.assert_array_equal, final_params(wd, 3), uninterrupted)
    resumed = read_metrics(wd)
    assert [r["step"] for r in resumed] == [1, 2, 3]
    assert resumed[:2] == rows[:2]
    for key in ("loss", "probe/accuracy"):  # the replayed step and its probe: the same values
        assert resumed[2][key] == rows[2][key] == again[key], key
    assert read_tensorboard(wd)[0]["loss"] == {r["step"]: r["loss"] for r in resumed}


def _run_steps(c, batches, init=None):
    s = Setup(c, optim.resolve_schedule(c))
    # Initialising on one mesh and moving to another is exact (and skips a compile).
    state = s.init_state(0) if init is None else jax.device_put(init, s.state_shardings)
    losses = []
    with s.activate():
        for b in batches:
            state, m = s.train_step(state, s.global_batch(b))
            losses.append(float(m["loss"]))
    return losses, jax.tree.map(np.asarray, state.params), s


def test_init_is_the_same_on_any_mesh():
    c1 = tiny(3)
    c8 = tiny(3, mesh=(("data", 4), ("fsdp", 2), ("tensor", 1)))
    a = Setup(c1, optim.resolve_schedule(c1)).init_state(0)
    s8 = Setup(c8, optim.resolve_schedule(c8))
    b = s8.init_state(0)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)
    kernel = b.params["encoder"]["blocks_0"]["mlp"]["fc1"]["kernel"]
    assert (
        kernel.sharding == s8.state_shardings.params["encoder"]["blocks_0"]["mlp"]["fc1"]["kernel"]
        and len(kernel.addressable_shards) == 8
    )
    mu = b.opt_state[0][0].mu["encoder"]["blocks_0"]["mlp"]["fc1"]["kernel"]
    assert mu.sharding.spec == kernel.sharding.spec  # optimizer state sharded like params


@pytest.mark.slow
def test_multi_device_matches_one_device():
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((8, 1, 80, 208), np.float32) for _ in range(3)]
    init = Setup(tiny(3), optim.resolve_schedule(tiny(3))).init_state(0)
    init = jax.tree.map(np.asarray, init)
    ref, ref_p, _ = _run_steps(tiny(3), batches, init)
    # (data 8 alone: test_model_sharding and the 2-process run)
    for mesh in (
        (("data", 4), ("fsdp", 2), ("tensor", 1)),
        (("data", 2), ("fsdp", 2), ("tensor", 2)),
    ):
        losses, params, s = _run_steps(tiny(3, mesh=mesh), batches, init)
        np.testing.assert_allclose(losses, ref, atol=1e-5, rtol=0)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), params, ref_p)
        fc1 = s.state_shardings.params["encoder"]["blocks_0"]["mlp"]["fc1"]["kernel"]
        assert fc1.shard_shape((64, 256)) == (64 // mesh[1][1], 256 // mesh[2][1])
    assert len(set(ref)) == 3 and all(np.isfinite(ref))


@pytest.mark.slow
def test_grad_accumulation_is_mean_of_micro_batches():
    rng = np.random.default_rng(1)
    lms = rng.standard_normal((8, 1, 80, 208), np.float32)
    c = tiny(3, grad_accum_steps=2, mesh=(("data", 2), ("fsdp", 2), ("tensor", 1)))
    s = Setup(c, optim.resolve_schedule(c))
    state = s.init_state(0)
    p0 = jax.tree.map(np.asarray, state.params)
    rng_key = np.asarray(state.rng)
    with s.activate():
        new, m = s.train_step(state, s.global_batch(lms))
    # Independent computation: micro-batch i = rows i::2 with key fold_in(fold_in(rng,0), i).
    key = jax.random.fold_in(jnp.asarray(rng_key), 0)
    losses, grads = [], []
    loss_grad = jax.jit(jax.value_and_grad(s._loss))
    for i in range(2):
        l, g = loss_grad(p0, lms[i::2], jax.random.fold_in(key, i))
        losses.append(float(l))
        grads.append(g)
    assert float(m["loss"]) == pytest.approx(np.mean(losses), abs=1e-6)
    g = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
    assert float(m["l2_grads"]) == pytest.approx(float(optax.global_norm(g)), rel=1e-5)
    want = jax.jit(lambda g, p: optax.apply_updates(p, s.tx.update(g, s.tx.init(p), p)[0]))(g, p0)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), b, atol=1e-6), new.params, want
    )


def test_logmel_on_device_feeds_the_step_the_hosts_log_mels(tmp_path):
    """data.logmel_on_device: the host yields crop windows and the step computes the log-mel;
    the model sees the host front end's input (its tolerance against librosa, 1e-3, over std)
    on a sharded batch, and a short run trains with figures (which need the log-mels)."""
    stats = NormStats(-8.0, 4.0)
    c = tiny(2, mesh=(("data", 2), ("fsdp", 1), ("tensor", 1)))  # 2.5 s clips, 208-frame crops
    host = next(pipeline.train_iterator(c, stats, start_step=1))
    c.data.logmel_on_device = True
    dev = next(pipeline.train_iterator(c, stats, start_step=1))
    assert "lms" not in dev and dev["wav"].shape == (8, 160 * 207 + 400)
    np.testing.assert_array_equal(dev["frames"], host["frames"])
    s = Setup(c, optim.resolve_schedule(c))
    with s.activate():
        x = s.input_batch(dev, stats)
        assert x["wav"].sharding.spec[0] is not None  # rows split over the data axis
        lms = np.asarray(s.model_input(x))
    assert lms.shape == host["lms"].shape == (8, 1, 80, 208)
    assert np.abs(lms - host["lms"]).max() <= 1e-3 / stats.std
    with pytest.raises(ValueError, match=r"windows \(4, 33520\)"):
        s.input_batch({"wav": dev["wav"][:4], "frames": dev["frames"][:4]}, stats)

    c = tiny(2, figure_every_steps=2, figure_clips=2, **{"data.logmel_on_device": True})
    out = loop.train_and_evaluate(c, str(tmp_path))
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2]
    assert np.isfinite(out["loss"]) and out["loss"] > 0
    assert os.listdir(tmp_path / "figures") == ["recon_00000002.png"]


def test_nan_stops_with_step_and_keeps_good_checkpoint(tmp_path, monkeypatch):
    real = pipeline.train_iterator

    def poisoned(*a, **kw):
        for i, b in enumerate(real(*a, **kw), start=kw.get("start_step", 0)):
            if i == 2:  # the batch of step 3
                b = {"lms": np.full_like(b["lms"], np.nan)}
            yield b

    monkeypatch.setattr(pipeline, "train_iterator", poisoned)
    c = tiny(3, log_every_steps=10)  # steps 1-2 lean, 3 (the last) full: programs compiled here
    with pytest.raises(loop.NonFiniteError, match="at step 3"):
        loop.train_and_evaluate(c, str(tmp_path))
    ck = checkpoints.Checkpointer(str(tmp_path))
    assert ck.all_steps() == [2]
    params = final_params(str(tmp_path), 2)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(batch_size=12, mesh=(("data", 8), ("fsdp", 1), ("tensor", 1))), "batch shards"),
        (dict(batch_size=8, grad_accum_steps=3), "grad_accum_steps=3"),
        (dict(mesh=(("data", 3), ("fsdp", -1), ("tensor", 1))), "does not divide"),
        (dict(mesh=(("data", -1),)), "mesh axis 'fsdp'"),
        (dict(figure_every_steps=1, figure_clips=9), "figure_clips"),
        ({"probe.every_steps": 5, "probe.task": "csv:x.csv"}, "probe.task"),
    ],
)
def test_config_errors_before_compilation(kw, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        loop.train_and_evaluate(tiny(2, **kw), str(tmp_path))
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints", "0"))


@pytest.mark.slow
def test_vit_b_step_compiles_on_abstract_inputs():
    """The paper's ViT-B 80x208 step lowers and compiles over 8 fake devices (data 2 x fsdp 2 x
    tensor 2), without allocating parameters or running anything; the compiled program
    returns the state in the state's shardings (the next step's input: no resharding, and
    the donated buffers are reused) and the metrics replicated."""
    c = get_config("base_208")
    c.batch_size, c.total_steps, c.warmup_steps = 64, 10, 1
    c.mesh = (("data", 2), ("fsdp", 2), ("tensor", 2))
    s = Setup(c, optim.resolve_schedule(c))
    batch = jax.ShapeDtypeStruct(s.batch_shape, jnp.float32, sharding=s.batch_sharding)
    with s.activate():
        compiled = s.train_step.lower(s.abstract_state, batch).compile()
    out_state, out_metrics = compiled.output_shardings
    assert jax.tree.structure(out_state) == jax.tree.structure(s.state_shardings)
    flat = jax.tree_util.tree_flatten_with_path(out_state)[0]
    wants = jax.tree.leaves(s.state_shardings)
    shapes = jax.tree.leaves(s.abstract_state)
    for (path, got), want, x in zip(flat, wants, shapes, strict=True):
        assert got.is_equivalent_to(want, x.ndim), (jax.tree_util.keystr(path), got, want)
    enc = out_state.params["encoder"]["blocks_0"]
    assert tuple(enc["attn"]["qkv"]["kernel"].spec) == ("fsdp", "tensor")
    assert tuple(enc["mlp"]["fc2"]["kernel"].spec) == ("tensor", "fsdp")
    mu = out_state.opt_state[0][0].mu["encoder"]["blocks_0"]["mlp"]["fc1"]["kernel"]
    assert tuple(mu.spec) == ("fsdp", "tensor")  # optimizer state sharded like its parameter
    assert all(m.is_fully_replicated for m in jax.tree.leaves(out_metrics))
    qkv = s.abstract_state.params["encoder"]["blocks_0"]["attn"]["qkv"]["kernel"]
    assert qkv.shape == (768, 2304)


def _train_cmd(wd, **overrides):
    return [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        "--config",
        os.path.join(ROOT, "configs/msm_mae.py:tiny"),
        "--workdir",
        wd,
        *run_flags(**overrides),
    ]


def _env():
    """One device per process; the session's compilation cache (tests/conftest.py) is
    inherited: the restarted and the reference runs reuse the first run's programs."""
    return {
        **os.environ,
        "PYTHONPATH": ROOT,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": xla_flags(1),
    }


def _wait_for_step(proc, wd, step, timeout=120, ckpt=None):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if ckpt is not None and not os.path.isdir(os.path.join(wd, "checkpoints", str(ckpt))):
            time.sleep(0.05)
            continue
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.stderr.read()[-3000:]}")
        path = os.path.join(wd, "metrics.jsonl")
        if os.path.exists(path) and any(r["step"] >= step for r in read_metrics(wd)):
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("timed out waiting for training")


def _official_source(root):
    """Converted official-layout weights of the tiny model (encoder and decoder)."""
    from test_convert import official_state_dict

    from msm_mae_jax.model import convert

    sd = official_state_dict(4, D=64, depth=2, Dd=64, ddepth=1)
    np.savez(root / "official.npz", **sd)
    return convert.convert(
        str(root / "official.npz"),
        str(root / "official"),
        num_heads=4,
        decoder_num_heads=4,
        norm_stats=NormStats(-7.0, 4.0),
    )


@pytest.mark.slow
def test_sigterm_then_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    """A further-pre-training run (from converted official weights): SIGTERM (a preemption
    notice) saves the step reached and exits with status 3 and one line saying so (not 0:
    `train && export` must not take the run for finished); the same command resumes (the
    source moved away: resuming never reads it), is killed with SIGKILL between two
    checkpoints, resumes again and ends bit for bit where an uninterrupted run ends. Its
    export then serves the HEAR API with the run's own features."""
    source = _official_source(tmp_path)
    wd, ref = str(tmp_path / "interrupted"), str(tmp_path / "ref")
    # test_gcs's runs: the same step programs
    cmd = _train_cmd(wd, total_steps=7, init_from=source)
    p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_step(p, wd, 1)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == preemption.EXIT_PREEMPTED == 3, err[-3000:]
    assert f"initialised from converted official weights {source} (encoder and decoder" in out
    final = json.loads(out.strip().splitlines()[-1])["final"]
    assert final["preempted"] is True
    saved = checkpoints.Checkpointer(wd).all_steps()[-1]
    assert saved == final["preempted_at"] == max(r["step"] for r in read_metrics(wd)) < 7
    said = [x for x in err.splitlines() if "stopped by SIGTERM" in x]
    assert said == [
        f"{os.path.basename(cmd[1])}: stopped by SIGTERM (preemption); step {saved} "
        f"saved in {wd}: run the same command again to continue (exit status 3)"
    ], err[-2000:]
    record = checkpoints.Checkpointer(wd).restore_meta(saved)["init_from"]
    assert (record["kind"], record["path"], record["decoder"]) == ("converted", source, "source")

    os.rename(source, source + ".away")  # resuming must not read it
    p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_step(p, wd, saved + 1)  # past the step it resumed from
    p.send_signal(signal.SIGKILL)
    out = p.communicate()[0].decode()
    resumed = f"resumed from {os.path.join(wd, 'checkpoints', str(saved))}\n"
    assert resumed in out and "initialised from" not in out, out[-2000:]
    assert max(r["step"] for r in read_metrics(wd)) < 7, "finished before it could be killed"

    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "resumed from" in r.stdout, r.stderr[-3000:]
    assert checkpoints.Checkpointer(wd).restore_meta(7)["init_from"] == record
    os.rename(source + ".away", source)
    # Uninterrupted reference, also one device in its own process (XLA:CPU programs differ in
    # the last bits between processes with 1 and 8 devices, even on a 1-device mesh).
    r = subprocess.run(
        _train_cmd(ref, total_steps=7, init_from=source),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    jax.tree.map(np.testing.assert_array_equal, final_params(wd, 7), final_params(ref, 7))
    la = {x["step"]: x["loss"] for x in read_metrics(wd)}
    lb = {x["step"]: x["loss"] for x in read_metrics(ref)}
    assert la == lb  # every step's loss, the replayed ones included
    # The further-pre-trained run as any other: exported, served by the HEAR API.
    from msm_mae_jax.cli.main import main
    from msm_mae_jax.features import hear
    from msm_mae_jax.features.runtime import Runtime

    out_dir = str(tmp_path / "export")
    assert main(["export", "--workdir", wd, "--out", out_dir]) == 0
    wav = np.sin(np.arange(16000, dtype=np.float32) / 7.0)[None] * 0.1
    model = hear.load_model(out_dir)
    np.testing.assert_array_equal(
        np.asarray(hear.get_scene_embeddings(wav, model)),
        np.asarray(Runtime.load(wd).scene_embeddings(wav, 16000)),
    )


def test_lean_step_equals_full_step_without_parameter_norms():
    """The loop's step between log steps: same update and metrics, less l2_params/updates;
    the full step's norms against numpy."""
    c = tiny(3)
    s = Setup(c, optim.resolve_schedule(c))
    lms = np.random.default_rng(2).standard_normal((8, 1, 80, 208), np.float32)
    with s.activate():
        p0 = jax.tree.map(np.asarray, s.init_state(0).params)
        full, m_full = s.train_step(s.init_state(0), s.global_batch(lms))
        lean, m_lean = s.train_step_lean(s.init_state(0), s.global_batch(lms))
    assert set(m_full) - set(m_lean) == {"l2_params", "l2_updates"}
    for k in m_lean:
        assert np.asarray(m_lean[k]) == np.asarray(m_full[k]), k
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), full.params, lean.params)
    p1 = jax.tree.map(np.asarray, full.params)

    def norm(tree):
        return np.sqrt(sum(np.sum(np.square(x, dtype=np.float64)) for x in jax.tree.leaves(tree)))

    assert float(m_full["l2_params"]) == pytest.approx(norm(p1), rel=1e-5)
    d = jax.tree.map(lambda a, b: a.astype(np.float64) - b, p1, p0)
    assert float(m_full["l2_updates"]) == pytest.approx(norm(d), rel=1e-4)
