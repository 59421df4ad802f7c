"""`msm-mae convert`: official MSM-MAE PyTorch weights -> an encoder artifact directory.

    msm-mae convert SRC OUT_DIR [--input-size 80x208] [--patch-size 16x16]
        [--num-heads H] [--decoder-num-heads H] (--norm-mean M --norm-std S | --per-batch-norm)

SRC is an official checkpoint (.pth, needs PyTorch) or a .npz of the same names. Sizes come
from the run-name prefix of the checkpoint's folder (80x208p16x16_...), else from the flags,
else from the tensors. See msm_mae_jax/model/convert.py.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence

from msm_mae_jax.cli import common


def _size(s: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)", s)
    if not m:
        raise argparse.ArgumentTypeError(f"{s!r}: expected AxB, e.g. 80x208")
    return int(m.group(1)), int(m.group(2))


def build_parser(prog: str) -> common.Parser:
    p = common.Parser(prog=prog, description=__doc__.split("\n\n", 1)[1])
    add = p.add_argument
    add("src", help="official .pth checkpoint or .npz of the same names")
    add("out_dir", help="output encoder artifact directory: new, empty or a model to replace")
    add("--input-size", type=_size, help="FxT, e.g. 80x208 (default: run name)")
    add("--patch-size", type=_size, help="phxpw, e.g. 16x16 (default: run name)")
    add("--num-heads", type=common.number(int, 1), help="encoder heads (default: width / 64)")
    add(
        "--decoder-num-heads",
        type=common.number(int, 1),
        help="decoder heads (default: width / 64)",
    )
    add("--norm-mean", type=common.number(float), help="log-mel mean of your data")
    add("--norm-std", type=common.number(float, 0, above=True), help="log-mel std of your data")
    add(
        "--per-batch-norm",
        action="store_true",
        help="normalise each batch by its own statistics (official HEAR wrapper)",
    )
    add("--no-decoder", action="store_true", help="do not keep decoder params")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "msm-mae convert") -> int:
    return common.run_command(prog, _convert, argv)


def _convert(argv: list[str], prog: str) -> int:
    p = build_parser(prog)
    a = p.parse_args(argv)
    if (a.norm_mean is None) != (a.norm_std is None):
        p.error("--norm-mean and --norm-std go together")
    if (a.norm_mean is None) == (not a.per_batch_norm):
        p.error(
            "give --norm-mean/--norm-std (statistics of your data) or --per-batch-norm; "
            "the official checkpoints carry no normalisation statistics"
        )
    from msm_mae_jax.core import output_kinds, outputs
    from msm_mae_jax.core.errors import UserError
    from msm_mae_jax.data.normalization import NormStats

    src = outputs.Input(a.src, "SRC, the weights")  # before the weights are read
    outputs.check_dir(a.out_dir, "OUT_DIR", output_kinds.MODEL_DIR, [src], replaces=True)
    from msm_mae_jax.model.convert import convert

    try:
        stats = NormStats(a.norm_mean, a.norm_std) if a.norm_mean is not None else None
    except ValueError as e:
        p.error(str(e))
    try:
        out = convert(
            a.src,
            a.out_dir,
            input_size=a.input_size,
            patch_size=a.patch_size,
            num_heads=a.num_heads,
            decoder_num_heads=a.decoder_num_heads,
            norm_stats=stats,
            per_batch_norm=a.per_batch_norm,
            keep_decoder=not a.no_decoder,
        )
    except (ImportError, FileNotFoundError) as e:  # no torch for a .pth; a missing file
        raise UserError(str(e)) from None
    print(f"wrote {out}")
    return 0
