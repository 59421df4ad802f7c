"""How a training run ends, through the real command: divergence, a full disk, Ctrl-C, a
second trainer on a busy workdir, a workdir that cannot be written. Every way gives an exit
status and one line, promptly; each run has a timeout, so a process that hangs instead of
exiting fails the test instead of stalling it."""

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest
from run_utils import (
    TIMEOUT,
    Started,
    error_line,
    no_cache_writes,
    run_cmd,
    small_files,
    train_cmd,
)
from train_utils import FOREVER, read_metrics

from msm_mae_jax.train import workdir_lock


@pytest.fixture(scope="module")
def runs(tmp_path_factory, env):
    """The module's runs that end on their own, in the background. Both run "forever"
    (FOREVER: one pair of compiled programs); the full-disk run starts once the diverging
    run has ended, and reads their programs from the compilation cache instead of compiling
    them too."""
    tmp = tmp_path_factory.mktemp("runs")
    out = {
        "diverges": Started(
            train_cmd(tmp / "diverges", **FOREVER, **{"data.norm_std": 1e-30}),
            env,
            tmp / "diverges.log",
        ),
    }
    out["diverges"].proc.wait(timeout=TIMEOUT)
    out["full disk"] = Started(
        train_cmd(tmp / "full_disk", **{**FOREVER, "ckpt_every_steps": 2}),
        no_cache_writes(env),
        tmp / "full_disk.log",
        preexec_fn=small_files,
    )
    return out


@pytest.mark.slow
def test_divergence_stops_with_one_line(runs):
    """A non-finite loss (inputs scaled by 1e30) ends the run with one line naming the step
    and the latest good checkpoint; the process exits (it used to hang in the destructor of
    the data iterator, like any error that ended a run while batches were in flight)."""
    line = error_line(runs["diverges"].result())
    assert "non-finite loss (nan) or gradient norm (nan) at step 1;" in line, line
    assert "latest good checkpoint: none was saved" in line


def test_full_disk_is_one_line_and_an_exit(runs):
    """A checkpoint write that fails (a file size limit stands in for a full disk) ends the
    run with one line saying so and what still exists; no hang."""
    # orbax's background threads log their own tracebacks before the run ends
    line = error_line(runs["full disk"].result(), traceback_ok=True)
    assert "writing a checkpoint to" in line and "File too large" in line, line
    assert "newest complete checkpoint: none" in line


@pytest.mark.slow
def test_ctrl_c_and_a_second_trainer(tmp_path, env, runs):
    """A second trainer on a busy workdir refuses, naming the holder; Ctrl-C then ends the
    first with status 130 and releases the workdir. (After the background runs: this one
    runs two trainers at once.)"""
    for r in runs.values():
        r.result()
    wd = tmp_path / "run"
    first = subprocess.Popen(
        train_cmd(wd, **FOREVER),
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
        second = run_cmd(train_cmd(wd, **FOREVER), env)
        line = error_line(second)
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
    cmd = train_cmd(ro / "run", total_steps=2)
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
    r = run_cmd(cmd, env)
    if r.returncode != 2 and "mount" in r.stderr:
        pytest.skip(f"no read-only bind mount here: {r.stderr.strip()[-200:]}")
    line = error_line(r)
    assert f"{ro / 'run'} is not writable" in line and "ead-only" in line, line
