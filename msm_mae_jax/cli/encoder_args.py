"""The encoder flags that `embed` and `eval` share: which model, clips per encoder call,
progress bars; and the check that the model is there (before jax starts)."""

from __future__ import annotations

import argparse

from msm_mae_jax.cli import common
from msm_mae_jax.core import fs
from msm_mae_jax.core.errors import UserError


def add_encoder_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """--checkpoint (required unless a baseline can stand in), --batch-size, --no-progress."""
    add = p.add_argument
    add(
        "--checkpoint",
        required=required,
        metavar="DIR",
        help="training workdir, exported or converted model dir",
    )
    add(
        "--batch-size",
        type=common.number(int, 1),
        metavar="N",
        default=32,
        help="clips per encoder call (default: 32)",
    )
    add("--no-progress", action="store_true", help="no progress bars")


def check_checkpoint(args: argparse.Namespace) -> None:
    """A --checkpoint given must exist (a local path or a URL); one line naming it otherwise."""
    if args.checkpoint and not fs.exists(args.checkpoint):
        raise UserError(f"--checkpoint {args.checkpoint}: no such model directory or workdir")
