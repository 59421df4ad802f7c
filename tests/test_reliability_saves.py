"""Saves and their failures, through the real commands: a full disk, a damaged checkpoint
(truncated, a flipped bit), Ctrl-C while a save is in flight, Ctrl-C during `prepare`, an
export killed while it replaces an older one. Each ends with the right line and no traceback;
what is said about the checkpoints is true. Runs have timeouts (a hang fails the test)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from run_utils import (
    TIMEOUT,
    Started,
    cli,
    error_line,
    no_cache_writes,
    run_cmd,
    small_files,
    train_cmd,
)

from msm_mae_jax.core import outputs
from msm_mae_jax.features.runtime import Runtime
from msm_mae_jax.model import artifact
from msm_mae_jax.train import checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOREVER = {"total_steps": 100000, "ckpt_every_steps": 1, "keep_checkpoints": 100}


@pytest.fixture(scope="module")
def audio_dir(fsdd_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    for p in sorted(fsdd_dir.glob("*.wav"))[:16]:
        shutil.copy(p, d)
    return d


@pytest.fixture(scope="module")
def runs(tmp_path_factory, env, audio_dir):
    """The module's independent runs, started at once."""
    tmp = tmp_path_factory.mktemp("runs")
    return {
        "trained": Started(train_cmd(tmp / "trained", total_steps=6), env, tmp / "trained.log"),
        "full disk, files": Started(
            train_cmd(tmp / "full_files", total_steps=4, **{"data.source": f"files:{audio_dir}"}),
            no_cache_writes(env),
            tmp / "full_files.log",
            preexec_fn=small_files,
        ),
    }


@pytest.fixture(scope="module")
def trained(runs):
    """A finished 6-step run: checkpoints 2, 4 and 6 (copy it before use)."""
    r = runs["trained"].result()
    assert r.returncode == 0, r.stderr[-3000:]
    wd = runs["trained"].proc.args[runs["trained"].proc.args.index("--workdir") + 1]
    assert checkpoints.Checkpointer(wd).all_steps() == [2, 4, 6]
    return wd


@pytest.mark.slow
def test_a_full_disk_is_one_line(runs):
    """No orbax/asyncio tracebacks around the line (background threads, unretrieved futures,
    callbacks after the event loop closed); a `files:` source, whose input pipeline is still
    running when the save fails, included."""
    line = error_line(runs["full disk, files"].result())
    assert "writing a checkpoint to" in line and "File too large" in line, line
    assert "newest complete checkpoint: none" in line


def _biggest(folder):
    files = [os.path.join(d, f) for d, _, names in os.walk(folder) for f in names]
    return max(files, key=os.path.getsize)


