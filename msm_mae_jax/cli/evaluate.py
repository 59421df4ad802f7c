"""`msm-mae eval`: linear evaluation (EVAR protocol) of an encoder on a labelled task, or on a
whole folder of tasks (`--suite`).

    msm-mae eval --checkpoint runs/base --task csv:data/esc50.csv --out results.json
    msm-mae eval --baseline logmel --task folder:data/birds
    msm-mae eval --baseline random --config configs/msm_mae.py:tiny --task synthetic
    msm-mae eval --checkpoint runs/base --suite tasks/ --out results/base

Tasks: csv:FILE (file, label and split or fold columns), folder:DIR (class sub-folders),
tfds:NAME, synthetic[:N]; see msm_mae_jax/tasks/specs.py. --suite DIR runs every task of
DIR (NAME.json + NAME.csv as `msm-mae tasks make` writes them, or EVAR's metadata CSVs such as
esc50.csv with their audio in --suite-audio ROOT/<task>/), each with its own unit_sec, writes
OUT/NAME.json per task as it completes and the table (OUT/summary.csv, Markdown on stdout);
the same command again reuses the finished tasks. Exit status: 0, 1 when a task of the suite
failed (the others complete), 2 a mistake in the arguments. The logic lives in
msm_mae_jax/evaluation/linear.py and msm_mae_jax/evaluation/suite.py.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from msm_mae_jax.cli import common, encoder_args, task_args
from msm_mae_jax.core import output_kinds, outputs
from msm_mae_jax.core.errors import UserError

if TYPE_CHECKING:  # jax is imported once the arguments are checked
    from msm_mae_jax.evaluation.protocol import Model, Protocol


def build_parser(prog: str) -> common.Parser:
    p = common.Parser(prog=prog, description=__doc__.split("\n\n", 1)[1])
    add = p.add_argument
    encoder_args.add_encoder_args(p, required=False)
    add("--baseline", choices=("logmel", "random"), help="evaluate a baseline instead")
    add(
        "--config",
        metavar="PATH[:VARIANT]",
        help="model config of the random baseline, e.g. configs/msm_mae.py:small_208 "
        "(default: ViT-B 80x208p16x16)",
    )
    task_args.add_task_args(p, required=False)
    add("--suite", metavar="DIR", help="evaluate every task of DIR instead of one --task")
    add(
        "--suite-audio",
        metavar="ROOT",
        help="audio of EVAR's metadata CSVs in --suite: ROOT/<task>/ (EVAR's work/16k; "
        "default: DIR/../../work/16k)",
    )
    add("--suite-tasks", metavar="LIST", help="only these tasks of --suite, e.g. esc50,us8k")
    add(
        "--out",
        metavar="PATH",
        help="the results JSON (--task); the results folder (--suite; default: "
        "evar-results/<model>)",
    )
    _add_probe_args(add)
    return p


def _add_probe_args(add: Any) -> None:
    """Layers, normalisation, clip length and the EVAR probe recipe."""
    add("--layers", metavar="LIST", help="probe block outputs: 'all' or e.g. '4,8,12' (1-based)")
    add(
        "--layer-mode",
        choices=("separate", "concat"),
        default="separate",
        help="probe each requested layer, or their concatenation (default: separate)",
    )
    add(
        "--norm",
        choices=("task", "checkpoint"),
        default="task",
        help="log-mel statistics: the task's training clips (EVAR, default) or the model's",
    )
    add(
        "--unit-sec",
        type=common.number(float, 0, note=" (0: the longest clip)"),
        metavar="SEC",
        default=0.0,
        help="clip length in seconds (pad/crop as EVAR); 0 (default): longest clip, <= 10 s",
    )
    add(
        "--seeds",
        type=common.number(int, 1),
        metavar="N",
        default=3,
        help="classifier seeds, mean ± std (default: 3)",
    )
    add(
        "--first-seed",
        type=int,
        metavar="N",
        default=42,
        help="the seeds are N, N+1, ...; the first also draws the random crops of training "
        "clips (default: 42, EVAR's 42, 43, 44)",
    )
    add(
        "--lr",
        type=common.number(float, 0, above=True),
        default=3e-4,
        help="probe learning rate (default: 3e-4)",
    )
    add(
        "--max-epochs",
        type=common.number(int, 1),
        metavar="N",
        default=200,
        help="probe epochs at most (default: 200)",
    )
    add(
        "--patience",
        type=common.number(int, 0),
        metavar="N",
        default=20,
        help="early-stopping patience (default: 20)",
    )
    add(
        "--cache-dir",
        metavar="DIR",
        help="embedding cache (default: ~/.cache/msm_mae_jax/embeddings)",
    )
    add("--no-cache", action="store_true", help="neither read nor write the cache")


def main(argv: Sequence[str] | None = None, prog: str = "msm-mae eval") -> int:
    return common.run_command(prog, _evaluate, argv)


def _evaluate(argv: list[str], prog: str) -> int:
    p = build_parser(prog)
    args = p.parse_args(argv)
    if (args.checkpoint is None) == (args.baseline is None):
        p.error("give exactly one of --checkpoint and --baseline")
    if (args.task is None) == (args.suite is None):
        p.error("give exactly one of --task and --suite")
    encoder_args.check_checkpoint(args)
    if args.seeds < 1 or args.first_seed < 0:
        p.error(f"--seeds {args.seeds} --first-seed {args.first_seed}: need >= 1 and >= 0")
    if args.suite is not None:
        return _suite(args, prog, p)
    if args.out:  # before the extraction, not after it
        outputs.check_file(args.out, output_kinds.RESULTS, "--out", task_args.task_inputs(args))
    from msm_mae_jax.evaluation import linear

    try:
        task = task_args.parse_task(args)
        _log(f"{prog}: {common.backend_line()}")
        result = linear.evaluate(
            task,
            _model(args),
            _protocol(args),
            unit_sec=args.unit_sec or None,
            log=_log,
            **_run_kw(args),
        )
    except UserError:
        raise
    except (ValueError, FileNotFoundError) as e:  # the library's checks of paths and values
        raise UserError(str(e)) from None
    print(linear.format_table(result))
    if args.out:
        outputs.write_text(args.out, json.dumps(result, indent=2))
    return 0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _model(args: Any) -> Model:
    """What the flags evaluate."""
    from msm_mae_jax.evaluation.protocol import Model

    return Model(args.checkpoint, args.baseline, args.config)


def _protocol(args: Any) -> Protocol:
    """How the flags evaluate it."""
    from msm_mae_jax.evaluation.protocol import Protocol

    return Protocol(
        seeds=tuple(range(args.first_seed, args.first_seed + args.seeds)),
        norm=args.norm,
        layers=args.layers,
        layer_mode=args.layer_mode,
        probe_kw={"lr": args.lr, "max_epochs": args.max_epochs, "patience": args.patience},
        label=args.label,
        split_seed=args.split_seed,
    )


def _run_kw(args: Any) -> dict:
    """How the evaluation runs (not what it computes): batch, cache, progress bars."""
    from msm_mae_jax.evaluation.embeddings import DEFAULT_CACHE_DIR

    return {
        "batch_size": args.batch_size,
        "cache_dir": None if args.no_cache else (args.cache_dir or DEFAULT_CACHE_DIR),
        "progress": not args.no_progress,
    }


def _suite(args: Any, prog: str, p: common.Parser) -> int:
    """--suite: every task of the folder, the table; 1 when a task failed."""
    for flag in ("unit_sec", "audio_dir", "file_column"):
        if getattr(args, flag):
            p.error(f"--{flag.replace('_', '-')} applies to --task; each suite task has its own")
    from msm_mae_jax.evaluation import suite_tasks

    only = (
        [t.strip() for t in args.suite_tasks.split(",") if t.strip()] if args.suite_tasks else None
    )
    # every task's settings, before jax starts: a broken one is one line in a second
    found = suite_tasks.discover(args.suite, args.suite_audio, only, log=_log)
    from msm_mae_jax.evaluation import suite, suite_outputs, suite_summary
    from msm_mae_jax.evaluation.embeddings import check_arguments

    model, protocol = _model(args), _protocol(args)
    try:  # mistakes every task would repeat: one line, before any work
        check_arguments(model.checkpoint, model.baseline, protocol.norm, protocol.layer_mode)
        model.input_prefix()
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    out = args.out or suite.default_out_dir(model)
    suite_outputs.check_out_dir(out, args.suite, found, model)
    _log(f"{prog}: {common.backend_line()}")
    _log(
        f"{prog}: {len(found)} task(s) ({', '.join(t.name for t in found)}), seeds "
        f"{list(protocol.seeds)}, results in {out} (run the same command again to resume)"
    )
    outcomes = suite.run_suite(found, model, protocol, out, log=_log, **_run_kw(args))
    print(suite_summary.write_summary(out, outcomes, model))
    failed = [o.task.name for o in outcomes if o.status == "failed"]
    if failed:
        _log(
            f"{prog}: {len(failed)} of {len(outcomes)} task(s) failed ({', '.join(failed)}); "
            "the others are in the table. Fix them and run the same command again: finished "
            "tasks are reused"
        )
        return 1
    return 0
