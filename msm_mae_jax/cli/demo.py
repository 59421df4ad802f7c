"""`msm-mae demo`, behind `make demo`: pre-train, export, probe, compare with baselines.

    msm-mae demo --workdir runs/demo [--steps N] [--config VARIANT] [--config.KEY=VALUE ...]

1. pre-trains the tiny MSM-MAE on the built-in synthetic audio (unlabelled use),
2. exports the encoder artifact,
3. runs the EVAR linear probe on held-out labelled synthetic clips for the exported model,
   the `logmel` baseline and the same encoder with random weights,
4. prints the table and writes everything under --workdir.
The same command uses a GPU/TPU when jax sees one. The workflow lives in
msm_mae_jax/evaluation/demo.py.
"""

from __future__ import annotations

import argparse
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
    spec = args.config if ":" in args.config else f"configs/msm_mae.py:{args.config}"
    # a bad spec, key or value fails here, before jax starts
    config = config_args.parse_config(args.config, extras)
    from msm_mae_jax.evaluation import demo

    if args.steps > 0:
        demo.set_steps(config, args.steps, config_args.override_keys(extras))
    print(f"[demo] {common.backend_line()}", flush=True)
    log = lambda m: print(m, flush=True)  # noqa: E731
    summary = demo.run(config, work, spec=spec, task=args.task, seeds=args.seeds, log=log)
    print("\n" + demo.table(summary))
    print(f"\n[demo] done in {time.time() - t_start:.0f} s. Outputs in {work}:")
    print("  train/         checkpoints, metrics.jsonl, TensorBoard (train/tb), config.json")
    print("  train/figures  reconstruction figures (input / masked / reconstruction)")
    print(f"  export/        encoder artifact: Runtime.load('{fs.join(work, 'export')}')")
    print(f"  {demo.RESULTS_FILE}   probe results of the three models")
    return 0


if __name__ == "__main__":
    sys.exit(main())
