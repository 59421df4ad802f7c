"""The accelerators a plan targets, one row each with keyword fields: TPU chips (`CHIPS`) and
NVIDIA GPUs (`GPUS`); TPU slice names -> compile topologies.

TPU figures per chip from the Cloud TPU system-architecture pages (docs.cloud.google.com/tpu/
docs/v4, /v5e, /v5p, /v6e; "peak compute per chip (bf16)", "HBM capacity and bandwidth");
GPU figures from NVIDIA's data sheets (SXM parts, dense bf16 Tensor Core peak) with what XLA
reads of a GPU (SMs, shared memory, L2, clock, compute capability).

A slice is named as Cloud TPU names its accelerator types: `v5e-256` (v5e and v6e count
chips), `v4-32` and `v5p-128` (v4 and v5p count TensorCores, two per chip), or by its chip
topology as libtpu takes it: `v5e:16x16`, `v4:2x2x4`, `v5p:4x4x4`. The names a chip answers
to come from its row.
"""

from __future__ import annotations

import dataclasses
import math
import re

from msm_mae_jax.core.errors import ConfigError

GiB = 2**30


@dataclasses.dataclass(frozen=True, kw_only=True)
class Chip:
    """An accelerator's published per-chip figures (what the roofline and "fits" use)."""

    name: str  # v5e, h100: what slice names begin with
    device_kind: str  # what jax reports for its (compile-only) devices
    hbm_bytes: int
    peak_bf16_flops: float  # dense, per second
    hbm_bytes_per_s: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class TpuChip(Chip):
    """A TPU chip: how its slices are named and wired."""

    accelerator_prefix: str  # Cloud's accelerator type (TPU_ACCELERATOR_TYPE): v5litepod-16
    topology_prefix: str  # libtpu's topology names: v5e:4x4
    topology_aliases: tuple[str, ...] = ()  # other topology prefixes jax reports (v5 for v5p)
    cores_per_chip: int = 1  # TensorCores; 2: slice names count cores, one megacore device
    dims: int = 2  # 2 (2D torus) or 3 (3D torus)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GpuChip(Chip):
    """An NVIDIA GPU, with what XLA's deviceless compile reads of it."""

    sms: int
    shared_memory_per_sm: int  # bytes
    shared_memory_optin: int  # bytes per block, opt-in
    l2_bytes: int
    clock_ghz: float
    compute_capability: tuple[int, int]


def _table(*chips):  # noqa: ANN002, ANN202 (rows of one kind of Chip)
    return {c.name: c for c in chips}


# The accelerators a plan can target: a new one is one row here (its slice and topology names,
# and so their parsing, derive from the row).
CHIPS: dict[str, TpuChip] = _table(
    TpuChip(
        name="v4",
        device_kind="TPU v4",
        hbm_bytes=32 * GiB,
        peak_bf16_flops=275e12,
        hbm_bytes_per_s=1200e9,
        accelerator_prefix="v4",
        topology_prefix="v4",
        cores_per_chip=2,
        dims=3,
    ),
    TpuChip(
        name="v5e",
        device_kind="TPU v5 lite",
        hbm_bytes=16 * GiB,
        peak_bf16_flops=197e12,
        hbm_bytes_per_s=819e9,
        accelerator_prefix="v5litepod",
        topology_prefix="v5e",
    ),
    TpuChip(
        name="v5p",
        device_kind="TPU v5",
        hbm_bytes=95 * 10**9,
        peak_bf16_flops=459e12,
        hbm_bytes_per_s=2765e9,
        accelerator_prefix="v5p",
        topology_prefix="v5p",
        topology_aliases=("v5",),
        cores_per_chip=2,
        dims=3,
    ),
    TpuChip(
        name="v6e",
        device_kind="TPU v6 lite",
        hbm_bytes=32 * 10**9,
        peak_bf16_flops=918e12,
        hbm_bytes_per_s=1638e9,
        accelerator_prefix="v6e",
        topology_prefix="v6e",
    ),
)
GPUS: dict[str, GpuChip] = _table(
    GpuChip(
        name="a100",
        device_kind="NVIDIA A100-SXM4-80GB",
        hbm_bytes=80 * 10**9,
        peak_bf16_flops=312e12,
        hbm_bytes_per_s=2039e9,
        sms=108,
        shared_memory_per_sm=167936,
        shared_memory_optin=166912,
        l2_bytes=41943040,
        clock_ghz=1.41,
        compute_capability=(8, 0),
    ),
    GpuChip(
        name="h100",
        device_kind="NVIDIA H100 80GB HBM3",
        hbm_bytes=80 * 10**9,
        peak_bf16_flops=989e12,
        hbm_bytes_per_s=3350e9,
        sms=132,
        shared_memory_per_sm=233472,
        shared_memory_optin=232448,
        l2_bytes=52428800,
        clock_ghz=1.98,
        compute_capability=(9, 0),
    ),
    GpuChip(
        name="h200",
        device_kind="NVIDIA H200",
        hbm_bytes=141 * 10**9,
        peak_bf16_flops=989e12,
        hbm_bytes_per_s=4800e9,
        sms=132,
        shared_memory_per_sm=233472,
        shared_memory_optin=232448,
        l2_bytes=52428800,
        clock_ghz=1.98,
        compute_capability=(9, 0),
    ),
)
# Slice names (v5e-16, v5litepod-16) and topology names (v5e:4x4, v5:2x2x2) -> their chip.
_BY_SLICE_NAME = {n: c for c in CHIPS.values() for n in (c.name, c.accelerator_prefix)}
_BY_TOPOLOGY = {
    n: c for c in CHIPS.values() for n in (c.name, c.topology_prefix, *c.topology_aliases)
}

