"""Plans as one table (for people) and one JSON document (for programs)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from msm_mae_jax.train.plan.chips import GiB
from msm_mae_jax.train.plan.planner import AUDIOSET_CLIPS, EPOCHS, Plan, mesh_text

COLUMNS = (
    "slice",
    "model",
    "batch",
    "mesh",
    "GiB/chip (args+temp)",
    "HBM",
    "fits",
    "TFLOP/chip",
    "collectives",
    "compile s",
    "step ms >=",
    "samples/s <=",
    "AS-2Mx100 h >=",
)
_SHORT = {"all-reduce": "AR", "all-gather": "AG", "reduce-scatter": "RS", "all-to-all": "A2A"}
_SHORT["collective-permute"] = "CP"


def _collectives_text(p: Plan) -> str:
    if p.analysis is None:
        return "-"
    parts = [
        f"{_SHORT.get(c.kind, c.kind)} {c.count}x {c.bytes / 2**20:.0f}MiB"
        for c in p.analysis.collectives
    ]
    return ", ".join(parts) or "none"


def row(p: Plan) -> list[str]:
    a = p.analysis
    if a is None:
        memory = f"needs {p.memory_bytes / GiB:.1f}" if p.memory_bytes else "too much"
    else:
        memory = (
            f"{a.memory.total / GiB:.2f} ({a.memory.argument / GiB:.2f}+{a.memory.temp / GiB:.2f})"
        )
    rate = p.samples_per_second
    return [
        p.slice.name,
        f"{p.variant} {p.dtype}",
        str(p.batch),
        mesh_text(p.mesh),
        memory,
        f"{p.chip.hbm_bytes / GiB:.1f}",
        "yes" if p.fits else "NO",
        f"{a.flops / 1e12:.2f}" if a else "-",
        _collectives_text(p),
        f"{a.compile_seconds:.0f}" if a else "-",
        f"{p.step_seconds * 1e3:.1f} ({p.bound})" if a else "-",
        f"{rate:,.0f}" if a else "-",
        f"{p.audioset_hours:.2f}" if a and math.isfinite(p.audioset_hours) else "-",
    ]


def table(plans: Sequence[Plan], recommended: Sequence[Plan | None] = ()) -> str:
    """A fixed-width table, one row per plan; '*' marks the recommended ones."""
    rows = [list(COLUMNS)] + [row(p) for p in plans]
    for r, p in zip(rows[1:], plans, strict=True):
        r[0] = ("* " if any(p is q for q in recommended) else "  ") + r[0]
    rows[0][0] = "  " + rows[0][0]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(plans: Sequence[Plan]) -> str:
    """The same rows as a Markdown table (the README's)."""
    rows = [list(COLUMNS)] + [row(p) for p in plans]
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


def document(
    plans: Sequence[Plan], command: str, recommended: Sequence[Plan | None] = ()
) -> dict[str, Any]:
    """The JSON document: the command, what the figures mean, every plan, the sweep's pick
    for each slice (an index into plans, or None where nothing fits)."""
    return {
        "command": command,
        "note": (
            "Compiler figures for one chip (XLA's memory and cost analysis of the compiled "
            "train step), not timings. Roofline: step time >= max(FLOPs / peak bf16 FLOP/s, "
            "HBM bytes / HBM bandwidth) from the chip's published figures; samples/s is the "
            f"best possible; hours are for {AUDIOSET_CLIPS * EPOCHS:,} samples "
            f"(AudioSet-2M x {EPOCHS} epochs) at that rate."
        ),
        "plans": [p.as_dict() for p in plans],
        "recommended": [_index(plans, p) for p in recommended],
    }


def recommendation(slice_: Any, pick: Plan | None) -> str:
    """The sweep's pick for a slice, in one line."""
    if pick is None:
        return f"{slice_.name}: no plan fits; try a smaller batch, fsdp, or model.remat"
    return (
        f"{slice_.name}: recommended batch {pick.batch}, mesh {mesh_text(pick.mesh)} "
        f"(<= {pick.samples_per_second:,.0f} samples/s, "
        f"{pick.memory_bytes / GiB:.2f} GiB of {pick.chip.hbm_bytes / GiB:.0f})"
    )


def breakdown_text(p: Plan, top: int) -> str:
    """The per-op breakdown of a plan's compiled step, per sample (one line where there is
    none: out of memory, or a GPU target, for which XLA gives no cost analysis)."""
    from msm_mae_jax.train.plan import breakdown

    title = f"{p.slice.name} {p.variant} {p.dtype} batch {p.batch} {mesh_text(p.mesh)}"
    if p.breakdown is None:
        return f"{title}: no per-op breakdown (no cost analysis of a compiled program)"
    hbm = p.hbm_step_seconds
    bound = "compute" if p.analysis.flops / p.chip.peak_bf16_flops >= hbm else "memory"
    return (
        f"{title}: the compiled step op by op, per sample ({p.samples_per_chip:g} a chip)\n"
        f"roofline with XLA's bytes: {p.step_seconds * 1e3:.1f} ms ({p.bound}); with their "
        f"HBM part: {hbm * 1e3:.1f} ms ({bound})\n"
        + breakdown.table(p.breakdown, top, per=p.samples_per_chip)
    )


def _index(plans: Sequence[Plan], plan: Plan | None) -> int | None:
    return next((i for i, p in enumerate(plans) if p is plan), None)
