"""Where a compiled program's FLOPs and bytes go: XLA's cost analysis, op by op.

`Compiled.cost_analysis()` gives one total per program. To see where it comes from, each
op the program runs (a fusion, a copy, a collective, ...; see `hlo.Module.top_level`) is
cut out of the optimised HLO into a module of its own (its operands become parameters, the
computations it calls come along) and costed by XLA's own `HloCostAnalysis` (through the
CPU client: the same rules, the same per-operand accounting, e.g. a fused slice reads only
the slice). That analysis counts logical bytes; libtpu's counts the arrays' tiled bytes
(`hlo.Array.tiled_bytes`), so each operand's and the result's bytes are scaled by their
tiled-to-logical ratio. The per-op figures then sum to XLA's totals for the program: FLOPs
exactly, bytes up to what libtpu counts beyond these rules (the tables say how much is
attributed: 99.8% for ViT-B, 94% for the tiny test model, whose gathers and prefetch copies
weigh more). TPU's asynchronous slices, which this jaxlib cannot parse alone, are estimated.

Each op's bytes are also split by where its arrays live: HBM (memory space 0) or on chip
(the alternate memory XLA keeps arrays in, the scalar memories). XLA's total counts both;
only the first is HBM traffic.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Iterable, Sequence
from typing import Any

from msm_mae_jax.train.plan import hlo

_FREE = {"parameter", "constant", "get-tuple-element", "bitcast", "after-all"}
_FREE |= {"partition-id", "replica-id", "opt-barrier"}
_COLLECTIVE = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_STRIP = re.compile(r"\s*(, )?(control-predecessors=\{[^}]*\}|stack_frame_id=\d+)")


@dataclasses.dataclass(frozen=True)
class OpCost:
    """One op of the compiled program. `bytes`: XLA's count with tiled sizes (all memory
    spaces), `hbm_bytes`: its part to and from arrays in HBM, `logical_bytes`: the count
    with untiled sizes. `estimated`: XLA could not cost it alone (operands + result used)."""

    name: str
    opcode: str
    kind: str  # fusion kind (kLoop, kOutput, kInput, kCustom) or ''
    op_name: str
    phase: str  # forward, backward, update, prefetch, collective
    category: str  # matmul, elementwise, reduce, copy, gather/sort, collective, other
    flops: float
    transcendentals: float
    bytes: float
    hbm_bytes: float
    logical_bytes: float
    estimated: bool = False

    @property
    def source(self) -> str:
        """The op's origin in the step, the block index dropped: 'encoder/blocks_*/mlp/fc1'."""
        return source_of(self.op_name) or f"({self.opcode})"


@dataclasses.dataclass(frozen=True)
class Breakdown:
    """Per-op costs of one compiled program and XLA's totals for it (per device)."""

    ops: tuple[OpCost, ...]
    total_flops: float
    total_bytes: float

    @property
    def attributed_flops(self) -> float:
        return sum(o.flops for o in self.ops)

    @property
    def attributed_bytes(self) -> float:
        return sum(o.bytes for o in self.ops)

    @property
    def hbm_bytes(self) -> float:
        return sum(o.hbm_bytes for o in self.ops)

    @property
    def unattributed_bytes(self) -> float:
        return self.total_bytes - self.attributed_bytes

    @property
    def estimated_ops(self) -> int:
        return sum(o.estimated for o in self.ops)

    def groups(self, key: str) -> list[Group]:
        """Ops summed by 'source', 'category', 'phase' or 'opcode', largest bytes first."""
        acc: dict[str, list[OpCost]] = collections.defaultdict(list)
        for o in self.ops:
            acc[getattr(o, key)].append(o)
        return sorted(
            (Group(k, tuple(v)) for k, v in acc.items()), key=lambda g: (-g.bytes, g.name)
        )

    def top(self, n: int) -> list[OpCost]:
        return sorted(self.ops, key=lambda o: (-o.bytes, o.name))[:n]

    def as_dict(self, top: int = 30) -> dict[str, Any]:
        def fig(g) -> dict[str, float]:
            return {
                "flops": g.flops,
                "bytes": g.bytes,
                "hbm_bytes": g.hbm_bytes,
                "logical_bytes": g.logical_bytes,
            }

        return {
            "total_flops": self.total_flops,
            "total_bytes": self.total_bytes,
            "attributed_flops": self.attributed_flops,
            "attributed_bytes": self.attributed_bytes,
            "unattributed_bytes": self.unattributed_bytes,
            "hbm_bytes": self.hbm_bytes,
            "ops": len(self.ops),
            "estimated_ops": self.estimated_ops,
            "by_phase": {g.name: fig(g) for g in self.groups("phase")},
            "by_category": {g.name: fig(g) for g in self.groups("category")},
            "by_source": [
                {"source": g.name, "count": len(g.ops), **fig(g)}
                for g in self.groups("source")[:top]
            ],
            "top_ops": [
                {"name": o.name, "opcode": o.opcode, "kind": o.kind, "source": o.source, **fig(o)}
                for o in self.top(top)
            ],
        }


