"""The real commands in a test: command lines, runs with a timeout (a command that hangs
instead of exiting fails its test instead of stalling the suite), runs in the background, the
one line of a user's mistake, a full disk, the pid of a process that has exited.

The environment of the runs is the `env` fixture (tests/conftest.py): one device, the
session's compilation cache."""

import resource
import subprocess
import sys
import time

from train_utils import RUN_FLAGS, run

TIMEOUT = 300  # seconds: a run that has not exited by then hangs (runs take 10-60 s)
MSM = [sys.executable, "-m", "msm_mae_jax"]


def cli(*args) -> list[str]:
    """`msm-mae ARGS...` (each argument as a string)."""
    return [*MSM, *[str(a) for a in args]]


def train_cmd(wd, *extra, **overrides) -> list[str]:
    """`msm-mae train --config tiny` in `wd`: RUN_FLAGS (the runs' shared compiled programs)
    with `overrides` (dotted keys), then `extra` arguments."""
    flags = {**RUN_FLAGS, **overrides}
    return [
        *MSM,
        "train",
        "--config",
        "tiny",
        "--workdir",
        str(wd),
        *[f"--config.{k}={v}" for k, v in flags.items()],
        *extra,
    ]


def run_cmd(cmd, env, **kw) -> subprocess.CompletedProcess:
    """`cmd` to its end within TIMEOUT (output captured as text)."""
    return run(cmd, env, TIMEOUT, **kw)


def error_line(r, traceback_ok=False) -> str:
    """The one `PROG: error: ...` line of a run that ended with a user's mistake (exit 2);
    `traceback_ok`: other tracebacks may precede it (orbax's threads log their own)."""
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    lines = [x for x in r.stderr.splitlines() if ": error: " in x]
    assert len(lines) == 1, r.stderr[-3000:]
    assert traceback_ok or "Traceback" not in r.stderr, r.stderr[-3000:]
    return lines[0]


class Started:
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


def no_cache_writes(env: dict) -> dict:
    """`env` for a run under the file size limit: it reads the session's compilation cache
    but writes nothing to it (a program it compiled first would be cut at the limit, and
    every later run would warn about the damaged entry and compile it again)."""
    return {**env, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1e9"}


def small_files() -> None:
    """A file size limit that stands in for a full disk: the logs fit, a checkpoint does not
    (a `preexec_fn` of the run)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))


def dead_pid() -> int:
    """The pid of a process that has exited (what a killed trainer leaves in its lock)."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid
