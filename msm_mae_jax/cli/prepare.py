"""`msm-mae prepare`: precompute the log-mels of an audio corpus into shards (`lms:` source).

    msm-mae prepare SRC OUT [--shard-size N] [--workers N] [--dtype float16]

SRC is a directory (scanned recursively, `--pattern` globs), a glob, or a `files:` spec.
Re-running resumes: complete shards are kept. See msm_mae_jax/data/prepare.py.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from msm_mae_jax.cli import common


def build_parser(prog: str) -> common.Parser:
    from msm_mae_jax.data.prepare import DTYPES

    p = common.Parser(prog=prog, description=__doc__.split("\n\n", 1)[1])
    p.add_argument("src", help="audio directory, glob, or files: spec")
    p.add_argument(
        "out", help="output directory: new, empty or one prepare wrote (re-run to resume)"
    )
    p.add_argument(
        "--shard-size",
        type=common.number(int, 1),
        default=1024,
        help="files per shard (default: 1024)",
    )
    p.add_argument(
        "--workers", type=common.number(int, 0), default=0, help="processes (default 0: all cores)"
    )
    p.add_argument("--dtype", choices=DTYPES, default="float16", help="default: float16")
    p.add_argument("--pattern", default="*", help="comma-separated globs below a directory")
    p.add_argument(
        "--max-seconds",
        type=common.number(float, 0, note=" (0: whole files)"),
        default=0.0,
        help="keep only the first N seconds of each file (default 0: whole files)",
    )
    return p


def main(argv: Sequence[str] | None = None, prog: str = "msm-mae prepare") -> int:
    return common.run_command(prog, _prepare, argv)


def _prepare(argv: list[str], prog: str) -> int:
    args = build_parser(prog).parse_args(argv)
    from msm_mae_jax.core import output_kinds, outputs
    from msm_mae_jax.core.errors import UserError

    src = args.src.removeprefix("files:")
    src = outputs.Input(src.split("*")[0].split("?")[0].split("[")[0] or ".", "SRC, the corpus")
    outputs.check_dir(args.out, "OUT", output_kinds.LMS_DIR, [src])  # before any file is read
    from msm_mae_jax.data.prepare import prepare

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        m = prepare(
            args.src,
            args.out,
            shard_size=args.shard_size,
            workers=args.workers or None,
            dtype=args.dtype,
            pattern=args.pattern,
            max_seconds=args.max_seconds,
        )
    except UserError:
        raise
    except ValueError as e:  # prepare's checks of its arguments
        raise UserError(str(e)) from None
    print(
        f"{m['num_records']} clips in {len(m['shards'])} shard(s), {len(m['skipped'])} "
        f"skipped; mean {m['norm_stats']['mean']:.4f} std {m['norm_stats']['std']:.4f}"
    )
    return 0
