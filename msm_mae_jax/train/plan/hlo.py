"""The optimised HLO text of a compiled program, read as data: computations, instructions,
array shapes with their layouts, and what an array occupies in the target's memory.

On TPU every array has a tiled layout, printed as `f32[4,65,64]{1,2,0:T(8,128)S(1)}`:
`{1,2,0}` is minor-to-major, `T(8,128)` tiles the two minor-most physical dimensions (8
rows of 128 elements; further tiles such as `(2,1)` subdivide a tile and add no padding),
`S(n)` the memory space: 0 (the default, printed as nothing) is HBM; XLA's memory-space
assignment keeps arrays in an alternate, on-chip memory (space 1 in v5e programs, 3 in v4
programs), and scalars and flags live in other on-chip spaces. A tiled array occupies
its dimensions rounded up to whole tiles, so f32[17,64] with T(8,128) takes 24 x 128
elements: libtpu's cost analysis counts those tiled bytes (tests/test_tpu_compile.py checks
this against libtpu on single-op programs).
"""

from __future__ import annotations

import dataclasses
import math
import re

DTYPE_BITS = {"pred": 8, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "f8e4m3fn": 8, "f8e5m2": 8}
DTYPE_BITS |= {"s16": 16, "u16": 16, "f16": 16, "bf16": 16, "s32": 32, "u32": 32, "f32": 32}
DTYPE_BITS |= {"s64": 64, "u64": 64, "f64": 64, "c64": 64, "c128": 128, "token": 0}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\](\{[^}]*\})?")
_HEADER = re.compile(r"^(ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$")
_INSTR = re.compile(r"^\s*(ROOT\s+)?%([\w.\-]+)\s*=\s*")
_CALLED = re.compile(
    r"\b(calls|to_apply|body|condition|branch_computations|called_computations)="
    r"(\{[^}]*\}|%[\w.\-]+)"
)
_OP_NAME = re.compile(r'op_name="([^"]*)"')


