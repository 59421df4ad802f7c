"""`msm-mae train`: pre-trains MSM-MAE.

    msm-mae train --config configs/msm_mae.py[:VARIANT] --workdir DIR [--config.key=value ...]

Restarting with the same --workdir resumes from its newest checkpoint that restores (damaged
ones are moved to DIR/damaged_checkpoints), with the same config: changes to keys that define
the run (batch size, seed, data, schedule, optimiser) are refused unless
--allow-config-change. One trainer per workdir (DIR/train.lock). Multi-host: run the
same command on every host (TPU pods and SLURM/Open MPI jobs are detected), or pass
--config.coordinator_address=host:port --config.num_processes=N --config.process_id=I.
The config, the data source and the paths are checked before jax or TensorFlow start.
Exit status: 0 done, 2 a mistake in the arguments, config or data (one line on stderr), 3
stopped by SIGTERM (a checkpoint saved; run the same command again to continue), 130 Ctrl-C.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from msm_mae_jax.cli import common, config_args
from msm_mae_jax.core import outputs
from msm_mae_jax.data import source_base
from msm_mae_jax.train import config_rules

DEFAULT_CONFIG = "msm_mae.py"  # the bundled file, whatever the current directory holds


def build_parser(prog: str, spec: str) -> common.Parser:
    p = common.Parser(
        prog=prog,
        description=__doc__.split("\n\n", 2)[2],
        epilog=config_args.help_epilog(spec),
        usage=f"{prog} --config PATH[:VARIANT] --workdir DIR [--config.KEY=VALUE ...]",
    )
    p.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        metavar="PATH[:VARIANT]",
        help="config file and variant: a bundled name (msm_mae.py) or just a variant, or "
        "a path with a separator (./mine.py) for a file of yours (default: the bundled "
        f"{DEFAULT_CONFIG}, its default variant)",
    )
    p.add_argument(
        "--workdir", required=True, help="run directory: checkpoints, logs, figures (resumes)"
    )
    p.add_argument(
        "--init-from",
        metavar="SRC",
        help="further pre-training: start from these weights (step 0, a fresh optimizer): "
        "converted official weights (encoder and decoder), an export (the encoder; the "
        "decoder from its initialiser) or a training workdir (DIR or DIR@STEP), local or "
        "gs://; the same as --config.init_from=SRC. Resuming never reads it again",
    )
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume even though keys that define the run (batch size, seed, data source, "
        "schedule, optimiser) differ from the checkpoint's config",
    )
    return p


def _prescan_config(argv: Sequence[str]) -> str:
    """The --config value before parsing, so that --help shows that config's defaults."""
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return DEFAULT_CONFIG


def main(argv: Sequence[str] | None = None, prog: str = "msm-mae train") -> int:
    return common.run_command(prog, _train, argv)


def _train(argv: list[str], prog: str) -> int:
    args, extras = build_parser(prog, _prescan_config(argv)).parse_known_args(argv)
    config = config_args.parse_config(args.config, extras)
    if args.init_from is not None:
        if config.init_from and config.init_from != args.init_from:
            raise common.UsageError(
                f"--init-from {args.init_from} and --config.init_from={config.init_from} "
                "differ; give one"
            )
        config.init_from = args.init_from
    config_rules.check_config(config)
    source_base.check_sources(config.data)
    outputs.check_dir(args.workdir, "--workdir")  # the lock creates it
    config_rules.check_init_from(config, args.workdir)
    common.setup_logging()

    import jax

    from msm_mae_jax.train import distributed, loop, preemption

    # The multi-process set-up must come before anything touches a device.
    line = common.backend_line(init=lambda: distributed.initialize(config))
    if jax.process_index() == 0:
        print(f"{prog}: {line}", flush=True)
    result = loop.train_and_evaluate(
        config, args.workdir, allow_config_change=args.allow_config_change
    )
    if jax.process_index() == 0:
        print(json.dumps({"final": result}, default=float), flush=True)
    if result.get("preempted"):
        if jax.process_index() == 0:
            line = preemption.stopped_message(args.workdir, result.get("preempted_at"))
            print(f"{prog}: {line}", file=sys.stderr, flush=True)
        return preemption.EXIT_PREEMPTED
    return 0