@pytest.mark.slow
def test_damaged_checkpoints_are_named_without_tracebacks(trained, tmp_path, env):
    """Step 6 with a flipped bit, step 4 truncated: the run names both, moves them aside and
    resumes from step 2, with no 'Event loop is closed' traceback flood."""
    wd = tmp_path / "run"
    shutil.copytree(trained, wd)
    flipped = _biggest(wd / "checkpoints" / "6" / "state" / "ocdbt.process_0" / "d")
    data = bytearray(open(flipped, "rb").read())
    data[len(data) // 2] ^= 0x08
    open(flipped, "wb").write(bytes(data))
    cut = _biggest(wd / "checkpoints" / "4" / "state" / "ocdbt.process_0" / "d")
    os.truncate(cut, os.path.getsize(cut) // 2)
    r = run_cmd(train_cmd(wd, total_steps=6), env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "Event loop is closed" not in r.stderr, r.stderr[-3000:]
    assert "checkpoint step 6 is damaged (checksum mismatch in " in r.stdout, r.stdout
    assert "checkpoint step 4 is damaged (ValueError: OUT_OF_RANGE" in r.stdout, r.stdout
    assert f"resumed from {wd / 'checkpoints'}/2" in r.stdout
    assert sorted(os.listdir(wd / checkpoints.DAMAGED_DIR)) == ["4", "6"]


def _interrupt_during_saves(wd, env, second):
    """A run saving every step, sent SIGINT once it has saved 3, then another one: 0.1 s later
    (`second='soon'`: while it finishes the save in flight) or once it has said what it saved
    (`'exiting'`: while it closes down, the seconds of collection and shutdown in which a
    Ctrl-C used to print tracebacks from finalisers)."""
    log = wd.parent / "log"
    log.mkdir()
    with open(log / "out", "w") as out, open(log / "err", "w") as err:
        proc = subprocess.Popen(
            train_cmd(wd, **FOREVER), env={**env, "PYTHONUNBUFFERED": "1"}, stdout=out, stderr=err
        )
    try:
        t0 = time.time()
        while not (wd / "checkpoints" / "3").is_dir():
            assert proc.poll() is None, (log / "err").read_text()[-3000:]
            assert time.time() - t0 < TIMEOUT, "no checkpoint within the timeout"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        if second == "soon":
            time.sleep(0.1)
        else:
            while "interrupted after step" not in (log / "out").read_text():
                assert time.time() - t0 < TIMEOUT, "no line after Ctrl-C"
                time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.wait(timeout=TIMEOUT)
    finally:
        proc.kill()
    return proc.returncode, (log / "out").read_text(), (log / "err").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("second", ["soon", "exiting"])
def test_ctrl_c_during_a_save_tells_the_truth(tmp_path, env, second):
    """Ctrl-C while saves are in flight: the save completes and the line names the newest
    complete step. A second Ctrl-C exits at once, during the save (its line names the step
    complete then) or while the run closes down; never a traceback, and what is said restores."""
    wd = tmp_path / "run"
    code, out, err = _interrupt_during_saves(wd, env, second)
    assert code == 130, err[-3000:]
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    said = [x for x in (out + err).splitlines() if "newest complete checkpoint: " in x]
    claimed = int(said[-1].rsplit("newest complete checkpoint: step ", 1)[1])
    complete = checkpoints.Checkpointer(str(wd), read_only=True).all_steps()
    assert claimed == max(complete), (said, complete, os.listdir(wd / "checkpoints"))
    checkpoints.load_state_numpy(str(wd), claimed)
    if second == "exiting":  # the first line, then the second Ctrl-C's: the same step
        (line,) = [x for x in out.splitlines() if x.startswith("interrupted after step")]
        assert err.rstrip().endswith("interrupted again: exiting at once; " + line.split("; ")[1])


def test_a_ctrl_c_inside_a_finaliser_is_given_back(capsys):
    """Python cannot raise a KeyboardInterrupt out of a finaliser or a gc callback: it prints
    'Exception ignored' with a traceback and drops it. A command gets it back, silently."""
    from msm_mae_jax.core import interrupts

    class Finaliser:
        def __del__(self):
            raise KeyboardInterrupt

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), interrupts.handled("prog"):
        Finaliser()
        for _ in range(200):  # the interrupt given back arrives in ordinary code
            time.sleep(0.005)
    assert "Exception ignored" not in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before  # no Ctrl-C was pressed: restored


@pytest.mark.slow
def test_ctrl_c_during_prepare_is_one_line(fsdd_dir, tmp_path, env):
    """Ctrl-C from the terminal (the whole process group) while workers write shards: exit
    130, one line, no KeyboardInterrupt tracebacks from the workers; it exits at once."""
    src = tmp_path / "src"
    src.mkdir()
    for p in sorted(fsdd_dir.glob("*.wav"))[:400]:
        os.symlink(p, src / p.name)
    out = tmp_path / "lms"
    proc = subprocess.Popen(
        cli("prepare", src, out, "--workers", "2", "--shard-size", "50"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        t0 = time.time()
        while not (out.is_dir() and any(n.endswith(".tmp") for n in os.listdir(out))):
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() - t0 < TIMEOUT
            time.sleep(0.05)
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        t1 = time.time()
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert err.rstrip().endswith("prepare: interrupted")
    assert time.time() - t1 < 30  # the unfinished shards were not waited for


def _encoder(model_dir):
    return Runtime.load(model_dir)._params


def test_export_killed_mid_write_leaves_the_old_one(trained, tmp_path, env):
    """`export --out EXISTING` killed while the new export is complete beside the old one
    (the last moment before the swap): the old export loads as it was; the next export
    removes the leftover and replaces it."""
    out = tmp_path / "export"
    r = run_cmd(cli("export", "--workdir", trained, "--out", out, "--step", 2), env)
    assert r.returncode == 0, r.stderr[-3000:]
    old = jax.tree.map(np.asarray, _encoder(out))
    marker = tmp_path / "paused"
    proc = subprocess.Popen(
        cli("export", "--workdir", trained, "--out", out, "--step", 6),
        env={**env, outputs.PAUSE_ENV: str(marker)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        t0 = time.time()
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() - t0 < TIMEOUT
            time.sleep(0.05)
        proc.kill()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    jax.tree.map(np.testing.assert_array_equal, _encoder(out), old)
    assert json.loads((out / artifact.META_FILE).read_text())["step"] == 2
    leftover = tmp_path / f".export.partial-{proc.pid}"
    assert leftover.is_dir() and (leftover / artifact.META_FILE).is_file()
    r = run_cmd(cli("export", "--workdir", trained, "--out", out, "--step", 6), env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / artifact.META_FILE).read_text())["step"] == 6
    assert not leftover.exists() and sorted(os.listdir(tmp_path)) == ["export", "paused"]
    want = checkpoints.load_encoder_from_workdir(trained, 6)[1]
    jax.tree.map(np.testing.assert_array_equal, _encoder(out), want)


def test_replacing_without_an_atomic_swap_and_what_is_never_replaced(
    trained, tmp_path, monkeypatch
):
    """Where renameat2 is missing the swap is two renames; a folder of other files or a file
    is never replaced (its contents would be lost)."""
    cfg, params, stats = checkpoints.load_encoder_from_workdir(trained, 2)
    out = tmp_path / "m"
    artifact.save_model_dir(str(out), cfg, params, stats, source="a")
    monkeypatch.setattr(outputs, "_exchange", lambda a, b: False)
    artifact.save_model_dir(str(out), cfg, params, stats, source="b")
    assert artifact.load_model_dir(str(out))[3]["source"] == "b"
    assert sorted(os.listdir(tmp_path)) == ["m"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    with pytest.raises(ValueError, match="is a folder of other files"):
        artifact.save_model_dir(str(other), cfg, params, stats, source="c")
    assert (other / "todo.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="exists and is not a directory"):
        artifact.save_model_dir(str(other / "todo.txt"), cfg, params, stats, source="c")


def test_what_orbax_leaves_after_a_failure_is_dropped_and_nothing_else():
    """The pieces of the flood a failed read or write leaves (seen with a truncated array of
    a ViT-S checkpoint: 537 tracebacks): tensorstore callbacks hitting a closed event loop
    (unraisable), orbax threads' copies of the exception, unretrieved write futures. Other
    unraisable exceptions and errors still show."""
    import asyncio
    import logging

    from msm_mae_jax.model import orbax_quiet

    orbax_quiet.install()  # (the logging filters below; the hook is tried on its own here)
    loop = asyncio.new_event_loop()
    loop.close()

    class LateCallback:
        def __del__(self):
            loop.call_soon_threadsafe(print)  # RuntimeError: Event loop is closed

    class OtherFailure:
        def __del__(self):
            raise ValueError("a different problem")

    seen = []
    previous, sys.unraisablehook = sys.unraisablehook, orbax_quiet._unraisable(seen.append)
    try:
        LateCallback()
        OtherFailure()
    finally:
        sys.unraisablehook = previous
    assert [type(u.exc_value).__name__ for u in seen] == ["ValueError"]

    def record(name, path, msg, exc):
        return logging.LogRecord(name, logging.ERROR, path, 1, msg, None, (type(exc), exc, None))

    flt = next(f for f in logging.getLogger("absl").filters if type(f).__name__.startswith("_Drop"))
    orbax_file = os.path.join("site-packages", "orbax", "checkpoint", "future.py")
    write_error = ValueError('OUT_OF_RANGE: Error writing "step/0" in OCDBT database')
    assert not flt.filter(record("absl", orbax_file, "thread raised", write_error))
    assert not flt.filter(
        record("asyncio", "x.py", "Future exception was never retrieved", write_error)
    )
    # orbax's own exception raised from a read error: its message says 'TensorStore', the
    # cause 'OCDBT' (a flood seen once in ~7 runs of the truncated-checkpoint test)
    read_error = Exception("Encountered error while reading array index: (slice(0, 64, 1),). ")
    read_error.__cause__ = ValueError('DATA_LOSS: Error reading "k/0.0" in OCDBT database')
    task_msg = "Task exception was never retrieved"
    assert not flt.filter(record("asyncio", "x.py", task_msg, read_error))
    read_error.__cause__ = None
    assert flt.filter(record("asyncio", "x.py", task_msg, read_error))
    assert flt.filter(record("absl", "mine.py", "thread raised", write_error))
    assert flt.filter(
        record("asyncio", "x.py", "Future exception was never retrieved", KeyError(1))
    )
