"""core/cpu_heap.py: where it applies, and that a CPU program's later calls fault in no pages."""

import subprocess
import sys

import pytest

from msm_mae_jax.core import cpu_heap

# A jitted program with a 100 MB temporary (the product), run from a second thread as XLA's
# own threads do: glibc would serve it by mmap (over its mmap threshold, and over what a
# thread's own arena holds). The page faults of its third call.
PROGRAM = """
import resource, threading
import jax, jax.numpy as jnp

f = jax.jit(lambda x: jnp.sum((x @ x.T) @ x))
x = jnp.full((5000, 64), 1e-3)
faults = []

def calls():
    for _ in range(2):
        f(x).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

thread = threading.Thread(target=calls)
thread.start()
thread.join()
faults = faults[0]
"""


def test_computes_on_cpu():
    assert cpu_heap.computes_on_cpu({"JAX_PLATFORMS": "cpu"})
    assert cpu_heap.computes_on_cpu({"JAX_PLATFORMS": " CPU "})
    assert not cpu_heap.computes_on_cpu({"JAX_PLATFORMS": "cuda"})
    assert not cpu_heap.computes_on_cpu({"JAX_PLATFORMS": "cpu,tpu"})


@pytest.mark.slow  # two fresh jax processes
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_later_calls_reuse_the_heap():
    """100 MB are ~24,000 pages: faulted in on every call with glibc's defaults
    (MSM_MAE_KEEP_HEAP=0), not in a process that called keep_heap() first. Both in fresh
    processes, side by side: this one's malloc may have been set by an in-process command."""
    code = f"from msm_mae_jax.core import cpu_heap\nprint(cpu_heap.keep_heap())\n{PROGRAM}"
    code += "print(faults)"
    runs = {}
    for keep in ("0", "1"):
        env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "MSM_MAE_KEEP_HEAP": keep}
        runs[keep] = subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True
        )
    out = {keep: p.communicate(timeout=120)[0].split() for keep, p in runs.items()}
    assert all(p.returncode == 0 for p in runs.values()), out
    assert out["0"][0] == "False" and int(out["0"][1]) > 20000, out
    assert out["1"][0] == "True" and int(out["1"][1]) < 500, out


def test_front_door_keeps_the_heap_before_the_command_starts(monkeypatch):
    """`msm-mae COMMAND` sets the malloc parameters before it imports the command (whose
    main starts jax's threads), and `--help` does not set them."""
    import importlib

    from msm_mae_jax.cli import main as cli_main

    calls = []
    monkeypatch.setattr(cpu_heap, "keep_heap", lambda: calls.append("keep_heap"))

    def import_module(name):
        calls.append(name)
        raise SystemExit(0)

    monkeypatch.setattr(importlib, "import_module", import_module)
    cli_main.main(["--help"])
    assert calls == []
    with pytest.raises(SystemExit):
        cli_main.main(["embed", "x.wav"])
    assert calls == ["keep_heap", "msm_mae_jax.cli.embed"]
