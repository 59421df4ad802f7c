"""Plans of a pre-training run on a TPU slice, from the real train step compiled for it.

`plan` compiles the run's production step (`train.state.Setup`, the loop's step between log
steps) for compile-only devices of the slice and reports, per chip: memory against the chip's
HBM (and whether it fits), FLOPs, XLA's HBM-traffic estimate, the collectives, the compile
time, and a roofline bound on the step time, max(FLOPs / peak, bytes / HBM bandwidth), from
the chip's published figures: the best possible samples/s. `sweep` plans several global
batches and meshes and picks the fastest plan that fits. Compiler figures, not timings.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.train.plan import analysis
from msm_mae_jax.train.plan.chips import Chip, Slice

AUDIOSET_CLIPS = 2_000_000  # AudioSet-2M: the paper's pre-training set
EPOCHS = 100  # x 2M clips: the 200M samples the time figure is for
_OOM = re.compile(r"(RESOURCE_EXHAUSTED|[Rr]an out of memory|exceeds? .*memory|Exceeded hbm)")
# "... required for HLO temporaries (202.01G) exceeds available HBM (15.75G)" or
# "Used 20.5G of 15.75G hbm": what the program needed.
_OOM_NEEDED = re.compile(
    r"(?:\(|Used )([0-9.]+)([KMGT])\)? (?:exceeds available|of [0-9.]+[KMGT] hbm)"
)
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


@dataclasses.dataclass(frozen=True)
class Plan:
    """One (slice, model, batch, mesh) case. `analysis` is None when the compiler refused the
    program for want of HBM (then `oom_bytes` is what it needed, when it said)."""

    slice: Slice
    variant: str
    dtype: str
    batch: int
    mesh: dict[str, int]
    analysis: analysis.Analysis | None
    oom_message: str = ""
    oom_bytes: int = 0
    compiled: Any = dataclasses.field(default=None, compare=False, repr=False)  # jax Compiled
    # per-op FLOPs and bytes of the compiled step (`--breakdown`), None when not asked for
    breakdown: Any = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def chip(self) -> Chip:
        return self.slice.chip

    @property
    def memory_bytes(self) -> int:
        return self.analysis.memory.total if self.analysis else self.oom_bytes

    @property
    def fits(self) -> bool:
        return self.analysis is not None and self.memory_bytes <= self.chip.hbm_bytes

    @property
    def step_seconds(self) -> float:
        """Roofline lower bound of one step: max(FLOPs / peak, bytes / HBM bandwidth)."""
        a = self.analysis  # bytes 0 where unknown (GPU targets): the compute bound alone
        if a is None or (a.flops <= 0 and a.bytes_accessed <= 0):
            return math.inf
        return max(
            a.flops / self.chip.peak_bf16_flops, a.bytes_accessed / self.chip.hbm_bytes_per_s
        )

    @property
    def bound(self) -> str:
        """What bounds the roofline step: 'compute' or 'memory' (HBM bandwidth)."""
        if self.analysis is None:
            return ""
        a = self.analysis
        compute = a.flops / self.chip.peak_bf16_flops
        return "compute" if compute >= a.bytes_accessed / self.chip.hbm_bytes_per_s else "memory"

    @property
    def samples_per_second(self) -> float:
        return self.batch / self.step_seconds if math.isfinite(self.step_seconds) else 0.0

    @property
    def samples_per_chip(self) -> float:
        return self.batch / self.slice.chips

    @property
    def hbm_step_seconds(self) -> float:
        """The roofline with the breakdown's HBM part of the bytes instead of all of XLA's
        count (which also counts the ops' reads and writes of on-chip memory); inf without
        a breakdown."""
        b, a = self.breakdown, self.analysis
        if b is None or a is None:
            return math.inf
        return max(a.flops / self.chip.peak_bf16_flops, b.hbm_bytes / self.chip.hbm_bytes_per_s)

    @property
    def audioset_hours(self) -> float:
        """Hours for AudioSet-2M x 100 epochs at the roofline rate."""
        rate = self.samples_per_second
        return AUDIOSET_CLIPS * EPOCHS / rate / 3600 if rate else math.inf

    def as_dict(self) -> dict[str, Any]:
        a = self.analysis
        return {
            "slice": self.slice.name,
            "topology": self.slice.topology,
            "chips": self.slice.chips,
            "hosts": self.slice.hosts,
            "chip": self.chip.name,
            "hbm_bytes": self.chip.hbm_bytes,
            "variant": self.variant,
            "dtype": self.dtype,
            "batch": self.batch,
            "mesh": self.mesh,
            "fits": self.fits,
            "memory_bytes": self.memory_bytes,
            "analysis": a.as_dict() if a else None,
            "oom_message": self.oom_message,
            "per_sample": {
                "flops": a.flops / self.samples_per_chip if a else None,
                "bytes": a.bytes_accessed / self.samples_per_chip if a else None,
                "hbm_bytes": (
                    self.breakdown.hbm_bytes / self.samples_per_chip if self.breakdown else None
                ),
            },
            "roofline": {
                "step_seconds": self.step_seconds if a else None,
                "bound": self.bound,
                "samples_per_second": self.samples_per_second,
                "audioset_100_epochs_hours": self.audioset_hours if a else None,
                "hbm_step_seconds": (
                    self.hbm_step_seconds if math.isfinite(self.hbm_step_seconds) else None
                ),
            },
            "breakdown": self.breakdown.as_dict() if self.breakdown else None,
        }


def parse_mesh(text: str | None, chips: int) -> dict[str, int]:
    """'data=4,fsdp=4' -> {'data': 4, 'fsdp': 4, 'tensor': 1}; None -> all chips on data.
    One size may be -1 (the rest of the chips)."""
    sizes = {"data": -1, "fsdp": 1, "tensor": 1}
    if text:
        sizes = {"data": 1, "fsdp": 1, "tensor": 1}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, eq, value = part.partition("=")
            if name not in sizes or not eq or not re.fullmatch(r"-?\d+", value.strip()):
                raise ConfigError(
                    f"--mesh {text!r}: expected AXIS=SIZE,... with axes data, fsdp, tensor "
                    "(e.g. data=16 or data=4,fsdp=4; one size may be -1)"
                )
            sizes[name] = int(value)
    known = math.prod(s for s in sizes.values() if s != -1)
    if list(sizes.values()).count(-1) > 1 or any(s == 0 or s < -1 for s in sizes.values()):
        raise ConfigError(f"--mesh {text!r}: sizes must be positive, at most one -1")
    if chips % known:
        raise ConfigError(f"--mesh {text!r} does not divide the slice's {chips} chips")
    sizes = {k: chips // known if v == -1 else v for k, v in sizes.items()}
    if math.prod(sizes.values()) != chips:
        raise ConfigError(f"--mesh {text!r} uses {math.prod(sizes.values())} of {chips} chips")
    return sizes


def mesh_text(mesh: dict[str, int]) -> str:
    """{'data': 4, 'fsdp': 4, 'tensor': 1} -> 'data4 x fsdp4' (axes of size 1 left out)."""
    parts = [f"{k}{v}" for k, v in mesh.items() if v > 1]
    return " x ".join(parts) or "1 chip"


def run_config(
    config: ml_collections.ConfigDict, batch: int, mesh: dict[str, int]
) -> ml_collections.ConfigDict:
    """The config with this plan's global batch and mesh."""
    c = copy.deepcopy(config)
    c.batch_size = int(batch)
    c.mesh = tuple((k, int(v)) for k, v in mesh.items())
    return c


def _oom_bytes(message: str) -> int:
    m = _OOM_NEEDED.search(message)
    return int(float(m[1]) * _UNITS[m[2]]) if m else 0


def plan(
    config: ml_collections.ConfigDict,
    slice_: Slice,
    devices: Sequence[Any],
    batch: int,
    mesh: dict[str, int],
    platform: str = "tpu",
    keep_compiled: bool = False,
    breakdown: bool = False,
) -> Plan:
    """Compiles the run's step for `devices` (the slice's, one per chip) and plans it;
    `keep_compiled` keeps the compiled program in the plan (gigabytes for a large model),
    `breakdown` adds the per-op costs of the compiled program (`plan.breakdown`)."""
    from msm_mae_jax.train import optim
    from msm_mae_jax.train.state import Setup

    if batch % slice_.hosts:
        raise ConfigError(
            f"global batch {batch} does not split over the {slice_.hosts} hosts of {slice_.name}"
        )
    c = run_config(config, batch, mesh)
    setup = Setup(c, optim.resolve_schedule(c, AUDIOSET_CLIPS), devices=list(devices))
    base = dict(
        slice=slice_, variant=str(c.variant), dtype=str(c.model.dtype), batch=int(batch), mesh=mesh
    )
    try:
        compiled, seconds, lowered = analysis.compile_for(
            setup.train_step_lean,
            (setup.abstract_state, setup.abstract_input()),
            platform,
            context=setup.activate,
        )
    except Exception as e:  # noqa: BLE001 (only the compiler's out-of-memory is a result)
        msg = str(e)
        if not _OOM.search(msg):
            raise
        first = next((ln for ln in msg.splitlines() if _OOM.search(ln)), msg.splitlines()[0])
        return Plan(**base, analysis=None, oom_message=first.strip(), oom_bytes=_oom_bytes(msg))
    result = analysis.analyse(compiled, seconds, lowered, len(devices))
    per_op = None
    if breakdown and result.cost_source == "compiled":
        from msm_mae_jax.train.plan import breakdown as breakdown_lib

        per_op = breakdown_lib.breakdown(compiled)
    return Plan(
        **base,
        analysis=result,
        compiled=compiled if keep_compiled else None,
        breakdown=per_op,
    )


def plan_cases(
    config: ml_collections.ConfigDict,
    targets: Any,
    work: Sequence[tuple[Any, int, dict[str, int]]],
    *,
    breakdown: bool = False,
    log: Callable[[str], None] = print,
    after_each: Callable[[list[Plan]], None] | None = None,
) -> list[Plan]:
    """`plan` of every (slice, global batch, mesh) of `work` on `targets`
    (`targets.Targets`), in order; `after_each(plans so far)` after each compile (minutes
    each), e.g. to save what is done."""
    plans: list[Plan] = []
    for i, (s, batch, mesh) in enumerate(work, 1):
        where = f"{s.name} ({s.topology}, {s.chips} chips, {s.hosts} host(s))"
        log(f"[{i}/{len(work)}] {where} {config.variant} batch {batch} {mesh_text(mesh)} ...")
        devices = targets.devices_of(s)
        plans.append(plan(config, s, devices, batch, mesh, targets.platform, breakdown=breakdown))
        if after_each is not None:
            after_each(plans)
    return plans


def sweep_meshes(chips: int, fsdp: Sequence[int] = (4,)) -> list[dict[str, int]]:
    """All chips on data, then data x fsdp for each fsdp size that divides the chips."""
    out = [{"data": chips, "fsdp": 1, "tensor": 1}]
    for f in fsdp:
        if 1 < f <= chips and chips % f == 0:
            out.append({"data": chips // f, "fsdp": f, "tensor": 1})
    return out


def best(plans: Sequence[Plan]) -> Plan | None:
    """The fastest plan that fits (roofline samples/s; ties: the least memory)."""
    fitting = [p for p in plans if p.fits]
    if not fitting:
        return None
    return max(fitting, key=lambda p: (p.samples_per_second, -p.memory_bytes))
