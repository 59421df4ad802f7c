"""One trainer per workdir: WORKDIR/train.lock names its holder and is kept fresh.

The lock file is created atomically (O_EXCL) and holds the holder's host, boot id, pid and
start time; a daemon thread refreshes its modification time every `HEARTBEAT_SECONDS`. A
second trainer on the same workdir refuses to start, naming the holder. A lock left behind by
a run that died is taken over:
- on the same host (same host name and boot id): when its pid no longer exists;
- from another host (shared file systems): when it has not been refreshed for
  `STALE_AFTER_SECONDS` (the holder cannot be asked whether its pid is alive).
Multi-process runs: process 0 holds the lock; the others learn the outcome from it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from typing import Any

from msm_mae_jax.core.errors import ConfigError, UserError

log = logging.getLogger(__name__)

LOCK_NAME = "train.lock"
HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 600.0  # 20 missed heartbeats: the holder on another host is gone
_WRITE_GRACE_SECONDS = 2.0  # an empty or partial lock file younger than this is being written


class WorkdirLockedError(UserError):
    """Another trainer holds the workdir; the message names it (host, pid)."""


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """The start time of process `pid` in clock ticks since boot (Linux), else ''."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _read(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            info = json.load(f)
        return info if isinstance(info, dict) else None
    except (OSError, ValueError):
        return None


def _holder(info: dict[str, Any] | None) -> str:
    if not info:
        return "an unknown process (unreadable lock file)"
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}"


def stale_reason(info: dict[str, Any] | None, age_s: float) -> str | None:
    """Why the lock described by `info` (last refreshed `age_s` ago) is stale; None if held."""
    if info is None:
        return "unreadable lock file" if age_s > _WRITE_GRACE_SECONDS else None
    same_host = info.get("host") == socket.gethostname()
    if same_host and info.get("boot_id") and info.get("boot_id") != _boot_id():
        return "its host has restarted since"
    if same_host:
        pid = int(info.get("pid", -1))
        if pid <= 0 or not _pid_alive(pid):
            return f"pid {pid} no longer exists"
        started = info.get("pid_start")
        if started and _process_start(pid) not in ("", started):
            return f"pid {pid} now belongs to another process"
        return None
    if age_s > STALE_AFTER_SECONDS:
        return f"not refreshed for {age_s:.0f} s"
    return None


class WorkdirLock:
    """The lock of one workdir, held by this process until `release()`."""

    def __init__(self, workdir: str):
        self.workdir = os.path.abspath(workdir)
        self.path = os.path.join(self.workdir, LOCK_NAME)
        self._token: str | None = None  # in the file: tells our lock from a newer one
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None  # why the lock is no longer ours (heartbeat failures)

    def acquire(self) -> WorkdirLock:
        """Creates the lock file or raises WorkdirLockedError naming the holder."""
        info = {
            "host": socket.gethostname(),
            "boot_id": _boot_id(),
            "pid": os.getpid(),
            "pid_start": _process_start(os.getpid()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "token": secrets.token_hex(8),
        }
        for _ in range(30):  # a few rounds: takeovers, writers in progress (0.2 s waits)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._wait_or_take_over():
                    continue
                held = _read(self.path)
                age = self._age()
                raise WorkdirLockedError(
                    f"workdir {self.workdir} is in use by another trainer: {_holder(held)}"
                    f"{', started ' + held['started'] if held and 'started' in held else ''}"
                    f" (lock {self.path} refreshed {age:.0f} s ago); stop that run or use "
                    "another workdir"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(info, f)
            self._token = info["token"]
            self._thread = threading.Thread(
                target=self._heartbeat, name="workdir-lock-heartbeat", daemon=True
            )
            self._thread.start()
            return self
        raise WorkdirLockedError(f"workdir {self.workdir}: could not create {self.path}")

    def _age(self) -> float:
        try:
            return max(0.0, time.time() - os.stat(self.path).st_mtime)
        except FileNotFoundError:
            return 0.0

    def _wait_or_take_over(self) -> bool:
        """True when the caller should try to create the lock again (a stale one was moved
        away, or it vanished); False when a live trainer holds it."""
        try:
            with open(self.path, "rb") as f:
                seen = f.read()
        except FileNotFoundError:
            return True
        info, age = _read(self.path), self._age()
        reason = stale_reason(info, age)
        if reason is None:
            if info is None:  # being written right now
                time.sleep(0.2)
                return True
            return False
        # Move the stale lock aside under a name of our own; if another trainer replaced it
        # between our look and the rename, put theirs back (link: never over a new lock).
        aside = f"{self.path}.stale.{os.getpid()}.{time.time_ns()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True
        with open(aside, "rb") as f:
            moved = f.read()
        if moved != seen:
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            os.unlink(aside)
            return True
        os.unlink(aside)
        log.warning("took over the lock of %s: %s (%s)", self.workdir, _holder(info), reason)
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            problem = self.check()
            if problem:
                self.lost = problem
                log.error("%s", problem)
                return
            try:
                os.utime(self.path)
            except OSError as e:  # a file system hiccup: try again at the next beat
                log.warning("could not refresh %s: %s", self.path, e)

    def check(self) -> str | None:
        """None while the lock file is still ours, else what happened to it."""
        try:
            with open(self.path) as f:
                info = json.load(f)
        except FileNotFoundError:
            return f"{self.path} was removed while this run held it"
        except (OSError, ValueError):
            return self.lost  # unreadable now (a file system hiccup): not evidence
        if not isinstance(info, dict):
            return f"{self.path} was replaced"
        if info.get("token") != self._token:
            return f"{self.path} was taken over by {_holder(info)}"
        return self.lost

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._token is not None and self.check() is None:
            try:
                os.unlink(self.path)
            except OSError as e:
                log.warning("could not remove %s: %s", self.path, e)
        self._token = None


class _NoLock:
    """What processes other than 0 hold."""

    lost = None

    def check(self) -> str | None:
        return None

    def release(self) -> None:
        pass


def lock_workdir(workdir: str, is_main: bool = True, process_count: int = 1):  # noqa: ANN201
    """Creates the workdir and takes its lock (process 0; the others get its outcome).

    Raises ConfigError when the workdir cannot be written, WorkdirLockedError when another
    trainer holds it. Every process must call this (multi-process: one broadcast)."""
    lock: WorkdirLock | _NoLock = _NoLock()
    error: UserError | None = None
    if is_main:
        try:
            os.makedirs(workdir, exist_ok=True)
            lock = WorkdirLock(workdir).acquire()
        except UserError as e:
            error = e
        except OSError as e:  # read-only file system, permissions, a file in the way
            error = ConfigError(
                f"workdir {os.path.abspath(workdir)} is not writable ({e.strerror or e}); "
                "training writes its checkpoints and logs there"
            )
    if process_count > 1:
        import numpy as np  # noqa: PLC0415
        from jax.experimental import multihost_utils  # noqa: PLC0415

        ok = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
        if not ok and error is None:
            error = WorkdirLockedError(
                f"process 0 could not take the lock of workdir {workdir} (see its output)"
            )
    if error is not None:
        raise error
    return lock
