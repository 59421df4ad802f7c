"""The planner's arithmetic and parsing, without compiling for TPU: slices, meshes, HLO
collectives, tiled array sizes, the per-op breakdown (on CPU programs), the roofline, and the
command's one-line mistakes (tests/test_tpu_compile.py compiles for TPU)."""

import math

import jax
import jax.numpy as jnp
import pytest

from msm_mae_jax.cli import main as cli_main
from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.train.plan import analysis, breakdown, chips, gpus, hlo, planner, report


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


@pytest.mark.parametrize(
    "shape, logical, tiled, space",
    [
        ("f32[17,64]{1,0:T(8,128)}", 17 * 64 * 4, 24 * 128 * 4, 0),  # both minor dims padded
        ("f32[64,17]{0,1:T(8,128)}", 17 * 64 * 4, 24 * 128 * 4, 0),  # the same, transposed
        # minor-to-major {2,0,1}: physical [17, 4, 64], the tile on (4, 64)
        ("bf16[4,17,64]{2,0,1:T(4,128)(2,1)S(1)}", 4 * 17 * 64 * 2, 17 * 4 * 128 * 2, 1),
        ("f32[]{:T(128)S(6)}", 4, 128 * 4, 6),  # a scalar fills a tile
        ("pred[100]{0:T(512)(128)(4,1)}", 100, 512, 0),  # sub-tiles add no padding
        ("f32[64,256]{1,0}", 64 * 256 * 4, 64 * 256 * 4, 0),  # no tiles: as is
    ],
)
def test_tiled_sizes(shape, logical, tiled, space):
    (a,) = hlo.arrays(shape)
    assert (a.logical_bytes, a.tiled_bytes, a.memory_space) == (logical, tiled, space)


def test_hlo_module_ops_are_the_entry_and_control_flow_not_fusion_insides():
    m = hlo.parse_module(HLO_LOOP)
    names = {(c, i.name) for c, i in m.top_level()}
    assert names == {
        *[("main", n) for n in ("x", "w", "fusion.1", "y")],
        *[("cond", n) for n in ("i", "c", "lt")],
        *[("body", n) for n in ("t", "r")],
    }  # not %fused's or %add's
    fusion = next(i for _, i in m.top_level() if i.name == "fusion.1")
    assert m.called_closure(fusion) == ["add", "fused"]
    assert fusion.fusion_kind == "kLoop" and fusion.operands == ("x", "x")
    assert fusion.op_name == "jit(f)/jvp(Model)/encoder/blocks_3/mlp/fc1/dot_general"


HLO_LOOP = """\
HloModule m

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%fused (p0: f32[8], p1: f32[8]) -> f32[] {
  %p0 = f32[8]{0} parameter(0)
  %p1 = f32[8]{0} parameter(1)
  %m = f32[8]{0} multiply(%p0, %p1)
  %z = f32[] constant(0)
  ROOT %r = f32[] reduce(%m, %z), dimensions={0}, to_apply=%add
}

%body (t: (s32[], f32[8])) -> (s32[], f32[8]) {
  %t = (s32[], f32[8]{0}) parameter(0)
  ROOT %r = (s32[], f32[8]{0}) copy(%t)
}

%cond (t: (s32[], f32[8])) -> pred[] {
  %i = s32[] parameter(0)
  %c = s32[] constant(3)
  ROOT %lt = pred[] compare(%i, %c), direction=LT
}

ENTRY %main (x: f32[8]) -> (s32[], f32[8]) {
  %x = f32[8]{0} parameter(0)
  %w = (s32[], f32[8]{0}) parameter(1)
  %fusion.1 = f32[] fusion(%x, %x), kind=kLoop, calls=%fused, metadata={op_name="OP"}
  ROOT %y = (s32[], f32[8]{0}) while(%w), condition=%cond, body=%body
}
""".replace("OP", "jit(f)/jvp(Model)/encoder/blocks_3/mlp/fc1/dot_general")


