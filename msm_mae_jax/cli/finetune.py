"""`msm-mae finetune`: fine-tune a pre-trained encoder + a linear head on a labelled task.

    msm-mae finetune --checkpoint DIR --task SPEC [--label L] --out FILE.json
        [--workdir DIR] [--config configs/finetune.py:VARIANT] [--config.KEY=VALUE ...]
    msm-mae finetune --random-init configs/msm_mae.py:VARIANT --task SPEC --out FILE.json

--checkpoint: a training workdir, an exported model or converted official weights;
--random-init: the encoder of a model config with random weights (the baseline).
--task: csv:FILE | folder:DIR | tfds:NAME | synthetic[:N] (as `msm-mae eval`). Every fold and
config.num_seeds seeds are fine-tuned; the results (mean ± std of the test accuracy, or mAP
for multi-label tasks) are printed and written to --out. Runs live in --workdir (default: the
--out path without .json, plus `_finetune`); the same command again resumes them.
Exit status: 0 done, 2 a mistake in the arguments or data (one line on stderr), 3 stopped by
SIGTERM (state saved; run the same command again to continue), 130 Ctrl-C. The logic lives in
msm_mae_jax/finetune/.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from msm_mae_jax.cli import common, task_args
from msm_mae_jax.core import output_kinds, outputs
from msm_mae_jax.core.errors import ConfigError

CONFIG_FILE = "finetune.py"  # the bundled file, whatever the current directory holds
DEFAULT_CONFIG = f"{CONFIG_FILE}:base"


def build_parser(prog: str) -> common.Parser:
    p = common.Parser(prog=prog, description=__doc__.split("\n\n", 1)[1])
    add = p.add_argument
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="DIR", help="training workdir, export or converted")
    src.add_argument(
        "--random-init",
        metavar="MODEL_CONFIG",
        help="fine-tune a randomly initialised encoder of this model config instead (a "
        "baseline), e.g. configs/msm_mae.py:fsdd_small",
    )
    task_args.add_task_args(p)
    add("--out", metavar="FILE", help="write the results as JSON here")
    add(
        "--workdir",
        metavar="DIR",
        help="run directory: new, empty or this job's (resumed) (default: from --out)",
    )
    add(
        "--config",
        default=DEFAULT_CONFIG,
        metavar="PATH[:VARIANT]",
        help=f"fine-tuning config (default: {DEFAULT_CONFIG}; variants base, frozen, fsdd, "
        "tiny); any key: --config.KEY=VALUE, e.g. --config.epochs=20",
    )
    add("--no-progress", action="store_true", help="no progress bars")
    return p


def load_config(spec: str, extras: Sequence[str]):
    """The fine-tuning config of `spec` with the `--config.KEY=VALUE` overrides applied."""
    from msm_mae_jax.cli import config_args
    from msm_mae_jax.finetune import config_rules

    try:  # a bare VARIANT names the bundled finetune.py
        config = config_args.parse_config(spec, extras, default_file=CONFIG_FILE)
    except AttributeError:
        raise ConfigError(
            f"--config {spec}: not a config file (no get_config()); the fine-tuning configs "
            f"are {CONFIG_FILE}:VARIANT"
        ) from None
    config_rules.check_config(config)
    return config


def default_workdir(out: str | None) -> str:
    if not out:
        raise ConfigError("give --workdir (or --out, which names the default workdir)")
    return os.path.splitext(os.path.abspath(out))[0] + "_finetune"


def main(argv: Sequence[str] | None = None, prog: str = "msm-mae finetune") -> int:
    return common.run_command(prog, _finetune, argv)


def _finetune(argv: list[str], prog: str) -> int:
    args, extras = build_parser(prog).parse_known_args(argv)
    config = load_config(args.config, extras)
    workdir = args.workdir or default_workdir(args.out)
    inputs = task_args.task_inputs(args)
    if args.out:  # the outputs before any work
        outputs.check_file(args.out, output_kinds.RESULTS, "--out", inputs)
    flag = "--workdir" if args.workdir else "--workdir (from --out)"
    outputs.check_dir(workdir, flag, output_kinds.FINETUNE_WORKDIR, inputs)
    if args.checkpoint and not os.path.exists(args.checkpoint):
        raise ConfigError(f"--checkpoint {args.checkpoint}: no such model directory or workdir")
    if args.random_init:
        from msm_mae_jax.model.config import load_model_config

        load_model_config(args.random_init)  # a bad spec fails before start-up
    # Before jax starts: a task's mistakes (one class, an empty split, no such label) are
    # reported in a second, not after the accelerator and the model have been set up.
    task = task_args.parse_task(args)
    from msm_mae_jax.finetune import results, run
    from msm_mae_jax.train import preemption

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    log(f"{prog}: {common.backend_line()}")
    encoder = (
        run.random_init(args.random_init, int(config.seed))
        if args.random_init
        else run.load_pretrained(args.checkpoint)
    )
    result = run.finetune(task, encoder, config, workdir, log=log, progress=not args.no_progress)
    if result is None:
        log(f"{prog}: {preemption.stopped_message(workdir)}")
        return preemption.EXIT_PREEMPTED
    print(results.format_table(result))
    if args.out:
        outputs.write_text(args.out, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
