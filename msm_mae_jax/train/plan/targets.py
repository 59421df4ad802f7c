"""What a plan compiles for: TPU slices (libtpu's compile-only devices) or NVIDIA GPUs (jax's
CUDA plugin), and the cases, (global batch, mesh), to compile for each. Set up before jax
starts: the GPU plugin must be on the path first, and a missing libtpu or plugin is one line
before any work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.train.plan import devices, gpus
from msm_mae_jax.train.plan.chips import parse_slice

SWEEP_PER_CHIP = (64, 128, 256)  # batches per chip a sweep tries
SWEEP_FSDP = (4,)  # fsdp sizes a sweep tries (a host's 4 chips)


@dataclasses.dataclass(frozen=True)
class Targets:
    """The slices (TPU `chips.Slice` or `gpus.GpuSlice`) and how to get their devices."""

    slices: list[Any]
    platform: str  # "tpu" or "cuda"
    source: str  # the compiler library, for the log
    devices_of: Callable[[Any], list]


def targets(
    tpu: str | None = None,
    gpu: str | None = None,
    libtpu: str | None = None,
    cuda_plugin: str | None = None,
) -> Targets:
    """--tpu 'v5e-16,v4-32' or --gpu 'h100-8' -> Targets; ConfigError naming the flag."""
    flag, spec = ("--gpu", gpu) if gpu is not None else ("--tpu", tpu or "")
    names = [s for s in spec.split(",") if s.strip()]
    if not names:
        example = "h100-8" if flag == "--gpu" else "v5e-16"
        raise ConfigError(f"{flag} {spec!r}: no slice given, e.g. {flag} {example}")
    if gpu is not None:
        slices = [gpus.parse_gpus(s) for s in names]
        plugin = gpus.plugin_dir(cuda_plugin)
        gpus.use_cuda_plugin(plugin)  # before jax starts
        return Targets(slices, "cuda", f"jax CUDA plugin {plugin}", gpus.gpu_devices)
    slices = [parse_slice(s) for s in names]
    library = devices.find_libtpu(libtpu)  # before jax starts: one line if missing
    return Targets(slices, "tpu", f"libtpu {library}", lambda s: devices.tpu_devices(s, library))


def cases(
    slice_: Any,
    *,
    batches: Sequence[int] = (),
    batches_per_chip: Sequence[int] = (),
    meshes: Sequence[str] = (),
    sweep: bool = False,
    fsdp: Sequence[int] = SWEEP_FSDP,
) -> list[tuple[int, dict[str, int]]]:
    """(global batch, mesh) of every case to plan on `slice_`: the given batches (or per-chip
    batches) on each given mesh; a sweep fills in what is not given (SWEEP_PER_CHIP; all chips
    on data, then data x fsdp)."""
    from msm_mae_jax.train.plan import planner

    if batches and batches_per_chip:
        raise ConfigError("give --batch or --batch-per-chip, not both")
    per_chip = batches_per_chip or (SWEEP_PER_CHIP if sweep and not batches else ())
    global_batches = list(batches) or [b * slice_.chips for b in per_chip]
    if not global_batches:
        raise ConfigError("give --batch N or --batch-per-chip N (or --sweep)")
    if meshes:
        mesh_sizes = [planner.parse_mesh(m, slice_.chips) for m in meshes]
    elif sweep:
        mesh_sizes = planner.sweep_meshes(slice_.chips, fsdp)
    else:
        mesh_sizes = [planner.parse_mesh(None, slice_.chips)]
    return [(b, m) for m in mesh_sizes for b in global_batches]
