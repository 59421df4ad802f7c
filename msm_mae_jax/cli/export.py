"""`msm-mae export`: the encoder of a training run -> an encoder artifact directory.

    msm-mae export --workdir RUN --out DIR [--step N]

The artifact holds the encoder parameters, model config, normalisation statistics and the
source run/step: what `Runtime.load` and `msm_mae_jax.hear.load_model` need, nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence

from msm_mae_jax.cli import common


def build_parser(prog: str) -> common.Parser:
    p = common.Parser(prog=prog, description=__doc__.split("\n\n", 1)[1])
    p.add_argument("--workdir", required=True, help="training run directory")
    p.add_argument(
        "--out",
        required=True,
        help="directory to write the encoder artifact to: new, empty or a model to replace",
    )
    p.add_argument(
        "--step", type=common.number(int, 0), default=None, help="checkpoint step (default: latest)"
    )
    return p


def main(argv: Sequence[str] | None = None, prog: str = "msm-mae export") -> int:
    return common.run_command(prog, _export, argv)


def _export(argv: list[str], prog: str) -> int:
    args = build_parser(prog).parse_args(argv)
    from msm_mae_jax.core import output_kinds, outputs
    from msm_mae_jax.core.errors import UserError

    run = outputs.Input(args.workdir, "the training workdir")
    outputs.check_dir(args.out, "--out", output_kinds.MODEL_DIR, [run], replaces=True)
    from msm_mae_jax.train.export import export

    try:
        path = export(args.workdir, args.out, args.step)
    except (FileNotFoundError, ValueError) as e:  # export's checks of the run and the step
        raise UserError(str(e)) from None
    print(f"exported {args.workdir} -> {path}")
    return 0