@dataclasses.dataclass(frozen=True)
class Group:
    name: str
    ops: tuple[OpCost, ...]

    @property
    def flops(self) -> float:
        return sum(o.flops for o in self.ops)

    @property
    def bytes(self) -> float:
        return sum(o.bytes for o in self.ops)

    @property
    def hbm_bytes(self) -> float:
        return sum(o.hbm_bytes for o in self.ops)

    @property
    def logical_bytes(self) -> float:
        return sum(o.logical_bytes for o in self.ops)


# ---- where an op comes from -----------------------------------------------------------------
def source_of(op_name: str) -> str:
    """'jit(_train_step)/transpose(jvp(MaskedAutoencoder))/encoder/blocks_3/mlp/fc1/dot_general'
    -> 'encoder/blocks_*/mlp/fc1/dot_general' (the jit, jvp and transpose wrappers dropped)."""
    parts = [p for p in op_name.split("/") if p and not re.match(r"^(jit|jvp|transpose)\(", p)]
    for k in range(len(parts) // 2, 0, -1):  # inside jax.checkpoint the scope comes twice
        if parts[:k] == parts[k : 2 * k]:
            parts = parts[k:]
            break
    return re.sub(r"blocks_\d+", "blocks_*", "/".join(parts))


def phase_of(op_name: str, opcode: str) -> str:
    base = opcode.removesuffix("-start").removesuffix("-done")
    if base in _COLLECTIVE:
        return "collective"
    if not op_name:  # inserted by the compiler: moves between memories, layout changes
        if opcode in ("copy-start", "copy-done", "slice-start", "slice-done", "custom-call"):
            return "prefetch"
        return "layout" if opcode == "copy" else "other"
    if "transpose(jvp(" in op_name:
        return "backward"
    if "jvp(" in op_name:
        return "forward"
    return "update"  # the optimizer, the metrics, the step's bookkeeping


def category_of(instruction: hlo.Instruction, module: hlo.Module) -> str:
    op = instruction.opcode
    base = op.removesuffix("-start").removesuffix("-done")
    if base in _COLLECTIVE:
        return "collective"
    if op in ("copy", "copy-start", "copy-done", "transpose", "reshape"):
        return "copy"
    if op in ("convolution", "dot"):
        return "matmul"
    if op in ("gather", "scatter", "sort", "dynamic-slice", "dynamic-update-slice"):
        return "gather/sort"
    if op in ("reduce", "reduce-window"):
        return "reduce"
    if op == "fusion":
        inner = {
            i.opcode
            for c in module.called_closure(instruction)
            for i in module.computations.get(c, ())
        }
        if inner & {"convolution", "dot"}:
            return "matmul"
        if inner & {"gather", "scatter", "sort", "dynamic-slice", "dynamic-update-slice"}:
            return "gather/sort"
        if "reduce" in inner:
            return "reduce"
        return "elementwise"
    return "elementwise" if op not in _FREE else "other"


# ---- XLA's cost of one op -------------------------------------------------------------------
def _single_op_module(module: hlo.Module, comp: str, i: hlo.Instruction) -> str:
    """HLO text of a module that runs just `i`: its operands as parameters, its callees."""
    body = []
    for c in module.called_closure(i):
        body += [_STRIP.sub("", line) for line in module.lines[c]]
    params = [
        f"  %p{k} = {module.shapes[comp][o]} parameter({k})" for k, o in enumerate(i.operands)
    ]
    root = hlo.with_operands(i, "op", [f"p{k}" for k in range(len(i.operands))])
    lines = ["HloModule op", *body, "ENTRY %main {", *params, _STRIP.sub("", root), "}"]
    return "\n".join(lines) + "\n"


def _xla_cost(text: str, client: Any) -> dict[str, float] | None:
    """XLA's HloCostAnalysis of a module's text (None where this jaxlib cannot parse or cost
    it, e.g. the done half of an asynchronous pair)."""
    try:
        import jaxlib._hlo as xla_hlo
        from jax._src.lib import _jax

        return dict(_jax.hlo_module_cost_analysis(client, xla_hlo.hlo_module_from_text(text)))
    except Exception:  # noqa: BLE001 (private API of this jaxlib; the op is then estimated)
        return None


def _ratios(arrs: Sequence[hlo.Array]) -> tuple[float, float]:
    """(tiled bytes, tiled bytes in HBM) per logical byte of some arrays."""
    logical = sum(a.logical_bytes for a in arrs)
    if not logical:
        return 0.0, 0.0
    tiled = sum(a.tiled_bytes for a in arrs)
    return tiled / logical, sum(a.tiled_bytes for a in arrs if a.memory_space == 0) / logical


def _estimate(
    i: hlo.Instruction, operands: list[list[hlo.Array]], result: list[hlo.Array]
) -> list[tuple[list[hlo.Array], float]]:
    """(arrays, logical bytes) an op XLA cannot cost alone moves. TPU's asynchronous slice
    (`slice-start` -> ((operand), slice, flag)) reads the slice where the operand lives and
    writes it; its `slice-done` yields it (counted once, as XLA counts `copy-done`); any
    other op reads every operand once and writes its result once."""
    if i.opcode == "slice-start" and len(result) >= 2 and operands and operands[0]:
        out = result[1]
        read = dataclasses.replace(operands[0][0], dims=out.dims, minor_to_major=out.minor_to_major)
        return [([read], read.logical_bytes), ([out], out.logical_bytes)]
    if i.opcode.endswith("-done"):  # the result of its -start, which moved the data
        return [(result, sum(a.logical_bytes for a in result))]
    return [(a, sum(x.logical_bytes for x in a)) for a in [*operands, result]]


def op_cost(module: hlo.Module, comp: str, i: hlo.Instruction, client: Any) -> OpCost:
    operands = [hlo.arrays(module.shapes[comp].get(o, "")) for o in i.operands]
    result = hlo.arrays(i.shape)
    phase = phase_of(i.op_name, i.opcode)
    common = dict(name=i.name, opcode=i.opcode, kind=i.fusion_kind, op_name=i.op_name, phase=phase)
    if i.opcode in _FREE:
        return OpCost(**common, category="other", flops=0, transcendentals=0, bytes=0,
                      hbm_bytes=0, logical_bytes=0)  # fmt: skip
    cost = _xla_cost(_single_op_module(module, comp, i), client)
    if cost is None:
        parts, estimated = _estimate(i, operands, result), True
        flops = transcendentals = 0.0
    else:
        parts = [(a, cost.get(f"bytes accessed{k}{{}}", 0.0)) for k, a in enumerate(operands)]
        parts.append((result, cost.get("bytes accessedout{}", 0.0)))
        estimated = False
        flops, transcendentals = cost.get("flops", 0.0), cost.get("transcendentals", 0.0)
    ratios = [(_ratios(a), b) for a, b in parts]
    return OpCost(
        **common,
        category=category_of(i, module),
        flops=flops,
        transcendentals=transcendentals,
        bytes=sum(r[0] * b for r, b in ratios),
        hbm_bytes=_moved_hbm(i, operands, result, sum(r[1] * b for r, b in ratios)),
        logical_bytes=sum(b for _, b in parts),
        estimated=estimated,
    )


def _moved_hbm(
    i: hlo.Instruction, operands: list[list[hlo.Array]], result: list[hlo.Array], counted: float
) -> float:
    """HBM bytes an op moves. An asynchronous copy (`copy-start` -> (destination, source,
    context)) or slice (`slice-start` -> ((source), slice, flag)) reads its source once and
    writes its destination once: the ends in HBM count, on the start; the `-done` moves
    nothing. Other ops: their operands' and result's bytes in HBM, as XLA counts them."""
    if i.opcode in ("copy-start", "slice-start") and operands and operands[0] and len(result) > 1:
        moved = result[0] if i.opcode == "copy-start" else result[1]
        ends = (operands[0][0].memory_space == 0) + (moved.memory_space == 0)
        return float(moved.tiled_bytes * ends)
    if i.opcode in ("copy-done", "slice-done"):
        return 0.0
    return counted


def breakdown_of_text(
    text: str, total_flops: float, total_bytes: float, client: Any = None
) -> Breakdown:
    """The breakdown of an optimised HLO module's text against XLA's totals for it."""
    if client is None:
        import jax

        client = jax.devices("cpu")[0].client
    module = hlo.parse_module(text)
    ops = [op_cost(module, comp, i, client) for comp, i in module.top_level()]
    ops = [o for o in ops if o.bytes or o.flops or o.transcendentals]
    return Breakdown(tuple(ops), float(total_flops), float(total_bytes))


def breakdown(compiled: Any) -> Breakdown:
    """The breakdown of a `jax.stages.Compiled` (one device's program of an SPMD step)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    cost = dict(cost or {})
    return breakdown_of_text(
        compiled.as_text(), cost.get("flops", 0.0), cost.get("bytes accessed", 0.0)
    )


# ---- tables ---------------------------------------------------------------------------------
def _mb(x: float) -> str:
    return f"{x / 1e6:,.1f}"


def table(b: Breakdown, top: int = 15, per: int = 1) -> str:
    """Text tables: totals, by phase, by category, the `top` sources (blocks merged) and the
    `top` single ops by bytes; MB and GFLOP per device, or per sample with `per` samples."""
    unit = "per sample" if per > 1 else "per chip"
    tb, tf = b.total_bytes or 1.0, b.total_flops or 1.0
    lines = [
        f"XLA totals {unit}: {_mb(b.total_bytes / per)} MB accessed, "
        f"{b.total_flops / per / 1e9:,.2f} GFLOP; attributed to {len(b.ops)} ops: "
        f"{_mb(b.attributed_bytes / per)} MB ({b.attributed_bytes / tb:.1%}), "
        f"{b.attributed_flops / per / 1e9:,.2f} GFLOP ({b.attributed_flops / tf:.1%}); "
        f"of the bytes, to/from HBM: {_mb(b.hbm_bytes / per)} MB ({b.hbm_bytes / tb:.1%})",
    ]
    if b.estimated_ops:
        lines.append(f"({b.estimated_ops} ops XLA did not cost alone: operands + result)")

    def block(title: str, rows: Iterable[tuple[str, str, Any]]) -> None:
        head = (title, "n", "MB", "bytes %", "HBM MB", "GFLOP", "FLOP %")
        body = [
            (
                name,
                count,
                _mb(g.bytes / per),
                f"{g.bytes / tb:.1%}",
                _mb(g.hbm_bytes / per),
                f"{g.flops / per / 1e9:,.2f}",
                f"{g.flops / tf:.1%}",
            )
            for name, count, g in rows
        ]
        widths = [max(len(str(r[k])) for r in [head, *body]) for k in range(len(head))]
        lines.append("")
        for r in [head, *body]:
            cells = [str(r[0]).ljust(widths[0])] + [
                str(c).rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
            ]
            lines.append("  ".join(cells))

    block("phase", ((g.name, len(g.ops), g) for g in b.groups("phase")))
    block("category", ((g.name, len(g.ops), g) for g in b.groups("category")))
    block("source (blocks merged)", ((g.name, len(g.ops), g) for g in b.groups("source")[:top]))
    block(
        "op",
        ((f"{o.name} {o.kind or o.opcode} {o.source}", 1, o) for o in b.top(top)),
    )
    return "\n".join(lines)
