"""The accelerator benchmark: train-step throughput and MFU over batch sizes, then the real loop.

On whatever accelerator jax sees (all its devices, data parallel as the default mesh):

1. the production train step (`Setup.train_step_lean`, bf16 compute, float32 master weights)
   at global batches 256, 512, 1024, 2048 (each compiled once; a batch that does not fit in
   memory is skipped and reported): samples/s, MFU against the device's dense bf16 peak
   (table in bench/train_step.py, or `--peak-tflops`), peak memory (XLA memory analysis),
   compile time;
2. the real training loop (`train_and_evaluate`) for `--loop-steps` steps at the fastest batch,
   fed from `lms:` shards that `prepare` writes from synthetic 10 s clips in a temporary
   folder: end-to-end samples/s and the fraction of time the loop waited for data, over the
   log intervals after the first (which holds the compilation).

One JSON (`--json`), one printed table. Goals on one H100/H200: >= 45% MFU at the best batch,
data wait <= 5%. On CPU: `python bench/accelerator.py --variant tiny` (small batches, a short
loop; tests run it so).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import machine_info, write_synthetic_corpus  # noqa: E402
from bench.train_step import JaxStep, analytic_flops, device_peak_bf16  # noqa: E402

DEFAULT_BATCHES = (256, 512, 1024, 2048)


def _is_oom(e: BaseException) -> bool:
    text = f"{type(e).__name__}: {e}"
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def time_step(variant: str, batch: int, dtype: str, steps: int, peak: float | None) -> dict:
    """Compile and time the production step at one global batch."""
    t0 = time.perf_counter()
    js = JaxStep(variant, batch, dtype)
    build_s = time.perf_counter() - t0
    js.run(2)  # warm-up: first executions, allocator growth
    step_s = min(js.run(steps) for _ in range(2))
    flops = analytic_flops(js.model_config, batch)["step"]
    mem = js.memory() or {}
    out = {
        "batch": batch,
        "step_s": step_s,
        "samples_per_s": batch / step_s,
        "flops_per_s": flops / step_s,
        "compile_s": js.compile_s,
        "build_s": build_s,
        "peak_memory_bytes": mem.get("peak_bytes"),
        "loss": float(js.metrics["loss"]),
    }
    if peak:
        out["mfu"] = out["flops_per_s"] / (peak * jax.device_count())
    del js
    return out


def sweep(variant: str, batches, dtype: str, steps: int, peak: float | None) -> list[dict]:
    rows = []
    for b in batches:
        if b % jax.device_count():
            rows.append({"batch": b, "skipped": f"not divisible by {jax.device_count()} devices"})
            continue
        try:
            rows.append(time_step(variant, b, dtype, steps, peak))
        except Exception as e:  # noqa: BLE001 (an OOM surfaces as several XLA error types)
            if not _is_oom(e):
                raise
            rows.append({"batch": b, "skipped": "does not fit in device memory"})
        finally:
            jax.clear_caches()
        print(_row_text(rows[-1]), flush=True)
    return rows


def run_loop(variant: str, batch: int, dtype: str, steps: int, clips: int, workdir: str) -> dict:
    """`train_and_evaluate` for `steps` steps from freshly prepared lms shards."""
    from msm_mae_jax.core.config_files import load_config
    from msm_mae_jax.data import prepare
    from msm_mae_jax.train import loop

    audio_dir, lms_dir = os.path.join(workdir, "audio"), os.path.join(workdir, "lms")
    t0 = time.perf_counter()
    write_synthetic_corpus(audio_dir, clips, seconds=10.0)
    t1 = time.perf_counter()
    prepare.prepare(audio_dir, lms_dir, shard_size=256, progress=False)
    t2 = time.perf_counter()
    log_every = max(1, steps // 10)
    config = load_config(
        variant,
        {
            "batch_size": batch,
            "total_steps": steps,
            "warmup_steps": max(1, steps // 10),
            "model.dtype": dtype,
            "data.source": f"lms:{lms_dir}",
            "log_every_steps": log_every,
            "ckpt_every_steps": steps,
            "figure_every_steps": 0,
            "probe.every_steps": 0,
        },
    )
    t3 = time.perf_counter()
    loop.train_and_evaluate(config, os.path.join(workdir, "run"))
    loop_s = time.perf_counter() - t3
    with open(os.path.join(workdir, "run", "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    steady = [r for r in rows[1:] if np.isfinite(r.get("examples_per_sec", np.nan))] or rows
    return {
        "batch": batch,
        "steps": steps,
        "clips": clips,
        "write_audio_s": t1 - t0,
        "prepare_s": t2 - t1,
        "loop_s": loop_s,
        "samples_per_s": float(np.median([r["examples_per_sec"] for r in steady])),
        "data_wait_fraction": float(np.median([r["data_wait_fraction"] for r in steady])),
        "log_rows": len(rows),
        "final_loss": rows[-1]["loss"],
    }


def _row_text(r: dict) -> str:
    if "skipped" in r:
        return f"  batch {r['batch']:>5}: skipped ({r['skipped']})"
    mfu = f"{100 * r['mfu']:5.1f}%" if "mfu" in r else "  n/a"
    mem = r["peak_memory_bytes"]
    mem_txt = f"{mem / 2**30:6.2f} GiB" if mem else "     n/a"
    return (
        f"  batch {r['batch']:>5}: {r['samples_per_s']:>10.0f} samples/s  "
        f"{r['flops_per_s'] / 1e12:8.2f} TFLOP/s  MFU {mfu}  memory {mem_txt}  "
        f"compile {r['compile_s']:5.1f} s"
    )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="base_208", help="configs/msm_mae.py variant")
    ap.add_argument(
        "--batches",
        default=",".join(map(str, DEFAULT_BATCHES)),
        help="comma-separated global batches to sweep",
    )
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--steps", type=int, default=10, help="timed steps per batch size")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="dense bf16 peak per device")
    ap.add_argument("--loop-steps", type=int, default=200, help="steps of the real loop (0: off)")
    ap.add_argument("--loop-clips", type=int, default=0, help="synthetic clips (0: 4 x batch)")
    ap.add_argument("--workdir", default="", help="keep the corpus and run here (default: tmp)")
    ap.add_argument("--json", default="", help="write the figures to this file")
    a = ap.parse_args(argv)

    dev = jax.devices()[0]
    known = device_peak_bf16(dev)
    peak = a.peak_tflops * 1e12 if a.peak_tflops > 0 else (known[1] if known else None)
    batches = [int(b) for b in a.batches.split(",") if b.strip()]
    print(
        f"{a.variant} {a.dtype} on {dev.platform}:{dev.device_kind} x{jax.device_count()}"
        f"{f', peak {peak / 1e12:.0f} TFLOP/s per device' if peak else ', peak unknown'}",
        flush=True,
    )
    t0 = time.perf_counter()
    rows = sweep(a.variant, batches, a.dtype, a.steps, peak)
    timed = [r for r in rows if "skipped" not in r]
    best = max(timed, key=lambda r: r["samples_per_s"]) if timed else None
    result = {
        "variant": a.variant,
        "dtype": a.dtype,
        "device": f"{dev.platform}:{dev.device_kind}",
        "num_devices": jax.device_count(),
        "peak_bf16_flops_per_device": peak,
        "steps": rows,
        "best_batch": best["batch"] if best else None,
        "machine": machine_info(),
    }
    if best and a.loop_steps > 0:
        clips = a.loop_clips or 4 * best["batch"]
        print(
            f"real loop: {a.loop_steps} steps at batch {best['batch']} from lms shards", flush=True
        )
        if a.workdir:
            result["loop"] = run_loop(
                a.variant, best["batch"], a.dtype, a.loop_steps, clips, a.workdir
            )
        else:
            with tempfile.TemporaryDirectory() as tmp:
                result["loop"] = run_loop(
                    a.variant, best["batch"], a.dtype, a.loop_steps, clips, tmp
                )
        lp = result["loop"]
        print(
            f"  loop: {lp['samples_per_s']:.0f} samples/s end to end, data wait "
            f"{100 * lp['data_wait_fraction']:.1f}% (prepare {lp['prepare_s']:.1f} s, "
            f"loop {lp['loop_s']:.1f} s)"
        )
    result["wall_s"] = time.perf_counter() - t0
    print("\nbatch   samples/s   TFLOP/s    MFU     memory   compile")
    for r in rows:
        print(_row_text(r))
    if best and "mfu" in best:
        print(f"best batch {best['batch']}: MFU {100 * best['mfu']:.1f}% (goal >= 45%)")
    if "loop" in result:
        print(f"data wait {100 * result['loop']['data_wait_fraction']:.1f}% (goal <= 5%)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