@dataclasses.dataclass(frozen=True)
class Array:
    dtype: str
    dims: tuple[int, ...]
    minor_to_major: tuple[int, ...] | None  # None: no layout printed (row-major)
    tile: tuple[int, ...]  # the first tile, () when untiled
    memory_space: int  # 0 = HBM

    @property
    def elements(self) -> int:
        return math.prod(self.dims)

    @property
    def logical_bytes(self) -> int:
        return self.elements * DTYPE_BITS[self.dtype] // 8

    @property
    def tiled_bytes(self) -> int:
        """Bytes of the array in its tiled layout: the physical dimensions (major to minor)
        rounded up to whole tiles (a scalar or vector fills at least one tile)."""
        if not self.tile:
            return self.logical_bytes
        order = self.minor_to_major
        if order is None:
            order = tuple(reversed(range(len(self.dims))))
        phys = [self.dims[i] for i in reversed(order)]
        phys = [1] * max(0, len(self.tile) - len(phys)) + phys
        for j, t in enumerate(reversed(self.tile), 1):
            phys[-j] = -(-phys[-j] // t) * t
        return math.prod(phys) * DTYPE_BITS[self.dtype] // 8


def arrays(shape_text: str) -> list[Array]:
    """Every array of an HLO shape ('bf16[8,128]{1,0:T(8,128)(2,1)}', tuples flattened)."""
    out = []
    for dtype, dims, layout in _ARRAY.findall(shape_text):
        if dtype not in DTYPE_BITS:
            continue
        order, tile, space = None, (), 0
        if layout:
            body = layout[1:-1]
            major, _, rest = body.partition(":")
            if major.strip():
                order = tuple(int(v) for v in major.split(","))
            t = re.search(r"T\(([0-9,]+)\)", rest)
            if t:
                tile = tuple(int(v) for v in t[1].split(","))
            s = re.search(r"S\((\d+)\)", rest)
            if s:
                space = int(s[1])
        shape = tuple(int(v) for v in dims.split(",") if v)
        out.append(Array(dtype, shape, order, tile, space))
    return out


@dataclasses.dataclass(frozen=True)
class Instruction:
    name: str
    shape: str  # the result's shape text
    opcode: str
    operands: tuple[str, ...]  # names of operand instructions
    called: tuple[tuple[str, str], ...]  # (attribute, computation): calls=, to_apply=, body=...
    op_name: str  # the metadata's op_name ('' when none)
    line: str

    @property
    def fusion_kind(self) -> str:
        m = re.search(r"\bkind=(k\w+)", self.line)
        return m[1] if m else ""


@dataclasses.dataclass(frozen=True)
class Module:
    entry: str
    computations: dict[str, tuple[Instruction, ...]]
    lines: dict[str, tuple[str, ...]]  # each computation's text, header to closing brace
    shapes: dict[str, dict[str, str]]  # computation -> instruction name -> shape text

    def called_closure(self, instruction: Instruction) -> list[str]:
        """Every computation the instruction calls, directly or not, callees first."""
        seen: list[str] = []

        def visit(name: str) -> None:
            if name in seen or name not in self.computations:
                return
            for i in self.computations[name]:
                for _, c in i.called:
                    visit(c)
            seen.append(name)

        for _, c in instruction.called:
            visit(c)
        return seen

    def top_level(self) -> list[tuple[str, Instruction]]:
        """(computation, instruction) of everything the program runs as its own op: the entry
        computation's instructions and those of the computations it runs as control flow
        (while bodies and conditions, conditional branches, calls), not the insides of
        fusions, reductions' combiners or asynchronous wrappers (their op accounts for them)."""
        out: list[tuple[str, Instruction]] = []
        todo, done = [self.entry], set()
        while todo:
            comp = todo.pop(0)
            if comp in done or comp not in self.computations:
                continue
            done.add(comp)
            for i in self.computations[comp]:
                out.append((comp, i))
                for attr, c in i.called:
                    control = attr in ("body", "condition", "branch_computations")
                    if control or (attr == "calls" and i.opcode == "call"):
                        todo.append(c)
        return out


def _close(text: str, depth: int = 0) -> int:
    """Index of the parenthesis that closes the one open at `depth` (or the first opened
    when depth is 0); len(text) if none does."""
    for j, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            return j
    return len(text)


def _operands(text: str) -> tuple[tuple[str, ...], str]:
    """'%a, %b), attrs...' (after the opcode's parenthesis) -> (('a', 'b'), 'attrs...')."""
    j = _close(text, 1)
    return tuple(re.findall(r"%([\w.\-]+)", text[:j])), text[j + 1 :]


def with_operands(i: Instruction, name: str, operands: list[str]) -> str:
    """The instruction's line as `ROOT %name = ...` with other operand names."""
    rest = i.line[_INSTR.match(i.line).end() :]
    start = rest.index(i.opcode + "(") + len(i.opcode) + 1
    _, attrs = _operands(rest[start:])
    return f"  ROOT %{name} = {rest[:start]}{', '.join('%' + o for o in operands)}){attrs}"


def parse_instruction(line: str) -> Instruction | None:
    m = _INSTR.match(line)
    if not m:
        return None
    rest = line[m.end() :]
    if rest.startswith("("):  # tuple shape: up to its matching parenthesis
        j = _close(rest)
        shape, rest = rest[: j + 1], rest[j + 1 :]
    else:
        shape, _, rest = rest.partition(" ")
    op = re.match(r"\s*([a-z][a-z0-9\-]*)\(", rest)
    if not op:
        return None
    operands, attrs = _operands(rest[op.end() :])
    called = []
    for attr, names in _CALLED.findall(attrs):
        called += [(attr, n) for n in re.findall(r"%([\w.\-]+)", names)]
    op_name = _OP_NAME.search(attrs)
    return Instruction(
        name=m[2],
        shape=shape,
        opcode=op[1],
        operands=operands,
        called=tuple(called),
        op_name=op_name[1] if op_name else "",
        line=line,
    )


def parse_module(text: str) -> Module:
    """The computations of an HLO module's text (`Compiled.as_text()`)."""
    comps: dict[str, list[Instruction]] = {}
    lines: dict[str, list[str]] = {}
    entry, current = "", None
    for line in text.splitlines():
        header = _HEADER.match(line) if not line.startswith((" ", "\t")) else None
        if header and not line.startswith("HloModule"):
            current = header[2]
            comps[current], lines[current] = [], [line]
            entry = current if header[1] else entry
            continue
        if current is None:
            continue
        lines[current].append(line)
        if line.startswith("}"):
            current = None
            continue
        instruction = parse_instruction(line)
        if instruction is not None:
            comps[current].append(instruction)
    if not entry:
        raise ValueError("no ENTRY computation in the HLO text")
    return Module(
        entry=entry,
        computations={k: tuple(v) for k, v in comps.items()},
        lines={k: tuple(v) for k, v in lines.items()},
        shapes={c: {i.name: i.shape for i in ins} for c, ins in comps.items()},
    )
