"""The planner's arithmetic and parsing, without compiling: slices, meshes, HLO collectives,
the roofline, and the command's one-line mistakes (tests/test_tpu_compile.py compiles)."""

import math

import pytest

from msm_mae_jax.cli import main as cli_main
from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.train.plan import analysis, chips, gpus, planner, report


@pytest.mark.parametrize(
    "name, topology, n_chips, hosts, accelerator",
    [
        ("v4-8", "v4:2x2x1", 4, 1, "v4-8"),
        ("v4-32", "v4:2x2x4", 16, 4, "v4-32"),
        ("v5e-16", "v5e:4x4", 16, 4, "v5litepod-16"),
        ("v5litepod-256", "v5e:16x16", 256, 64, "v5litepod-256"),
        ("v5p-128", "v5p:4x4x4", 64, 16, "v5p-128"),
        ("v6e-8", "v6e:2x4", 8, 2, "v6e-8"),
        ("v5e:2x2", "v5e:2x2", 4, 1, "v5litepod-4"),
        ("v5:2x2x2", "v5p:2x2x2", 8, 2, "v5p-16"),
    ],
)
def test_slices_by_cloud_name_or_topology(name, topology, n_chips, hosts, accelerator):
    s = chips.parse_slice(name)
    assert (s.topology, s.chips, s.hosts, s.accelerator_type) == (
        topology,
        n_chips,
        hosts,
        accelerator,
    )
    assert chips.parse_slice(s.topology) == s  # the topology names the same slice


@pytest.mark.parametrize("bad", ["v4-6", "v5e-12", "v3-8", "v5e:4x4x4", "tpu"])
def test_unknown_slices_are_one_line_errors(bad):
    with pytest.raises(ConfigError, match="--tpu"):
        chips.parse_slice(bad)


def test_gpus():
    g = gpus.parse_gpus("h100-16")
    assert (g.name, g.chips, g.hosts, g.topology) == ("h100-16", 16, 2, "1x2x8")
    assert gpus.parse_gpus("a100-4").topology == "1x1x4"
    text = gpus.target_config(g.chip)  # what XLA reads: SMs, memory, compute capability
    assert "core_count: 132" in text and "device_memory_size: 80000000000" in text
    assert "major: 9" in text and '"NVIDIA H100 80GB HBM3"' in text


def test_meshes():
    assert planner.parse_mesh(None, 16) == {"data": 16, "fsdp": 1, "tensor": 1}
    assert planner.parse_mesh("data=-1,fsdp=4", 16) == {"data": 4, "fsdp": 4, "tensor": 1}
    assert planner.parse_mesh("fsdp=8", 8) == {"data": 1, "fsdp": 8, "tensor": 1}
    for bad in ("data=3", "data=4", "model=4", "data=-1,fsdp=-1", "data=x"):
        with pytest.raises(ConfigError, match="--mesh"):
            planner.parse_mesh(bad, 16)
    assert planner.sweep_meshes(16, (4, 16, 3)) == [
        {"data": 16, "fsdp": 1, "tensor": 1},
        {"data": 4, "fsdp": 4, "tensor": 1},
        {"data": 1, "fsdp": 16, "tensor": 1},
    ]


HLO = """\
HloModule jit_step, entry_computation_layout={(f32[64,256]{1,0})->f32[]}

%fused (p: bf16[8,128]) -> bf16[8,128] {
  %p = bf16[8,128]{1,0} parameter(0)
  ROOT %all-gather.9 = bf16[32,128]{1,0:T(8,128)(2,1)} all-gather(%p), dimensions={0}
}

ENTRY %main (a: f32[64,256], b: f32[16]) -> f32[] {
  %ag-start = (f32[16,256]{1,0}, f32[64,256]{1,0}) all-gather-start(%a), dimensions={0}
  %ag-done = f32[64,256]{1,0:T(8,128)} all-gather-done(%ag-start)
  %ar = (f32[64,256]{1,0}, f32[16]{0}) all-reduce(%ag-done, %b), to_apply=%add
  %rs = f32[16,256]{1,0} reduce-scatter(%ar.0), dimensions={0}, to_apply=%add
  %cp-start = (s32[4]{0}, s32[4]{0}, u32[], u32[]) collective-permute-start(%c)
  %cp-done = s32[4]{0} collective-permute-done(%cp-start)
  %not = f32[2]{0} add(%x, %y), metadata={op_name="all-reduce(fake)"}
  ROOT %r = f32[] constant(0)
}
"""


