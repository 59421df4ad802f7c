"""What a training run survives, through the real command: divergence, Ctrl-C, a full disk, a
damaged newest checkpoint, a second trainer, a changed config, a replayed step; each run has a
timeout, so a process that hangs instead of exiting fails the test instead of stalling it.
The pieces (lock staleness, config differences, every kind of checkpoint damage) are also
tested on their own, in-process."""

import io
import json
import os
import pathlib
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import soundfile as sf
from train_utils import (
    FOREVER,
    RUN_FLAGS,
    read_metrics,
    read_tensorboard,
    run,
    subprocess_env,
    tiny_config,
)

from msm_mae_jax.core.errors import ConfigError, DataError
from msm_mae_jax.train import checkpoints, loop, metrics, optim, resume, workdir_lock
from msm_mae_jax.train.state import Setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONE_DEVICE = (("data", 1), ("fsdp", 1), ("tensor", 1))
TIMEOUT = 300  # seconds: a run that has not exited by then hangs (runs take 10-60 s)
# The tiny config shrunk further (train_utils.RUN_FLAGS, as test_trainer's and test_gcs's
# runs). Runs that must be stopped (by a signal, an error) run "forever" (FOREVER): with the
# 4-step runs, two compiled step programs in all (the schedule's length is part of them).
FLAGS = RUN_FLAGS


def _cmd(wd, *extra, **overrides):
    flags = {**FLAGS, **overrides}
    return [
        sys.executable,
        "-m",
        "msm_mae_jax",
        "train",
        "--config",
        "tiny",
        "--workdir",
        str(wd),
        *[f"--config.{k}={v}" for k, v in flags.items()],
        *extra,
    ]


@pytest.fixture(scope="module")
def env():
    """One device per process; the session's compilation cache: the module's runs share
    their programs."""
    return subprocess_env()


def _run(cmd, env, **kw):
    return run(cmd, env, TIMEOUT, **kw)


def _error_line(r, traceback_ok=False) -> str:
    """The `PROG: error: ...` line of a run that failed with a user-facing error (exit 2)."""
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    lines = [x for x in r.stderr.splitlines() if ": error: " in x]
    assert len(lines) == 1, r.stderr[-3000:]
    assert traceback_ok or "Traceback" not in r.stderr, r.stderr[-3000:]
    return lines[0]


class _Started:
    """A run started in the background (output to files: a full pipe never blocks it)."""

    def __init__(self, cmd, env, folder, **kw):
        folder.mkdir(parents=True, exist_ok=True)
        self.out, self.err = folder / "stdout", folder / "stderr"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True, **kw)
        self.deadline = time.time() + 2 * TIMEOUT  # runs in parallel share the CPUs

    def result(self) -> subprocess.CompletedProcess:
        try:
            self.proc.wait(timeout=max(1.0, self.deadline - time.time()))
        finally:
            self.proc.kill()
        return subprocess.CompletedProcess(
            self.proc.args, self.proc.returncode, self.out.read_text(), self.err.read_text()
        )


