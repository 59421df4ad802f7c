"""What a resumed training run finds, and how it goes on: a damaged newest checkpoint (every
kind of damage, a NaN saved whole), the lock of a killed run, a changed config, another model,
replayed steps. The whole run through the real command (with a timeout); the pieces in-process."""

import io
import json
import os
import pathlib
import re
import shutil
import socket
import time

import jax
import numpy as np
import pytest
from run_utils import dead_pid, error_line, run_cmd, train_cmd
from train_utils import RUN_FLAGS, read_metrics, read_tensorboard, tiny_config

from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.train import checkpoints, loop, metrics, optim, resume, workdir_lock
from msm_mae_jax.train.state import Setup

FLAGS = RUN_FLAGS  # the runs of the real command (as test_trainer's and test_gcs's)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, env):
    """A finished 4-step run: checkpoints 2 and 4, metrics rows 1-4 (copy it before use)."""
    tmp = tmp_path_factory.mktemp("runs")
    r = run_cmd(train_cmd(tmp / "trained", total_steps=4), env)
    assert r.returncode == 0, r.stderr[-3000:]
    wd = str(tmp / "trained")
    assert checkpoints.Checkpointer(wd).all_steps() == [2, 4]
    assert not os.path.exists(os.path.join(wd, workdir_lock.LOCK_NAME))  # released at the end
    return pathlib.Path(wd)