def test_collectives_of_an_hlo_module():
    got = {c.kind: (c.count, c.bytes) for c in analysis.collectives(HLO)}
    assert got == {
        # the fused one (32*128 bf16) and the async pair, counted once with its result
        "all-gather": (2, 32 * 128 * 2 + 64 * 256 * 4),
        "all-reduce": (1, 64 * 256 * 4 + 16 * 4),
        "reduce-scatter": (1, 16 * 256 * 4),
        "collective-permute": (1, 4 * 4),
    }


def _plan(flops, bytes_accessed, batch=1024, chip="v5e", total=2**30):
    mem = analysis.Memory(argument=total, output=0, alias=0, temp=0, code=0)
    a = analysis.Analysis(mem, flops, bytes_accessed, (), 1.0)
    s = chips.Slice(chips.CHIPS[chip], (2, 2))
    return planner.Plan(s, "base_208", "bfloat16", batch, {"data": 4}, a)


def test_roofline_is_the_slower_of_compute_and_hbm():
    p = _plan(flops=197e12 * 0.5, bytes_accessed=819e9 * 0.1)  # v5e: 0.5 s of compute
    assert p.step_seconds == pytest.approx(0.5) and p.bound == "compute"
    assert p.samples_per_second == pytest.approx(2048)
    assert p.audioset_hours == pytest.approx(2e8 / 2048 / 3600)
    q = _plan(flops=197e12 * 0.1, bytes_accessed=819e9 * 0.3)
    assert q.step_seconds == pytest.approx(0.3) and q.bound == "memory"
    assert _plan(1.0, 1.0, total=17 * 2**30).fits is False  # more than the chip's 16 GiB
    oom = planner.Plan(p.slice, "x", "float32", 8, {"data": 4}, None, "OOM", 20 * 2**30)
    assert not oom.fits and oom.samples_per_second == 0 and math.isinf(oom.audioset_hours)
    assert planner.best([oom, p, q]) is q  # the faster (0.3 s a step) of the two that fit
    table = report.table([p, oom], [p])
    assert "* v5e-4" in table and "needs 20.0" in table


def test_out_of_memory_messages():
    m = "RESOURCE_EXHAUSTED: ... required for HLO temporaries (202.01G) exceeds available HBM"
    assert planner._oom_bytes(m) == int(202.01 * 2**30)
    assert planner._oom_bytes("Used 20.5G of 15.75G hbm. Exceeded hbm capacity") == 20.5 * 2**30


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tpu", "v5e-12", "--batch", "8"], "--tpu v5e-12"),
        (["--tpu", "v5e-16", "--batch", "8", "--mesh", "data=3"], "--mesh"),
        (["--tpu", "v5e-16"], "--batch"),
        (["--tpu", "v5e-16", "--batch", "0"], "--batch"),
        (["--tpu", "v5e-16", "--batch", "8", "--batch-per-chip", "2"], "not both"),
        (["--tpu", "v5e-16", "--batch", "8", "--libtpu", "/nonexistent"], "make setup-tpu"),
        (["--tpu", "v5e-16", "--batch", "8", "--config.nope=1"], "unknown config key"),
        (["--gpu", "h100-8", "--batch", "8", "--cuda-plugin", "/nonexistent"], "setup-gpu-plan"),
        (["--gpu", "h100-12", "--batch", "8"], "hosts of 8"),
        (["--gpu", "v100-8", "--batch", "8"], "--gpu"),
        (["--tpu", "v5e-16", "--gpu", "h100-8", "--batch", "8"], "not allowed with"),
    ],
)
def test_mistakes_are_one_line(argv, message, capsys):
    assert cli_main.main(["plan", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