def _no_cache_writes(env: dict) -> dict:
    """`env` for a run under the file size limit: it reads the session's compilation cache
    but writes nothing to it (a program it compiled first would be cut at the limit, and
    every later run would warn about the damaged entry and compile it again)."""
    return {**env, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1e9"}


def _small_files():
    """A file size limit that stands in for a full disk: the logs fit, a checkpoint does not."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, env):
    """The module's independent runs, in parallel (each is mostly one busy core). The full-disk
    run starts once the trained run has logged a step: it then reads their common programs
    from the compilation cache instead of compiling them too."""
    tmp = tmp_path_factory.mktemp("runs")
    out = {
        "trained": _Started(_cmd(tmp / "trained", total_steps=4), env, tmp / "trained.log"),
        "diverges": _Started(
            _cmd(tmp / "diverges", **FOREVER, **{"data.norm_std": 1e-30}),
            env,
            tmp / "diverges.log",
        ),
    }
    rows, deadline = tmp / "trained" / "metrics.jsonl", time.time() + TIMEOUT
    while not (rows.exists() and rows.read_text()) and out["trained"].proc.poll() is None:
        assert time.time() < deadline, "the trained run logged no step"
        time.sleep(0.1)
    out["full disk"] = _Started(
        _cmd(tmp / "full_disk", total_steps=4),
        _no_cache_writes(env),
        tmp / "full_disk.log",
        preexec_fn=_small_files,
    )
    return out


@pytest.fixture(scope="module")
def trained(runs):
    """A finished 4-step run: checkpoints 2 and 4, metrics rows 1-4 (copy it before use)."""
    r = runs["trained"].result()
    assert r.returncode == 0, r.stderr[-3000:]
    wd = runs["trained"].proc.args[runs["trained"].proc.args.index("--workdir") + 1]
    assert checkpoints.Checkpointer(wd).all_steps() == [2, 4]
    assert not os.path.exists(os.path.join(wd, workdir_lock.LOCK_NAME))  # released at the end
    return pathlib.Path(wd)


def _dead_pid() -> int:
    """The pid of a process that has exited (what a killed trainer leaves in its lock)."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _copy(src, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


# ---- exits: every way a run can end gives an exit status, promptly ----------------------------
@pytest.mark.slow
def test_divergence_stops_with_one_line(runs):
    """A non-finite loss (inputs scaled by 1e30) ends the run with one line naming the step
    and the latest good checkpoint; the process exits (it used to hang in the destructor of
    the data iterator, like any error that ended a run while batches were in flight)."""
    line = _error_line(runs["diverges"].result())
    assert "non-finite loss (nan) or gradient norm (nan) at step 1;" in line, line
    assert "latest good checkpoint: none was saved" in line


def test_full_disk_is_one_line_and_an_exit(runs):
    """A checkpoint write that fails (a file size limit stands in for a full disk) ends the
    run with one line saying so and what still exists; no hang."""
    # orbax's background threads log their own tracebacks before the run ends
    line = _error_line(runs["full disk"].result(), traceback_ok=True)
    assert "writing a checkpoint to" in line and "File too large" in line, line
    assert "newest complete checkpoint: none" in line


@pytest.mark.slow
def test_ctrl_c_and_a_second_trainer(tmp_path, env, trained):
    """A second trainer on a busy workdir refuses, naming the holder; Ctrl-C then ends the
    first with status 130 and releases the workdir. (After the background runs: this one
    runs two trainers at once.)"""
    wd = tmp_path / "run"
    first = subprocess.Popen(
        _cmd(wd, **FOREVER),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        t0 = time.time()
        while not (wd / "metrics.jsonl").exists() or not read_metrics(str(wd)):
            assert first.poll() is None, first.stderr.read()[-3000:]
            assert time.time() - t0 < TIMEOUT, "no training step within the timeout"
            time.sleep(0.2)
        second = _run(_cmd(wd, **FOREVER), env)
        line = _error_line(second)
        assert f"pid {first.pid} on host {socket.gethostname()}" in line, line
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=TIMEOUT)
    finally:
        first.kill()
    assert first.returncode == 130, err[-3000:]
    assert "interrupted" in err and "interrupted after step" in out
    assert not (wd / workdir_lock.LOCK_NAME).exists()


def test_read_only_workdir_is_one_line(tmp_path, env):
    ro = tmp_path / "ro"
    ro.mkdir()
    cmd = _cmd(ro / "run", total_steps=2)
    if os.geteuid() != 0:
        ro.chmod(0o555)
    elif shutil.which("unshare"):  # root writes anywhere: a read-only bind mount instead
        inner = " ".join(f"'{c}'" for c in cmd)
        cmd = [
            "unshare",
            "-rm",
            "sh",
            "-c",
            f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && exec {inner}",
        ]
    else:
        pytest.skip("running as root without unshare: cannot make a read-only folder")
    r = _run(cmd, env)
    if r.returncode != 2 and "mount" in r.stderr:
        pytest.skip(f"no read-only bind mount here: {r.stderr.strip()[-200:]}")
    line = _error_line(r)
    assert f"{ro / 'run'} is not writable" in line and "ead-only" in line, line


# ---- resuming: damaged checkpoints, config changes, the lock of a dead run, replayed steps -----
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
    dead = _dead_pid()
    lock = {"host": socket.gethostname(), "pid": dead, "boot_id": workdir_lock._boot_id()}
    (wd / workdir_lock.LOCK_NAME).write_text(json.dumps(lock))
    r = _run(
        _cmd(
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
    r = _run(_cmd(wd, batch_size=2, seed=3, log_every_steps=2, total_steps=4), env)
    line = _error_line(r)
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


def test_lock_staleness():
    host, now = socket.gethostname(), 0.0
    me = {"host": host, "pid": os.getpid(), "boot_id": workdir_lock._boot_id()}
    assert workdir_lock.stale_reason(me, now) is None
    dead = {**me, "pid": _dead_pid()}
    assert "no longer exists" in workdir_lock.stale_reason(dead, now)
    assert "restarted" in workdir_lock.stale_reason({**me, "boot_id": "other"}, now)
    assert "another process" in workdir_lock.stale_reason({**me, "pid_start": "1"}, now)
    far = {"host": "elsewhere", "pid": os.getpid()}
    assert workdir_lock.stale_reason(far, 60.0) is None  # cannot ask: trust the heartbeat
    assert "not refreshed" in workdir_lock.stale_reason(far, workdir_lock.STALE_AFTER_SECONDS + 1)
    assert workdir_lock.stale_reason(None, 1.0) is None  # being written
    assert "unreadable" in workdir_lock.stale_reason(None, 60.0)


def test_lock_is_exclusive_and_notices_a_takeover(tmp_path):
    held = workdir_lock.WorkdirLock(str(tmp_path)).acquire()
    with pytest.raises(workdir_lock.WorkdirLockedError, match=f"pid {os.getpid()} on host"):
        workdir_lock.WorkdirLock(str(tmp_path)).acquire()
    assert held.check() is None
    os.unlink(held.path)  # someone removed it and another trainer started
    other = workdir_lock.WorkdirLock(str(tmp_path)).acquire()
    assert "taken over" in held.check()
    held.release()  # not ours any more: left alone
    assert os.path.exists(other.path)
    other.release()
    assert not os.path.exists(other.path)


def _wait_until(condition, what, timeout=30.0):
    t0 = time.time()
    while not condition():
        assert time.time() - t0 < timeout, what
        time.sleep(0.02)


def test_the_heartbeat_refreshes_the_lock_until_another_trainer_takes_it(tmp_path, monkeypatch):
    """The holder's heartbeat keeps the lock fresh (a trainer on another host trusts its
    age); once another trainer's lock replaces it, the heartbeat stops refreshing and the
    holder learns why; releasing leaves the other's lock alone."""
    monkeypatch.setattr(workdir_lock, "HEARTBEAT_SECONDS", 0.05)
    held = workdir_lock.WorkdirLock(str(tmp_path)).acquire()
    os.utime(held.path, (1.0, 1.0))  # as if last refreshed in 1970
    _wait_until(lambda: os.stat(held.path).st_mtime > time.time() - 60, "never refreshed")
    other = {**json.loads(open(held.path).read()), "pid": 4242, "token": "other"}
    (tmp_path / workdir_lock.LOCK_NAME).write_text(json.dumps(other))
    _wait_until(lambda: held.lost is not None, "the takeover went unnoticed")
    assert held.lost == f"{held.path} was taken over by pid 4242 on host {socket.gethostname()}"
    assert held.check() == held.lost
    os.utime(held.path, (1.0, 1.0))
    time.sleep(0.3)  # six heartbeats
    assert os.stat(held.path).st_mtime == 1.0  # the other's lock is not refreshed
    held.release()
    assert json.loads(open(held.path).read())["token"] == "other"


def test_a_run_whose_lock_was_taken_over_saves_nothing(tmp_path, monkeypatch):
    """A trainer whose lock another trainer took (after wrongly judging it stale) stops at
    its next checkpoint with one line naming the other, and writes nothing more."""
    from msm_mae_jax.data import pipeline

    real = pipeline.train_iterator
    wd = tmp_path / "run"

    def taken_over_at_step_2(*a, **kw):
        for i, batch in enumerate(real(*a, **kw)):
            if i == 1:  # another trainer replaces the lock during step 2
                info = json.loads((wd / workdir_lock.LOCK_NAME).read_text())
                (wd / workdir_lock.LOCK_NAME).write_text(
                    json.dumps({**info, "pid": 4242, "token": "other"})
                )
            yield batch

    monkeypatch.setattr(pipeline, "train_iterator", taken_over_at_step_2)
    # test_trainer's in-process config: the same compiled programs
    c = tiny_config(3, mesh=ONE_DEVICE, **{"data.norm_mean": -9.0, "data.norm_std": 4.0})
    msg = f"not saving step 2: {wd / workdir_lock.LOCK_NAME} was taken over by pid 4242 on host"
    with pytest.raises(workdir_lock.WorkdirLockedError, match=re.escape(msg)):
        loop.train_and_evaluate(c, str(wd))
    assert checkpoints.Checkpointer(str(wd)).all_steps() == []
    assert json.loads((wd / workdir_lock.LOCK_NAME).read_text())["token"] == "other"


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


# ---- input data failing mid-run ---------------------------------------------------------------
def _nan_wavs(folder, n):
    folder.mkdir()
    for i in range(n):  # headers are fine; decoding finds NaN samples
        y = np.full(16000, np.nan, np.float32)
        sf.write(folder / f"{i}.wav", y, 16000, subtype="FLOAT")


def _train_on(folder, tmp_path):
    c = tiny_config(2, **{k: v for k, v in FLAGS.items() if k != "mesh"})
    c.mesh, c.data.source = (("data", 1), ("fsdp", 1), ("tensor", 1)), f"files:{folder}"
    loop.train_and_evaluate(c, str(tmp_path / "run"))


def test_files_that_stop_decoding_are_a_data_error(tmp_path):
    """Files that pass the header scan and fail to decode (as when the source vanishes
    mid-run): a DataError naming the source and the files (the command prints it as one
    line), not TensorFlow's wrapped traceback."""
    _nan_wavs(tmp_path / "audio", 20)
    with pytest.raises(DataError, match=r"files:.*audio.*failed to decode.*NaN/Inf") as e:
        _train_on(tmp_path / "audio", tmp_path)
    assert "Traceback" not in str(e.value)
    assert not (tmp_path / "run" / workdir_lock.LOCK_NAME).exists()


def test_one_file_that_fails_is_counted_as_one(tmp_path):
    _nan_wavs(tmp_path / "audio", 1)
    with pytest.raises(DataError, match=r"the only file \(1 file tried\) failed to decode"):
        _train_on(tmp_path / "audio", tmp_path)


def test_truncated_lms_shard_is_named(fsdd_dir, tmp_path):
    from msm_mae_jax.data import prepare

    src = tmp_path / "src"
    src.mkdir()
    for p in sorted(fsdd_dir.glob("*.wav"))[:6]:
        shutil.copy(p, src)
    m = prepare.prepare(str(src), str(tmp_path / "lms"), shard_size=3, workers=1, progress=False)
    shard = tmp_path / "lms" / m["shards"][1]["name"]
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    c = tiny_config(2, **{k: v for k, v in FLAGS.items() if k != "mesh"})
    c.mesh, c.data.source = (("data", 1), ("fsdp", 1), ("tensor", 1)), f"lms:{tmp_path / 'lms'}"
    c.data.shuffle_buffer = 2
    with pytest.raises(DataError, match=shard.name):
        loop.train_and_evaluate(c, str(tmp_path / "run"))
