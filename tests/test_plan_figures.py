"""The planner's arithmetic for every chip of train/plan/chips.py against figures worked out by
hand (written out here, not computed by the code under test): the memory that must fit, whether
it fits the chip's HBM, and the roofline bound. Published per-chip figures (Cloud TPU system
architecture pages): v4 275 TFLOP/s bf16, 32 GiB HBM at 1200 GB/s; v5e 197 TFLOP/s, 16 GiB at
819 GB/s; v5p 459 TFLOP/s, 95 GB at 2765 GB/s; v6e 918 TFLOP/s, 32 GB at 1638 GB/s."""

import pytest

from msm_mae_jax.train.plan import analysis, chips, gpus, planner

# chip -> HBM bytes per chip (GiB = 1,073,741,824 bytes; GB = 10^9 bytes)
HBM = {"v4": 34_359_738_368, "v5e": 17_179_869_184, "v5p": 95_000_000_000, "v6e": 32_000_000_000}
# chip -> (FLOPs, HBM bytes) of a step: (A) 20 ms of compute, 10 ms of HBM traffic at the chip's
# peak; (B) 10 ms of compute, 30 ms of traffic. FLOPs = peak x seconds, bytes = bandwidth x s.
STEPS = {
    "v4": ((5.5e12, 1.2e10), (2.75e12, 3.6e10)),
    "v5e": ((3.94e12, 8.19e9), (1.97e12, 2.457e10)),
    "v5p": ((9.18e12, 2.765e10), (4.59e12, 8.295e10)),
    "v6e": ((1.836e13, 1.638e10), (9.18e12, 4.914e10)),
}
BATCH = 1024
# GPUs (NVIDIA data sheets, SXM, dense bf16): a100 312 TFLOP/s, 80 GB; h100 989 TFLOP/s, 80 GB;
# h200 989 TFLOP/s, 141 GB. XLA reports no bytes for GPU programs: the compute bound alone.
GPU_HBM = {"a100": 80_000_000_000, "h100": 80_000_000_000, "h200": 141_000_000_000}
GPU_FLOPS = {"a100": 3.12e12, "h100": 9.89e12, "h200": 9.89e12}  # 10 ms at the peak
# (A) 0.02 s a step: 1024 / 0.02 = 51,200 samples/s; 2e8 samples / 51,200 = 3,906.25 s
# (B) 0.03 s a step: 34,133.33 samples/s; 5,859.375 s
ROOFLINE = {
    "A": (0.02, "compute", 51_200.0, 3906.25 / 3600),
    "B": (0.03, "memory", 34_133.333, 5859.375 / 3600),
}


def _plan(chip, flops=1.0, bytes_accessed=1.0, **memory):
    mem = {"argument": 0, "output": 0, "alias": 0, "temp": 0, "code": 0, **memory}
    a = analysis.Analysis(analysis.Memory(**mem), flops, bytes_accessed, (), 1.0)
    grid = (2, 2) if chips.CHIPS[chip].dims == 2 else (2, 2, 1)
    return planner.Plan(
        chips.Slice(chips.CHIPS[chip], grid), "base_208", "bfloat16", BATCH, {"data": 4}, a
    )


def test_every_chip_is_covered():
    assert sorted(chips.CHIPS) == sorted(HBM) == sorted(STEPS)
    assert sorted(chips.GPUS) == sorted(GPU_HBM) == sorted(GPU_FLOPS)


def test_memory_total_is_what_must_fit_at_once():
    """arguments + outputs - outputs that reuse donated arguments + temporaries + code:
    10 + 3 - 2 + 5 + 1 GiB = 17 GiB = 18,253,611,008 bytes."""
    m = analysis.Memory(
        argument=10 * 2**30, output=3 * 2**30, alias=2 * 2**30, temp=5 * 2**30, code=2**30
    )
    assert m.total == 18_253_611_008
    p = _plan(
        "v5e", argument=10 * 2**30, output=3 * 2**30, alias=2 * 2**30, temp=5 * 2**30, code=2**30
    )
    assert p.memory_bytes == 18_253_611_008 and p.as_dict()["memory_bytes"] == 18_253_611_008
    assert p.as_dict()["analysis"]["memory"]["total"] == 18_253_611_008


@pytest.mark.parametrize("chip", sorted(HBM))
def test_fits_is_the_chips_hbm_and_counts_the_temporaries(chip):
    hbm = HBM[chip]
    assert _plan(chip, argument=hbm).fits  # exactly the chip's HBM
    assert not _plan(chip, argument=hbm + 1).fits  # one byte more (one device per chip)
    assert not _plan(chip, argument=hbm // 2, temp=hbm // 2 + 1).fits  # the temporaries count
    assert _plan(chip, argument=hbm // 2, output=hbm // 4, alias=hbm // 4, temp=hbm // 2).fits


@pytest.mark.parametrize("chip", sorted(STEPS))
@pytest.mark.parametrize("case", ["A", "B"])
def test_roofline_of_every_chip(chip, case):
    flops, nbytes = STEPS[chip][0 if case == "A" else 1]
    step, bound, rate, hours = ROOFLINE[case]
    p = _plan(chip, flops, nbytes)
    assert p.step_seconds == pytest.approx(step, rel=1e-9)
    assert p.bound == bound
    assert p.samples_per_second == pytest.approx(rate, rel=1e-6)
    assert p.audioset_hours == pytest.approx(hours, rel=1e-6)
    roofline = p.as_dict()["roofline"]
    assert roofline["step_seconds"] == pytest.approx(step, rel=1e-9) and roofline["bound"] == bound


@pytest.mark.parametrize("gpu", sorted(GPU_HBM))
def test_gpu_fits_and_roofline(gpu):
    """8 GPUs on data, 1024 samples a step of 10 ms: 102,400 samples/s; fits is the GPU's
    whole memory (one device per GPU)."""

    def plan(flops, **memory):
        mem = {"argument": 0, "output": 0, "alias": 0, "temp": 0, "code": 0, **memory}
        a = analysis.Analysis(analysis.Memory(**mem), flops, 0.0, (), 1.0)
        s = gpus.GpuSlice(chips.GPUS[gpu], 8)
        return planner.Plan(s, "base_208", "bfloat16", BATCH, {"data": 8}, a)

    hbm = GPU_HBM[gpu]
    assert plan(1.0, argument=hbm).fits and not plan(1.0, argument=hbm + 1).fits
    assert not plan(1.0, argument=hbm // 2, temp=hbm // 2 + 1).fits
    p = plan(GPU_FLOPS[gpu])
    assert p.step_seconds == pytest.approx(0.01, rel=1e-9) and p.bound == "compute"
    assert p.samples_per_second == pytest.approx(102_400.0, rel=1e-9)
