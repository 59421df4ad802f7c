"""What a compiled program costs per device: memory, FLOPs, bytes, collectives.

All figures come from XLA after optimisation (`Compiled.memory_analysis()`,
`Compiled.cost_analysis()`, the optimised HLO text) for one device of an SPMD program, i.e.
per chip of a TPU slice. They are the compiler's accounting, not measurements.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from collections.abc import Callable
from typing import Any

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2}
_DTYPE_BYTES |= {"f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8}
_DTYPE_BYTES |= {"f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b([a-z0-9]+)\[([0-9,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*")


@dataclasses.dataclass(frozen=True)
class Memory:
    """Bytes per device: arguments (state + batch), outputs, outputs that reuse (donated)
    argument buffers, temporaries, generated code; `total` = what must fit at once."""

    argument: int
    output: int
    alias: int
    temp: int
    code: int

    @property
    def total(self) -> int:
        return self.argument + self.output - self.alias + self.temp + self.code


@dataclasses.dataclass(frozen=True)
class Collective:
    kind: str  # all-reduce, all-gather, ...
    count: int  # instructions in the optimised program (a loop body counts once)
    bytes: int  # per device: the arrays these instructions produce, summed


@dataclasses.dataclass(frozen=True)
class Analysis:
    memory: Memory
    flops: float  # per device per call
    bytes_accessed: float  # per device per call (XLA's HBM traffic estimate)
    collectives: tuple[Collective, ...]
    compile_seconds: float
    # "compiled": FLOPs and bytes of the optimised program; "lowered": XLA gave none for the
    # compiled program (GPU targets without a GPU): FLOPs are those of the whole lowered step
    # (before partitioning and fusion, counted by the CPU client) over the devices, and the
    # bytes unknown (0)
    cost_source: str = "compiled"

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["memory"]["total"] = self.memory.total
        d["collectives"] = [dataclasses.asdict(c) for c in self.collectives]
        return d


def array_bytes(shape_text: str) -> int:
    """Bytes of every array in an HLO shape ('bf16[8,128]{1,0}', '(f32[4], s32[])')."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape_text):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * _DTYPE_BYTES.get(dtype, 4)
    return total


def _split_instruction(line: str) -> tuple[str, str] | None:
    """'%x = (f32[2], bf16[4]) all-gather-start(...)' -> (shape text, opcode)."""
    m = _INSTR.match(line)
    if not m:
        return None
    rest = line[m.end() :]
    if rest.startswith("("):  # tuple shape: up to its matching parenthesis
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                shape, rest = rest[: i + 1], rest[i + 1 :]
                break
        else:
            return None
    else:
        shape, _, rest = rest.partition(" ")
    op = re.match(r"\s*([a-z][a-z0-9\-]*)\(", rest)
    return (shape, op[1]) if op else None


def collectives(hlo_text: str) -> tuple[Collective, ...]:
    """Collectives of an optimised HLO module: kind, instruction count, bytes produced.

    An asynchronous pair (`all-gather-start` / `-done`) counts once, with the `-done`'s
    result (the `-start` tuple also holds the operands)."""
    counts: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for line in hlo_text.splitlines():
        parts = _split_instruction(line)
        if parts is None:
            continue
        shape, op = parts
        if op.endswith("-start"):
            continue
        kind = op[: -len("-done")] if op.endswith("-done") else op
        if kind not in COLLECTIVES:
            continue
        counts[kind] = counts.get(kind, 0) + 1
        sizes[kind] = sizes.get(kind, 0) + array_bytes(shape)
    return tuple(Collective(k, counts[k], sizes[k]) for k in COLLECTIVES if k in counts)


def _cost(compiled: Any) -> dict[str, float]:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per device program
        cost = cost[0] if cost else {}
    return dict(cost or {})


def _lowered_flops(lowered: Any, num_devices: int) -> float:
    """FLOPs per device of a lowered SPMD step: the global program's, by the CPU client's
    cost analysis, over its devices (0 where this jax cannot say)."""
    try:
        import jax
        from jax._src.lib import _jax

        module = lowered.compiler_ir(dialect="hlo").as_hlo_module()
        cost = _jax.hlo_module_cost_analysis(jax.devices("cpu")[0].client, module)
        return float(dict(cost).get("flops", 0.0)) / max(num_devices, 1)
    except Exception:  # noqa: BLE001 (private API of this jax version: no figure is no bound)
        return 0.0


def analyse(
    compiled: Any, compile_seconds: float, lowered: Any = None, num_devices: int = 1
) -> Analysis:
    """The per-device figures of a `jax.stages.Compiled` (`lowered`, its `Lowered` for
    `num_devices`: FLOPs from there where the compiled program has no cost analysis)."""
    m = compiled.memory_analysis()
    memory = Memory(
        argument=int(m.argument_size_in_bytes),
        output=int(m.output_size_in_bytes),
        alias=int(m.alias_size_in_bytes),
        temp=int(m.temp_size_in_bytes),
        code=int(m.generated_code_size_in_bytes),
    )
    cost, source = _cost(compiled), "compiled"
    if "flops" not in cost and lowered is not None:
        cost, source = {"flops": _lowered_flops(lowered, num_devices)}, "lowered"
    return Analysis(
        memory=memory,
        flops=float(cost.get("flops", 0.0)),
        bytes_accessed=float(cost.get("bytes accessed", 0.0)),
        collectives=collectives(compiled.as_text()),
        compile_seconds=compile_seconds,
        cost_source=source,
    )


def compile_for(
    fn: Any, args: tuple, platform: str, context: Callable[[], Any] | None = None
) -> tuple[Any, float, Any]:
    """`fn` (a jax.jit function with shardings) traced on abstract `args` (ShapeDtypeStructs
    with shardings), lowered for `platform` and compiled -> (Compiled, seconds taken,
    Lowered). `context` (e.g. the mesh and logical rules) is entered around tracing."""
    start = time.perf_counter()
    with context() if context is not None else contextlib.nullcontext():
        lowered = fn.trace(*args).lower(lowering_platforms=(platform,))
    compiled = lowered.compile()
    return compiled, time.perf_counter() - start, lowered
