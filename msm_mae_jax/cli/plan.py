"""`msm-mae plan`: memory, FLOPs, collectives and a speed bound of a pre-training run on a TPU
slice, from the real train step compiled for that slice on this machine (no TPU needed).

    msm-mae plan --tpu v5e-256 --config base_208 --batch 4096 [--mesh data=64,fsdp=4]
    msm-mae plan --tpu v4-32,v5p-128 --config large_208 --batch-per-chip 128 --sweep --json p.json

--tpu takes Cloud's slice names (v4-8, v4-32, v5e-16, v5e-256, v5p-128, v6e-8, ...) or chip
topologies (v5e:4x4, v4:2x2x4). Each case compiles the loop's step for compile-only devices
of the slice (ViT-B takes minutes per case on a 2-core CPU) and reports per chip: memory
(arguments = state + batch, temporaries) against the chip's HBM, FLOPs, the collectives,
the compile time, and a roofline bound, step >= max(FLOPs / peak, HBM bytes / bandwidth),
from the chip's published figures, as the best possible samples/s and hours for AudioSet-2M
x 100 epochs. These are compiler figures, not timings. --sweep tries global batches and
meshes (all chips on data; data x fsdp) and recommends the fastest plan that fits.
--breakdown [N] adds where the FLOPs and bytes go, op by op (the N largest), and which part
of XLA's byte count is HBM traffic (the rest is on-chip memory).
TPU compilation needs libtpu, which is not in the default install: `make setup-tpu`
(or --libtpu PATH). --gpu h100-8 (a100, h200) plans for NVIDIA GPUs the same way, through
jax's CUDA plugin (`make setup-gpu-plan`, ~5 GB): memory and a compute-only bound.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence

from msm_mae_jax.cli import common, config_args
from msm_mae_jax.cli.train import DEFAULT_CONFIG, _prescan_config
from msm_mae_jax.core import output_kinds, outputs
from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.train.plan.targets import SWEEP_FSDP, SWEEP_PER_CHIP

BREAKDOWN_TOP = 15


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise ConfigError(f"{flag} {text!r}: expected positive integers, e.g. 1024 or 512,1024")
    return values


def build_parser(prog: str, spec: str) -> common.Parser:
    p = common.Parser(
        prog=prog,
        description=__doc__.split("\n\n", 2)[2],
        epilog=config_args.help_epilog(spec),
        usage=f"{prog} (--tpu SLICE[,...] | --gpu GPU-N[,...]) [--config PATH[:VARIANT]] "
        "[--batch N | --batch-per-chip N] [--mesh AXIS=SIZE,...] [--sweep] [--breakdown [N]] "
        "[--json FILE] "
        "[--config.KEY=VALUE ...]",
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--tpu", help="slices: v5e-16, v4-32, v5p-128 or v5e:4x4, ...")
    target.add_argument(
        "--gpu", help="NVIDIA GPUs: h100-8, a100-16, h200-8 (8 to a host; needs the CUDA plugin)"
    )
    p.add_argument("--config", default=DEFAULT_CONFIG, metavar="PATH[:VARIANT]", help="as train")
    p.add_argument("--batch", help="global batch size(s), e.g. 4096 or 2048,4096")
    p.add_argument("--batch-per-chip", help="global batch = this x the slice's chips")
    p.add_argument(
        "--mesh",
        action="append",
        help="mesh axes, e.g. data=16 or data=4,fsdp=4 (repeat for several; default: all "
        "chips on data)",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help=f"try batches (default {','.join(map(str, SWEEP_PER_CHIP))} per chip) and meshes "
        "(data; data x fsdp) and recommend the fastest that fits",
    )
    p.add_argument(
        "--fsdp",
        default=",".join(map(str, SWEEP_FSDP)),
        help="fsdp sizes the sweep tries (default %(default)s: a host's 4 chips)",
    )
    p.add_argument(
        "--breakdown",
        nargs="?",
        type=int,
        const=BREAKDOWN_TOP,
        metavar="N",
        help="per-op FLOPs and bytes of each compiled step, by phase, category, source and "
        f"the N largest ops (default {BREAKDOWN_TOP}); in --json too",
    )
    p.add_argument(
        "--json",
        help="write every plan to this JSON file (checked before compiling; rewritten, whole, "
        "after each case)",
    )
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--libtpu", help="libtpu.so, or a folder holding it (default: see README)")
    p.add_argument(
        "--cuda-plugin", help="folder of jax's CUDA plugin for --gpu (default: .venv/cuda-plan)"
    )
    return p


def main(argv: Sequence[str] | None = None, prog: str = "msm-mae plan") -> int:
    return common.run_command(prog, _plan, argv)


def _plan(argv: list[str], prog: str) -> int:
    args, extras = build_parser(prog, _prescan_config(argv)).parse_known_args(argv)
    config = config_args.parse_config(args.config, extras)
    if args.breakdown is not None and args.breakdown < 1:
        raise ConfigError(f"--breakdown {args.breakdown}: the number of largest ops to list, >= 1")
    if args.json:  # before the compiles (minutes each), not after them
        outputs.check_file(args.json, output_kinds.PLAN, "--json")
    from msm_mae_jax.train.plan import targets as targets_lib

    targets = targets_lib.targets(args.tpu, args.gpu, args.libtpu, args.cuda_plugin)
    case_kw = dict(
        batches=_ints(args.batch, "--batch") if args.batch else (),
        batches_per_chip=_ints(args.batch_per_chip, "--batch-per-chip")
        if args.batch_per_chip
        else (),
        meshes=args.mesh or (),
        sweep=args.sweep,
        fsdp=_ints(args.fsdp, "--fsdp"),
    )
    work = [(s, b, m) for s in targets.slices for b, m in targets_lib.cases(s, **case_kw)]
    common.setup_logging()
    from msm_mae_jax.train.plan import planner, report

    command = shlex.join(["msm-mae", "plan", *argv])
    _log(f"{prog}: {len(work)} case(s), {targets.source}")

    def save(plans: list, picks: Sequence = ()) -> None:
        if args.json:
            _write(args.json, report.document(plans, command, picks))

    plans = planner.plan_cases(
        config, targets, work, breakdown=bool(args.breakdown), log=_log, after_each=save
    )
    picks = []
    if args.sweep:
        picks = [planner.best([p for p in plans if p.slice == s]) for s in targets.slices]
    print(report.markdown(plans) if args.markdown else report.table(plans, picks))
    for s, pick in zip(targets.slices, picks, strict=False):
        print(report.recommendation(s, pick))
    if args.breakdown:
        for p in plans:
            print()
            print(report.breakdown_text(p, args.breakdown))
    save(plans, picks)
    print("Compiler figures (XLA's analysis of the compiled step per chip), not timings.")
    return 0


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _write(path: str, doc: dict) -> None:
    outputs.write_text(path, json.dumps(doc, indent=1) + "\n", "--json")
