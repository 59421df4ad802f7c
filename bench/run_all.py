"""Runs every benchmark and collects the figures in one JSON file (`make bench`).

Parts (each in its own process, so one failing or crashing part is recorded as an error and
the others still run; XLA flags and thread pools do not leak between parts):

- data_pipeline: tf.data log-mel pipeline vs a librosa loop (bench/data_pipeline.py);
- train_step_tiny: the tiny config's train step (seconds);
- train_step_base_208: ViT-B 80x208, batch 64, float32, with the PyTorch step interleaved
  when torch is installed (bench/train_step.py --torch);
- extract: Runtime.encode on 10 s clips vs the PyTorch feature extractor (bench/extract.py).

Sized to finish in about 10-15 minutes on a 2-core CPU. Usage:
    python bench/run_all.py --out bench/results.json [--only extract,train_step_tiny]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine_info  # noqa: E402


def _has_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


def parts(torch: bool) -> dict[str, list[str]]:
    """name -> command line (the JSON path is appended with --json)."""
    t = ["--torch"] if torch else []
    return {
        "data_pipeline": ["bench/data_pipeline.py", "--clips", "64", "--passes", "4"],
        "train_step_tiny": ["bench/train_step.py", "--variant", "tiny", "--batch", "16",
                            "--steps", "10", "--repeats", "3"],
        "train_step_base_208": ["bench/train_step.py", "--variant", "base_208", "--batch", "64",
                                "--steps", "3", "--repeats", "3", *t],
        "extract": ["bench/extract.py", "--batch", "8", "--repeats", "3",
                    *([] if torch else ["--no-torch"])],
    }  # fmt: skip


def run_part(name: str, cmd: list[str], timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, f"{name}.json")
        t0 = time.perf_counter()
        try:
            p = subprocess.run(
                [sys.executable, *cmd, "--json", out],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as e:
            tail = (e.stdout or b"")[-2000:]
            return {"error": f"timed out after {timeout:.0f} s", "stdout_tail": str(tail)}
        wall = time.perf_counter() - t0
        sys.stdout.write(p.stdout)
        if p.returncode != 0 or not os.path.isfile(out):
            return {
                "error": f"exit status {p.returncode}",
                "stderr_tail": p.stderr[-3000:],
                "wall_s": wall,
            }
        with open(out) as f:
            result = json.load(f)
        result["wall_s"] = wall
        return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    ap.add_argument("--only", default="", help="comma-separated part names")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch arms")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per part")
    a = ap.parse_args(argv)

    torch = _has_torch() and not a.no_torch
    todo = parts(torch)
    if a.only:
        names = [n.strip() for n in a.only.split(",") if n.strip()]
        unknown = sorted(set(names) - set(todo))
        if unknown:
            raise SystemExit(f"unknown part(s) {unknown}; known: {sorted(todo)}")
        todo = {n: todo[n] for n in names}
    results = {
        "machine": machine_info(),
        "torch_available": _has_torch(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
        "parts": {},
    }
    t0 = time.perf_counter()
    for name, cmd in todo.items():
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        r = run_part(name, cmd, a.timeout)
        if "error" in r:
            print(f"   FAILED: {r['error']}\n{r.get('stderr_tail', '')[-1500:]}", flush=True)
        results["parts"][name] = r
    results["wall_s"] = time.perf_counter() - t0
    results["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=2)
    failed = [n for n, r in results["parts"].items() if "error" in r]
    print(
        f"wrote {a.out} ({results['wall_s']:.0f} s); "
        + (f"FAILED parts: {failed}" if failed else "all parts ran")
    )
    return results


if __name__ == "__main__":
    main()
