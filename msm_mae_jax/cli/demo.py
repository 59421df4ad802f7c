"""The end-to-end demo behind `make demo`: pre-train, export, probe, compare with baselines.

    msm-mae demo --workdir runs/demo [--steps N] [--config VARIANT] [--config.KEY=VALUE ...]

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
import sys
import time
from collections.abc import Sequence

from msm_mae_jax.cli import common
from msm_mae_jax.core import fs, outputs
from msm_mae_jax.core.errors import ConfigError


def build_parser(prog: str = "msm-mae demo") -> common.Parser:
    p = common.Parser(
        prog=prog,
        description=__doc__.split("\n\n", 1)[1],
        usage=f"{prog} [--workdir DIR] [--config VARIANT] [--steps N] [--task SPEC] "
        "[--seeds N] [--config.KEY=VALUE ...]",
        epilog="Keys of the config file set as for `msm-mae train` (--config.KEY=VALUE); "
        "--steps N also sets the checkpoint, figure and probe intervals unless they are given.",
    )
    p.add_argument("--workdir", default="runs/demo", help="default: runs/demo")
    p.add_argument("--config", default="demo", help="config spec: [path.py:]variant (demo)")
    p.add_argument("--steps", type=int, default=0, help="pre-training steps (0: the config's)")
    p.add_argument("--task", default="synthetic:1800", help="labelled task for the probe")
    p.add_argument("--seeds", type=int, default=3, help="classifier seeds (default: 3)")
    return p


def parse_args(
    argv: Sequence[str] | None = None, prog: str = "msm-mae demo"
) -> tuple[argparse.Namespace, list[str]]:
    """(the demo's arguments, the --config.KEY=VALUE overrides left for the config)."""
    args, extras = build_parser(prog).parse_known_args(argv)
    if args.steps < 0:
        raise ConfigError(f"--steps {args.steps}: pre-training steps are >= 1 (0: the config's)")
    if args.seeds < 1:
        raise ConfigError(f"--seeds {args.seeds}: the probe needs at least one seed")
    return args, extras


def main(argv: Sequence[str] | None = None, prog: str = "msm-mae demo") -> int:
    return common.run_command(prog, _demo, argv)


def _demo(argv: list[str], prog: str) -> int:
    args, extras = parse_args(argv, prog)
    from msm_mae_jax.cli import config_args

    t_start = time.time()
    work = fs.absolute(args.workdir)
    outputs.check_dir(work, "--workdir")  # before the long part
    train_dir, export_dir = fs.join(work, "train"), fs.join(work, "export")
    spec = args.config if ":" in args.config else f"configs/msm_mae.py:{args.config}"
    # a bad spec, key or value fails here, before jax starts
    config = config_args.parse_config(args.config, extras)
    from msm_mae_jax.evaluation import linear
    from msm_mae_jax.evaluation.protocol import Model, Protocol
    from msm_mae_jax.model.config import ModelConfig
    from msm_mae_jax.tasks import specs
    from msm_mae_jax.train import export, loop

    if args.steps > 0:
        given = config_args.override_keys(extras)
        config.total_steps = args.steps
        intervals = {
            "ckpt_every_steps": max(1, args.steps // 2),
            "figure_every_steps": max(1, args.steps // 3),
            "probe.every_steps": max(1, args.steps // 3),
        }
        for key, value in intervals.items():
            if key not in given:
                group, _, name = key.rpartition(".")
                (config[group] if group else config)[name] = value
    steps = int(config.total_steps)
    print(f"[demo] {common.backend_line()}", flush=True)

    print(f"[demo] 1/3 pre-training {spec} for {steps} steps in {train_dir}", flush=True)
    t0 = time.time()
    final = loop.train_and_evaluate(config, train_dir)
    train_s = time.time() - t0

    print(f"[demo] 2/3 exporting the encoder to {export_dir}", flush=True)
    export.export(train_dir, export_dir)

    print(f"[demo] 3/3 linear probe on {args.task}: model vs baselines", flush=True)
    task = specs.parse_task(args.task)
    protocol = Protocol(seeds=tuple(range(args.seeds)))
    log = lambda m: print(f"[demo]   {m}", flush=True)  # noqa: E731
    models = {
        "msm_mae (pre-trained)": Model(checkpoint=export_dir),
        # the encoder as configured here, overrides included
        "random init (same encoder)": Model(
            baseline="random", config=ModelConfig.from_dict(config.model)
        ),
        "logmel baseline": Model(baseline="logmel"),
    }
    results = {
        name: linear.evaluate(task, m, protocol, progress=False, cache_dir=None, log=log)
        for name, m in models.items()
    }

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
    results_json = json.dumps(summary, indent=2, default=float)
    outputs.write_text(fs.join(work, "results.json"), results_json, "--workdir")
    print("\n" + table)
    print(f"\n[demo] done in {summary['wall_s']:.0f} s. Outputs in {work}:")
    print("  train/         checkpoints, metrics.jsonl, TensorBoard (train/tb), config.json")
    print("  train/figures  reconstruction figures (input / masked / reconstruction)")
    print(f"  export/        encoder artifact: Runtime.load('{export_dir}')")
    print("  results.json   probe results of the three models")
    return 0


if __name__ == "__main__":
    sys.exit(main())