# Chips per slice -> the slice's chip grid (the shapes Cloud TPU offers for these sizes).
_GRID_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8)}
_GRID_2D |= {128: (8, 16), 256: (16, 16)}
_GRID_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4)}
_GRID_3D |= {128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16)}
_GRID_3D |= {2048: (8, 16, 16), 4096: (16, 16, 16)}


@dataclasses.dataclass(frozen=True)
class Slice:
    """A TPU slice: its chip, chip grid and names."""

    chip: TpuChip
    grid: tuple[int, ...]

    @property
    def chips(self) -> int:
        return math.prod(self.grid)

    @property
    def name(self) -> str:
        """Cloud's accelerator type, e.g. v5e-256 or v5p-128."""
        return f"{self.chip.name}-{self.chips * self.chip.cores_per_chip}"

    @property
    def topology(self) -> str:
        """libtpu's topology name, e.g. v5e:16x16."""
        return f"{self.chip.topology_prefix}:{'x'.join(map(str, self.grid))}"

    @property
    def accelerator_type(self) -> str:
        """TPU_ACCELERATOR_TYPE of such a slice (v5litepod-256, v4-32)."""
        return f"{self.chip.accelerator_prefix}-{self.chips * self.chip.cores_per_chip}"

    @property
    def chip_config(self) -> str:
        """libtpu's chip config: one megacore device per chip where a chip has two cores."""
        return "megacore" if self.chip.cores_per_chip == 2 else "default"

    @property
    def host_grid(self) -> tuple[int, ...]:
        """Chips per host along each axis (4-chip hosts; a 1-chip slice has one chip)."""
        if self.chips == 1:
            return (1,) * len(self.grid)
        return (2, 2) if self.chip.dims == 2 else (2, 2, 1)

    @property
    def hosts(self) -> int:
        return max(1, self.chips // math.prod(self.host_grid))


def parse_slice(text: str) -> Slice:
    """'v5e-256', 'v4-32', 'v5p:4x4x4', 'v5e:16x16' -> Slice; ConfigError otherwise."""
    spec = text.strip().lower()
    m = re.fullmatch(r"([a-z0-9]+)-(\d+)", spec)
    if m and m[1] in _BY_SLICE_NAME:
        chip = _BY_SLICE_NAME[m[1]]
        count = int(m[2])
        if count % chip.cores_per_chip:
            raise ConfigError(
                f"--tpu {text}: {chip.name} slices are named by TensorCores, two per chip "
                f"(e.g. {chip.name}-8 for 4 chips)"
            )
        chips = count // chip.cores_per_chip
        grids = _GRID_2D if chip.dims == 2 else _GRID_3D
        if chips not in grids:
            sizes = ", ".join(f"{chip.name}-{n * chip.cores_per_chip}" for n in grids)
            raise ConfigError(
                f"--tpu {text}: no {chip.name} slice of {chips} chips is known ({sizes}); "
                f"give its topology instead, e.g. --tpu {chip.name}:"
                f"{'x'.join(['2'] * chip.dims)}"
            )
        return Slice(chip, grids[chips])
    m = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)+)", spec)
    if m and m[1] in _BY_TOPOLOGY:
        chip = _BY_TOPOLOGY[m[1]]
        grid = tuple(int(v) for v in m[2].split("x"))
        if len(grid) != chip.dims or min(grid) < 1:
            raise ConfigError(
                f"--tpu {text}: a {chip.name} topology has {chip.dims} positive dimensions, "
                f"e.g. {chip.name}:{'x'.join(['2'] * chip.dims)}"
            )
        return Slice(chip, grid)
    raise ConfigError(
        f"--tpu {text!r}: expected a slice such as v5e-16, v4-32, v5p-128, v6e-8 or a "
        f"topology such as v5e:4x4, v4:2x2x4 (chips: {', '.join(CHIPS)})"
    )