def _cpu_step():
    """A two-layer MLP's value and gradient, compiled for this CPU."""

    def loss(w, x):
        h = jax.nn.gelu(x @ w["a"], approximate=False)
        return jnp.mean((h @ w["b"]) ** 2)

    w = {"a": jnp.ones((64, 256)), "b": jnp.ones((256, 32))}
    return jax.jit(jax.value_and_grad(loss)).lower(w, jnp.ones((128, 64))).compile()


def test_breakdown_of_a_cpu_program_sums_to_xlas_totals():
    """Untiled CPU layouts: the per-op figures (each op costed alone by XLA) add up to the
    program's totals exactly, all of it in memory space 0, forward and backward told apart."""
    compiled = _cpu_step()
    cost = compiled.cost_analysis()
    b = breakdown.breakdown(compiled)
    assert b.estimated_ops == 0 and len(b.ops) >= 8
    assert b.attributed_flops == pytest.approx(cost["flops"], rel=1e-9)
    assert b.attributed_bytes == pytest.approx(cost["bytes accessed"], rel=1e-9)
    assert b.hbm_bytes == pytest.approx(b.attributed_bytes, rel=1e-9)
    assert {"forward", "backward"} <= {g.name for g in b.groups("phase")}
    matmul = next(g for g in b.groups("category") if g.name == "matmul")
    assert matmul.flops > 0.8 * b.total_flops
    doc = b.as_dict(top=3)
    assert len(doc["top_ops"]) == 3 and doc["total_bytes"] == cost["bytes accessed"]
    text = breakdown.table(b, top=3, per=128)
    assert "per sample" in text and "100.0%" in text


def test_op_sources_drop_wrappers_and_block_numbers():
    name = "jit(_train_step)/transpose(jvp(MaskedAutoencoder))/decoder/decoder_blocks_2/mlp/fc2"
    assert breakdown.source_of(name) == "decoder/decoder_blocks_*/mlp/fc2"
    remat = "jit(f)/transpose(jvp(M))/encoder/blocks_3/attn/encoder/blocks_3/attn/checkpoint/exp"
    assert breakdown.source_of(remat) == "encoder/blocks_*/attn/checkpoint/exp"
    assert breakdown.phase_of(name, "fusion") == "backward"
    assert breakdown.phase_of("jit(_train_step)/jvp(MaskedAutoencoder)/x", "fusion") == "forward"
    assert breakdown.phase_of("jit(_train_step)/add", "fusion") == "update"
    assert breakdown.phase_of("", "copy-start") == "prefetch"
    assert breakdown.phase_of("jit(_train_step)/add", "all-reduce-start") == "collective"


def test_asynchronous_moves_count_their_hbm_ends_once():
    """copy-start -> (destination, source, context): the HBM read of a prefetch into VMEM
    counts once, on the start; the done moves nothing; a slice-start reads only its slice."""
    prefetch = hlo.parse_instruction(
        "  %cs = (f32[64,256]{1,0:T(8,128)S(1)}, f32[64,256]{1,0:T(8,128)}, u32[]{:S(2)}) "
        "copy-start(%p)"
    )
    src = hlo.arrays("f32[64,256]{1,0:T(8,128)}")
    res = hlo.arrays(prefetch.shape)
    assert breakdown._moved_hbm(prefetch, [src], res, 123.0) == 64 * 256 * 4
    done = hlo.parse_instruction("  %cd = f32[64,256]{1,0:T(8,128)S(1)} copy-done(%cs)")
    assert breakdown._moved_hbm(done, [res], hlo.arrays(done.shape), 123.0) == 0
    sl = hlo.parse_instruction(
        "  %ss = ((f32[768,256]{1,0:T(8,128)}), f32[192,256]{1,0:T(8,128)S(1)}, s32[]{:S(2)}) "
        "slice-start(%p), slice={[0:192], [0:256]}"
    )
    big = hlo.arrays("f32[768,256]{1,0:T(8,128)}")
    parts = breakdown._estimate(sl, [big], hlo.arrays(sl.shape))
    assert [b for _, b in parts] == [192 * 256 * 4] * 2  # the slice read, the slice written
    assert breakdown._moved_hbm(sl, [big], hlo.arrays(sl.shape), 0.0) == 192 * 256 * 4
