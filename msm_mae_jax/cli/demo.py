"""The end-to-end demo behind `make demo`: pre-train, export, probe, compare with baselines.

    msm-mae demo --workdir runs/demo [--steps N] [--config configs/msm_mae.py:tiny]

1. pre-trains the tiny MSM-MAE on the built-in synthetic audio (unlabelled use),
2. exports the encoder artifact,
3. runs the EVAR linear probe on held-out labelled synthetic clips for the exported model,
   the `logmel` baseline and the same encoder with random weights,
4. prints the table and writes everything under --workdir.
The same command uses a GPU/TPU when jax sees one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from msm_mae_jax.cli import common


def parse_args(argv: Sequence[str] | None = None, prog: str = "msm-mae demo") -> argparse.Namespace:
    p = common.Parser(prog=prog, description=__doc__.split("\n\n", 1)[1])
    p.add_argument("--workdir", default="runs/demo", help="default: runs/demo")
    p.add_argument("--config", default="demo", help="config spec: [path.py:]variant (demo)")
    p.add_argument("--steps", type=int, default=0, help="pre-training steps (0: the config's)")
    p.add_argument("--task", default="synthetic:1800", help="labelled task for the probe")
    p.add_argument("--seeds", type=int, default=3, help="classifier seeds (default: 3)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None, prog: str = "msm-mae demo") -> int:
    return common.run_command(prog, _demo, argv)


def _demo(argv: list[str], prog: str) -> int:
    args = parse_args(argv, prog)
    from msm_mae_jax.core.config_files import load_config

    t_start = time.time()
    work = os.path.abspath(args.workdir)
    train_dir, export_dir = os.path.join(work, "train"), os.path.join(work, "export")
    spec = args.config if ":" in args.config else f"configs/msm_mae.py:{args.config}"
    config = load_config(args.config)  # a bad spec fails here, before jax starts
    from msm_mae_jax.evaluation import linear, tasks
    from msm_mae_jax.train import export, loop

    if args.steps > 0:
        config.total_steps = args.steps
        config.ckpt_every_steps = max(1, args.steps // 2)
        config.figure_every_steps = max(1, args.steps // 3)
        config.probe.every_steps = max(1, args.steps // 3)
    steps = int(config.total_steps)
    print(f"[demo] {common.backend_line()}", flush=True)

    print(f"[demo] 1/3 pre-training {spec} for {steps} steps in {train_dir}", flush=True)
    t0 = time.time()
    final = loop.train_and_evaluate(config, train_dir)
    train_s = time.time() - t0

    print(f"[demo] 2/3 exporting the encoder to {export_dir}", flush=True)
    export.export(train_dir, export_dir)

    print(f"[demo] 3/3 linear probe on {args.task}: model vs baselines", flush=True)
    task = tasks.parse_task(args.task)
    shared = dict(
        seeds=tuple(range(args.seeds)),
        progress=False,
        cache_dir=None,
        log=lambda m: print(f"[demo]   {m}", flush=True),
    )
    runs = {
        "msm_mae (pre-trained)": dict(checkpoint=export_dir),
        "random init (same encoder)": dict(baseline="random", config=spec),
        "logmel baseline": dict(baseline="logmel"),
    }
    results = {name: linear.evaluate(task, **kw, **shared) for name, kw in runs.items()}

    rows = [f"{'model':<28} {'accuracy (%)':>16}  feature dim"]
    for name, r in results.items():
        acc = r["accuracy"]
        rows.append(
            f"{name:<28} {100 * acc['mean']:>7.2f} ± {100 * acc['std']:5.2f}  "
            f"{r['feature_dim']:>11}"
        )
    table = "\n".join(rows)
    summary = {
        "task": task.summary(),
        "pretraining": {
            "config": spec,
            "steps": steps,
            "seconds": round(train_s, 1),
            "final_metrics": final,
        },
        "results": results,
        "wall_s": round(time.time() - t_start, 1),
    }
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(summary, f, indent=2, default=float)
    print("\n" + table)
    print(f"\n[demo] done in {summary['wall_s']:.0f} s. Outputs in {work}:")
    print("  train/         checkpoints, metrics.jsonl, TensorBoard (train/tb), config.json")
    print("  train/figures  reconstruction figures (input / masked / reconstruction)")
    print(f"  export/        encoder artifact: Runtime.load('{export_dir}')")
    print("  results.json   probe results of the three models")
    return 0


if __name__ == "__main__":
    sys.exit(main())
