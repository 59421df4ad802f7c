"""bench/ scripts in a test: a script's `main` in a fresh process after a plant (code that
makes one arm do other work), and the check that the script then refused to time it."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from tests.conftest import ROOT


def run_main(module: str, args: list[str], out: pathlib.Path, prelude: str = ""):
    """`module.main(args + ['--json', out])` in a fresh process, the module imported as `B`
    and `prelude` run first (a plant)."""
    code = f"import {module} as B\n{prelude}\nB.main({[*args, '--json', str(out)]!r})\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def assert_refused(p: subprocess.CompletedProcess, out: pathlib.Path) -> None:
    """The run exited non-zero with the one-line refusal and wrote no figures."""
    assert p.returncode != 0
    assert "the ratio would compare different work" in p.stderr
    assert "Traceback" not in p.stderr
    assert not out.exists()
