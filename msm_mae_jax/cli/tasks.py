"""`msm-mae tasks`: the paper's EVAR downstream tasks, built from the datasets as published.

    msm-mae tasks list
    msm-mae tasks make esc50 /data/ESC-50-master tasks/
    msm-mae tasks make gtzan /data/gtzan/genres tasks/

`make` writes OUT_DIR/NAME.csv (EVAR's metadata format: file_name,label,split or
file_name,label,fold) and OUT_DIR/NAME.json (clip length, folds, metric, published numbers,
clips found, where the split comes from). A folder with part of a dataset gives a task of
what is there. See msm_mae_jax/tasks/evar/make.py; README "The paper's tasks (EVAR)".
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from msm_mae_jax.cli import common


def build_parser(prog: str) -> common.Parser:
    from msm_mae_jax.tasks.evar.table import ORDER

    p = common.Parser(prog=prog, description=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="action", required=True, metavar="{list,make}")
    sub.add_parser("list", help="the tasks: protocol, clips, published numbers, folder to give")
    make = sub.add_parser("make", help="build one task's CSV and settings from its dataset")
    make.add_argument("name", metavar="NAME", help=f"one of: {', '.join(ORDER)}")
    make.add_argument("dataset_dir", metavar="DATASET_DIR", help="the dataset as downloaded")
    make.add_argument("out_dir", metavar="OUT_DIR", help="where NAME.csv and NAME.json go")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "msm-mae tasks") -> int:
    return common.run_command(prog, _tasks, argv)


def _tasks(argv: list[str], prog: str) -> int:
    args = build_parser(prog).parse_args(argv)
    from msm_mae_jax.tasks.evar import make

    if args.action == "list":
        print("\n".join(make.describe_tasks()))
        return 0
    if args.name not in make.BUILDERS:
        close = difflib.get_close_matches(args.name, make.BUILDERS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise common.UsageError(
            f"unknown task {args.name!r}{hint} (tasks: {', '.join(make.BUILDERS)})"
        )
    made = make.make_task(args.name, args.dataset_dir, args.out_dir)
    print("\n".join(made.lines), flush=True)
    return 0