def _copy(src, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


# ---- resuming through the real command ------------------------------------------------------
@pytest.mark.slow
def test_resume_past_damage_with_stale_lock_and_allowed_change(trained, tmp_path, env):
    """The newest checkpoint is truncated, a killed run's lock is left, a safe key and (with
    the flag) an unsafe key changed: the run resumes from step 2, keeps step 4 aside, drops the
    replayed metrics rows (and TensorBoard events) and ends where an intact run would."""
    wd = _copy(trained, tmp_path)
    before = {r["step"]: r for r in read_metrics(str(wd))}
    state_dir = wd / "checkpoints" / "4" / "state"
    arrays = [p for p in state_dir.rglob("d/*") if p.is_file()]
    biggest = max(arrays, key=lambda p: p.stat().st_size)
    with open(biggest, "r+b") as f:
        f.truncate(biggest.stat().st_size // 2)
    dead = dead_pid()
    lock = {"host": socket.gethostname(), "pid": dead, "boot_id": workdir_lock._boot_id()}
    (wd / workdir_lock.LOCK_NAME).write_text(json.dumps(lock))
    r = run_cmd(
        train_cmd(
            wd,
            "--allow-config-change",
            total_steps=4,
            keep_checkpoints=5,
            **{"data.synthetic_seconds": 2.0},
        ),
        env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"took over the lock of {wd}" in r.stderr and f"pid {dead} no longer exists" in r.stderr
    moved = wd / checkpoints.DAMAGED_DIR / "4"
    assert "checkpoint step 4 is damaged (ValueError: OUT_OF_RANGE" in r.stdout, r.stdout
    assert f"moved to {moved}" in r.stdout and moved.is_dir()
    assert "resumed from" in r.stdout and "/checkpoints/2" in r.stdout
    assert "config changed on resume (allowed): data.synthetic_seconds 2.5 -> 2.0" in r.stdout
    assert "dropped 2 metrics.jsonl row(s) past step 2" in r.stdout
    assert checkpoints.Checkpointer(str(wd)).all_steps() == [2, 4]
    rows = read_metrics(str(wd))
    assert [x["step"] for x in rows] == [1, 2, 3, 4]  # each step once
    assert rows[:2] == [before[1], before[2]]
    assert rows[2]["loss"] != before[3]["loss"]  # the new data: replayed, not kept
    scalars, _ = read_tensorboard(str(wd))
    assert scalars["loss"] == pytest.approx({x["step"]: x["loss"] for x in rows}, rel=1e-6)


def test_config_change_is_refused_with_the_diff(trained, tmp_path, env):
    wd = _copy(trained, tmp_path)
    saved = (wd / "config.json").read_text()
    r = run_cmd(train_cmd(wd, batch_size=2, seed=3, log_every_steps=2, total_steps=4), env)
    line = error_line(r)
    assert (
        "checkpoint step 4) was trained with another config: batch_size 4 -> 2, seed 0 -> 3" in line
    )
    assert "log_every_steps" not in line and "--allow-config-change" in line
    assert (wd / "config.json").read_text() == saved  # not overwritten
    assert not (wd / workdir_lock.LOCK_NAME).exists()


# ---- the pieces ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup():
    c = tiny_config(4, **{k: v for k, v in FLAGS.items() if k != "mesh"})
    c.mesh = (("data", 1), ("fsdp", 1), ("tensor", 1))
    return Setup(c, optim.resolve_schedule(c))


def _damage(wd, mode):
    state = wd / "checkpoints" / "4" / "state"
    if mode == "missing _METADATA":
        (state / "_METADATA").unlink()
    elif mode == "empty manifest":
        (state / "manifest.ocdbt").write_bytes(b"")
    elif mode == "overwritten bytes":
        # random bytes: in raw array data mostly finite values, which only the checksums
        # tell from the saved ones; elsewhere a decoding error
        for p in (state / "ocdbt.process_0" / "d").iterdir():
            data = bytearray(p.read_bytes())
            data[len(data) // 3 : len(data) // 3 + 64] = np.random.default_rng(0).bytes(64)
            p.write_bytes(bytes(data))
    elif mode == "bad meta":
        (wd / "checkpoints" / "4" / "meta" / "metadata").write_text("{not json")


@pytest.mark.parametrize(
    "mode,why",
    [
        ("missing _METADATA", "state/_METADATA is missing"),
        ("empty manifest", r"state/manifest\.ocdbt is empty"),
        # what it gives depends on where the bytes land (the layout of the data files varies
        # from save to save): caught either way (the non-finite check alone:
        # test_a_checkpoint_with_a_nan_falls_back)
        ("overwritten bytes", r"ZSTD_decompressStream|checksum mismatch in (params|opt_state)/"),
        ("bad meta", "JSONDecodeError"),
    ],
)
def test_every_kind_of_damage_falls_back(trained, tmp_path, setup, mode, why):
    wd = _copy(trained, tmp_path)
    _damage(wd, mode)
    ck = checkpoints.Checkpointer(str(wd))
    with setup.activate():
        restored = ck.restore_newest(setup.abstract_state, lambda s, m: None)
    ck.close()
    assert restored.step == 2 and int(restored.state.step) == 2
    ((step, reason, dest),) = restored.damaged
    assert step == 4 and re.search(why, reason), reason
    assert dest == str(wd / checkpoints.DAMAGED_DIR / "4")
    assert checkpoints.Checkpointer(str(wd)).all_steps() == [2]


def test_a_checkpoint_with_a_nan_falls_back(trained, tmp_path, setup):
    """A step saved whole but holding one NaN (a diverged state that was checkpointed) does
    not restore: the step before does, and the array is named."""
    wd = _copy(trained, tmp_path)
    ck = checkpoints.Checkpointer(str(wd))
    target = "['encoder']['blocks_1']['mlp']['fc2']['kernel']"
    with setup.activate():
        state, meta = ck.restore(4, setup.abstract_state)
        params = jax.tree_util.tree_map_with_path(
            lambda p, x: x.at[3, 5].set(np.nan) if jax.tree_util.keystr(p) == target else x,
            state.params,
        )
        ck.save(6, state.replace(params=params), {**meta, "step": 6, "data_position": 6})
        ck.wait()
        restored = ck.restore_newest(setup.abstract_state, lambda s, m: None)
    ck.close()
    assert restored.step == 4 and int(restored.state.step) == 4
    assert restored.damaged == [
        (6, f"non-finite values in [0]{target}", str(wd / checkpoints.DAMAGED_DIR / "6"))
    ]
    assert checkpoints.Checkpointer(str(wd)).all_steps() == [2, 4]


def test_export_reads_past_a_damaged_newest_step(trained, tmp_path):
    """Reading a workdir's encoder (export, eval, Runtime.load) takes the newest step that
    reads, without moving anything; a damaged step asked for by number is a one-line error."""
    wd = _copy(trained, tmp_path)
    _damage(wd, "missing _METADATA")
    _, enc, _ = checkpoints.load_encoder_from_workdir(str(wd))
    want = checkpoints.load_state_numpy(str(wd), 2)[0]["params"]["encoder"]
    jax.tree.map(np.testing.assert_array_equal, enc, want)
    with pytest.raises(checkpoints.CheckpointError, match="step 4: state/_METADATA is missing"):
        checkpoints.load_encoder_from_workdir(str(wd), step=4)
    assert checkpoints.Checkpointer(str(wd)).all_steps() == [2, 4]


def test_nothing_restores_nothing_moved(trained, tmp_path, setup):
    """Every step failing looks like a file system problem: an error naming each, no move.
    A step whose meta the caller refuses (another run's) stops the search at once."""
    wd = _copy(trained, tmp_path)
    ck = checkpoints.Checkpointer(str(wd))
    with pytest.raises(ConfigError, match="other run"):
        ck.restore_newest(setup.abstract_state, _refuse)
    for step in (2, 4):
        (wd / "checkpoints" / str(step) / "state" / "_METADATA").unlink()
    with pytest.raises(checkpoints.CheckpointError, match="step 4: .*step 2: .*Nothing was moved"):
        ck.restore_newest(setup.abstract_state, lambda s, m: None)
    assert ck.all_steps() == [2, 4] and not (wd / checkpoints.DAMAGED_DIR).exists()
    ck.close()


def _refuse(step, meta):
    raise ConfigError("other run")


def test_resume_refuses_a_checkpoint_of_another_model(trained, tmp_path):
    """Another model config is refused even with --allow-config-change, before anything is
    restored or moved (a restore that failed on the shapes would count the steps as
    damaged)."""
    wd = _copy(trained, tmp_path)
    c = tiny_config(4, **{k: v for k, v in FLAGS.items() if k != "mesh"}, **{"model.depth": 1})
    c.mesh = (("data", 1), ("fsdp", 1), ("tensor", 1))
    why = r"the checkpoint at step 4 is another model: model\.depth 2 -> 1 \(checkpoint -> config\)"
    with pytest.raises(ConfigError, match=why):
        loop.train_and_evaluate(c, str(wd), allow_config_change=True)
    assert checkpoints.Checkpointer(str(wd)).all_steps() == [2, 4]
    assert not (wd / checkpoints.DAMAGED_DIR).exists()
    assert not (wd / workdir_lock.LOCK_NAME).exists()


def test_config_difference_keys():
    old = tiny_config(4).to_dict()
    new = {**old, "batch_size": 2, "log_every_steps": 7, "mesh": [["data", 2]]}
    new["probe"] = {**old["probe"], "every_steps": 9}
    new["data"] = {**old["data"], "source": "files:/x", "prefetch": 8}
    assert resume.changed_keys(old, new) == [
        ("batch_size", old["batch_size"], 2),
        ("data.source", "synthetic", "files:/x"),
    ]
    assert resume.changed_keys(old, json.loads(json.dumps(old))) == []  # tuples as lists
    with pytest.raises(
        ConfigError, match=f"batch_size {old['batch_size']} -> 2, data.source 'synt"
    ):
        resume.check_config_change(old, new, "w", allow=False)
    assert len(resume.check_config_change(old, new, "w", allow=True)) == 2


def test_replayed_steps_are_logged_once(tmp_path):
    """A run resumed at step 2 after logging 1-5 (the last line cut by the crash): metrics.jsonl
    and TensorBoard (the real one, when installed) show each step once, the new values."""
    w = metrics.MetricWriter(str(tmp_path), stream=io.StringIO())
    for step in range(1, 6):
        w.write_scalars(step, {"loss": float(step)})
    w.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')
    time.sleep(1.0)  # event files are ordered by their names' timestamps (seconds)
    w = metrics.MetricWriter(str(tmp_path), stream=io.StringIO(), start_step=2)
    assert w.dropped_rows == 4
    for step in (3, 4):
        w.write_scalars(step, {"loss": 10.0 * step})
    w.close()
    want = {1: 1.0, 2: 2.0, 3: 30.0, 4: 40.0}
    assert {r["step"]: r["loss"] for r in read_metrics(str(tmp_path))} == want
    assert read_tensorboard(str(tmp_path))[0]["loss"] == want
    pytest.importorskip("tensorboard", reason="the optional tensorboard package is absent")
    from tensorboard.backend.event_processing import plugin_event_multiplexer as pem

    mux = pem.EventMultiplexer()
    mux.AddRunsFromDirectory(str(tmp_path))
    mux.Reload()
    shown = mux.GetAccumulator("tb").Tensors("loss")
    assert {e.step: float(e.tensor_proto.float_val[0]) for e in shown} == want
