"""`msm-mae embed`: audio files -> scene (and frame) embeddings in one .npz.

    msm-mae embed --checkpoint runs/base --out emb.npz clips/ more/*.flac one.wav
    msm-mae embed --checkpoint converted/ --out emb.npz --frames clips/

INPUTs are files (any extension soundfile reads), folders (searched recursively for audio
extensions) and globs. Any format, sample rate, channel count and length. Files that cannot
be read are skipped and listed in the summary and in the .npz (skipped_paths,
skipped_reasons). The .npz: paths [N] (as given, or relative to a folder argument), scene
float32 [N, D]; with --frames also frames [sum T_i, D], frame_offsets int64 [N + 1] and
timestamps_ms float32 [sum T_i] (file i: rows frame_offsets[i]:frame_offsets[i + 1]).
The file is written beside and swapped in (a kill leaves the old file or the new one); an
existing --out must be such a .npz (an input, a WAV or a CSV there is refused). See
msm_mae_jax/features/embed.py.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from msm_mae_jax.cli import common, encoder_args
from msm_mae_jax.core import fs, output_kinds, outputs
from msm_mae_jax.core.errors import UserError


def build_parser(prog: str) -> common.Parser:
    p = common.Parser(prog=prog, description=__doc__.split("\n\n", 1)[1])
    add = p.add_argument
    add("inputs", nargs="+", metavar="INPUT", help="audio file, folder or glob")
    encoder_args.add_encoder_args(p)
    add("--out", required=True, metavar="FILE", help="output .npz")
    add("--frames", action="store_true", help="also store per-file frame embeddings")
    add(
        "--step",
        type=common.number(int, 0),
        metavar="N",
        help="checkpoint step of a training workdir (default: latest)",
    )
    add(
        "--normalization",
        choices=("default", "dataset", "batch"),
        default="default",
        help="log-mel statistics: the model's choice (default), the stored ones, or each "
        "batch's own",
    )
    return p


def main(argv: Sequence[str] | None = None, prog: str = "msm-mae embed") -> int:
    return common.run_command(prog, _embed, argv)


def _embed(argv: list[str], prog: str) -> int:
    p = build_parser(prog)
    args = p.parse_args(argv)
    encoder_args.check_checkpoint(args)
    inputs = [
        outputs.Input(a, "one of the INPUT files") for a in args.inputs if not fs.is_remote(a)
    ]
    inputs.append(outputs.Input(args.checkpoint, "the checkpoint"))
    outputs.check_file(args.out, output_kinds.EMBEDDINGS, "--out", inputs)  # before any work
    from msm_mae_jax.features import embed

    items = embed.find_audio(args.inputs)
    common.setup_logging()
    print(f"{prog}: {common.backend_line()}", file=sys.stderr, flush=True)
    from msm_mae_jax.features.runtime import Runtime

    try:
        runtime = Runtime.load(args.checkpoint, step=args.step)
    except (FileNotFoundError, ValueError) as e:  # not a model dir, wrong parameters
        raise UserError(str(e)) from None
    t0 = time.perf_counter()
    result = embed.embed_files(
        runtime,
        items,
        frames=args.frames,
        batch_size=args.batch_size,
        normalization=args.normalization,
        progress=not args.no_progress,
    )
    out = embed.save_npz(result, args.out)
    for _, reason in result.skipped:
        print(f"{prog}: skipped {reason}", file=sys.stderr)
    n, d = result.scene_ND.shape
    skipped = ""
    if result.skipped:
        names = [name for name, _ in result.skipped]
        more = f" (+{len(names) - 5} more)" if len(names) > 5 else ""
        skipped = f"; skipped {len(names)}: {', '.join(names[:5])}{more}"
    print(
        f"embedded {n} of {len(items)} file(s) in {time.perf_counter() - t0:.1f} s -> {out} "
        f"(scene [{n}, {d}]{', frames' if args.frames else ''}){skipped}",
        flush=True,
    )
    return 0
