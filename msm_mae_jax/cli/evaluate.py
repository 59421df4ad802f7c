"""`msm-mae eval`: linear evaluation (EVAR protocol) of an encoder on a labelled task.

    msm-mae eval --checkpoint runs/base --task csv:data/esc50.csv --out results.json
    msm-mae eval --baseline logmel --task folder:data/birds
    msm-mae eval --baseline random --config configs/msm_mae.py:tiny --task synthetic

Tasks: csv:FILE (file, label and split or fold columns), folder:DIR (class sub-folders),
tfds:NAME, synthetic[:N]; see msm_mae_jax/evaluation/tasks.py. The logic lives in
msm_mae_jax/evaluation/linear.py.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from msm_mae_jax.cli import common, task_args
from msm_mae_jax.core import fs, outputs
from msm_mae_jax.core.errors import UserError


def build_parser(prog: str) -> common.Parser:
    p = common.Parser(prog=prog, description=__doc__.split("\n\n", 1)[1])
    add = p.add_argument
    add("--checkpoint", metavar="DIR", help="training workdir, exported or converted model dir")
    add("--baseline", choices=("logmel", "random"), help="evaluate a baseline instead")
    add(
        "--config",
        metavar="PATH[:VARIANT]",
        help="model config of the random baseline, e.g. configs/msm_mae.py:small_208 "
        "(default: ViT-B 80x208p16x16)",
    )
    task_args.add_task_args(p)
    add("--out", metavar="FILE", help="write the results as JSON here")
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
        "--batch-size",
        type=common.number(int, 1),
        metavar="N",
        default=32,
        help="clips per encoder call (default: 32)",
    )
    add(
        "--cache-dir",
        metavar="DIR",
        help="embedding cache (default: ~/.cache/msm_mae_jax/embeddings)",
    )
    add("--no-cache", action="store_true", help="neither read nor write the cache")
    add("--no-progress", action="store_true", help="no progress bars")


def main(argv: Sequence[str] | None = None, prog: str = "msm-mae eval") -> int:
    return common.run_command(prog, _evaluate, argv)


def _evaluate(argv: list[str], prog: str) -> int:
    p = build_parser(prog)
    args = p.parse_args(argv)
    if (args.checkpoint is None) == (args.baseline is None):
        p.error("give exactly one of --checkpoint and --baseline")
    if args.checkpoint and not fs.exists(args.checkpoint):
        raise UserError(f"--checkpoint {args.checkpoint}: no such model directory or workdir")
    if args.out:
        outputs.check_file(args.out)  # before the extraction, not after it
    from msm_mae_jax.evaluation import linear

    log = lambda m: print(m, file=sys.stderr, flush=True)
    try:
        task = task_args.parse_task(args)
        log(f"{prog}: {common.backend_line()}")
        result = linear.evaluate(
            task,
            checkpoint=args.checkpoint,
            baseline=args.baseline,
            config=args.config,
            layers=args.layers,
            layer_mode=args.layer_mode,
            norm=args.norm,
            unit_sec=args.unit_sec or None,
            batch_size=args.batch_size,
            cache_dir=None if args.no_cache else (args.cache_dir or linear.DEFAULT_CACHE_DIR),
            progress=not args.no_progress,
            seeds=tuple(range(args.seeds)),
            probe_kw={"lr": args.lr, "max_epochs": args.max_epochs, "patience": args.patience},
            log=log,
        )
    except UserError:
        raise
    except (ValueError, FileNotFoundError) as e:  # the library's checks of paths and values
        raise UserError(str(e)) from None
    print(linear.format_table(result))
    if args.out:
        fs.makedirs(fs.dirname(fs.absolute(args.out)))
        fs.write_text(args.out, json.dumps(result, indent=2))
    return 0
