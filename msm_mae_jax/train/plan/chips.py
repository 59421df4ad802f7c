"""TPU chips and slices: published per-chip figures and slice names -> compile topologies.

Figures per chip from the Cloud TPU system-architecture pages (docs.cloud.google.com/tpu/docs/
v4, /v5e, /v5p, /v6e; "peak compute per chip (bf16)", "HBM capacity and bandwidth"):

    v4   275 TFLOP/s, 32 GiB, 1200 GB/s  (2 TensorCores per chip, one megacore device)
    v5e  197 TFLOP/s, 16 GiB,  819 GB/s
    v5p  459 TFLOP/s, 95 GB,  2765 GB/s  (2 TensorCores per chip, one megacore device)
    v6e  918 TFLOP/s, 32 GB,  1638 GB/s

A slice is named as Cloud TPU names its accelerator types: `v5e-256` (v5e and v6e count
chips), `v4-32` and `v5p-128` (v4 and v5p count TensorCores, two per chip), or by its chip
topology as libtpu takes it: `v5e:16x16`, `v4:2x2x4`, `v5p:4x4x4`.
"""

from __future__ import annotations

import dataclasses
import math
import re

from msm_mae_jax.core.errors import ConfigError

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str  # v4, v5e, v5p, v6e
    topology_prefix: str  # libtpu's topology name prefix
    device_kind: str  # what jax reports for the compile-only devices
    hbm_bytes: int
    peak_bf16_flops: float  # per second
    hbm_bytes_per_s: float
    cores_per_chip: int  # TensorCores; 2: the slice name counts cores, one megacore device
    dims: int  # 2 (2D torus) or 3 (3D torus)


CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", "v4", "TPU v4", 32 * GiB, 275e12, 1200e9, 2, 3),
    "v5e": Chip("v5e", "v5e", "TPU v5 lite", 16 * GiB, 197e12, 819e9, 1, 2),
    "v5p": Chip("v5p", "v5p", "TPU v5", 95 * 10**9, 459e12, 2765e9, 2, 3),
    "v6e": Chip("v6e", "v6e", "TPU v6 lite", 32 * 10**9, 918e12, 1638e9, 1, 2),
}
# Cloud's accelerator-type prefix of each chip (what TPU_ACCELERATOR_TYPE holds on a TPU VM).
ACCELERATOR_PREFIX = {"v4": "v4", "v5e": "v5litepod", "v5p": "v5p", "v6e": "v6e"}

# Chips per slice -> the slice's chip grid (the shapes Cloud TPU offers for these sizes).
_GRID_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8)}
_GRID_2D |= {128: (8, 16), 256: (16, 16)}
_GRID_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4)}
_GRID_3D |= {128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16)}
_GRID_3D |= {2048: (8, 16, 16), 4096: (16, 16, 16)}


@dataclasses.dataclass(frozen=True)
class Slice:
    """A TPU slice: its chip, chip grid and names."""

    chip: Chip
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
        return f"{ACCELERATOR_PREFIX[self.chip.name]}-{self.chips * self.chip.cores_per_chip}"

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


_SLICE_NAME = re.compile(r"^(v4|v5e|v5p|v6e|v5litepod)-(\d+)$")
_TOPOLOGY = re.compile(r"^(v4|v5e|v5p|v5|v6e):(\d+(?:x\d+)+)$")


def parse_slice(text: str) -> Slice:
    """'v5e-256', 'v4-32', 'v5p:4x4x4', 'v5e:16x16' -> Slice; ConfigError otherwise."""
    spec = text.strip().lower()
    m = _SLICE_NAME.match(spec)
    if m:
        chip = CHIPS["v5e" if m[1] == "v5litepod" else m[1]]
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
    m = _TOPOLOGY.match(spec)
    if m:
        chip = CHIPS["v5p" if m[1] == "v5" else m[1]]
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
