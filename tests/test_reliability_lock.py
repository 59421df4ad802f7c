"""The workdir lock: one trainer per workdir. A lock is stale only when its holder is known
to be gone (a dead pid, a restarted host, a heartbeat not refreshed); a trainer whose lock
another took stops at its next checkpoint and writes nothing more."""

import json
import os
import re
import socket
import time

import pytest
from run_utils import dead_pid
from train_utils import tiny_config

from msm_mae_jax.train import checkpoints, loop, workdir_lock

ONE_DEVICE = (("data", 1), ("fsdp", 1), ("tensor", 1))


def test_lock_staleness():
    host, now = socket.gethostname(), 0.0
    me = {"host": host, "pid": os.getpid(), "boot_id": workdir_lock._boot_id()}
    assert workdir_lock.stale_reason(me, now) is None
    dead = {**me, "pid": dead_pid()}
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
