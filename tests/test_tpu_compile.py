"""The production steps compiled for TPU slices on this CPU (libtpu's compile-only devices).

Pre-training (`train.state.Setup`), fine-tuning (`finetune.state.Setup`) and the
Runtime's encoder are traced on abstract inputs, lowered and compiled for v5e and v4 slices:
an eager computation anywhere in set-up or init would fail here (compile-only devices run
nothing). The compiled programs are checked against the CPU compile of the same step (FLOPs),
against the sharding rules (parameters and optimizer state split over fsdp), and for the
collectives each mesh needs; the planner must tell a plan that fits from one that does not.
libtpu is installed beside the environment by `make setup-dev` (not importable: see
msm_mae_jax/train/plan/devices.py); without it these tests fail and say how to install it.
"""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from finetune_utils import MICRO, ft_config
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from msm_mae_jax.cli import config_args
from msm_mae_jax.cli import plan as cli
from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.features import calls, chunking
from msm_mae_jax.finetune import model as ft_model
from msm_mae_jax.finetune import optimizer as ft_optimizer
from msm_mae_jax.finetune import state as ft_state
from msm_mae_jax.model import mae, vit
from msm_mae_jax.model.config import ModelConfig
from msm_mae_jax.train import optim
from msm_mae_jax.train.plan import analysis, breakdown, chips, devices, planner, report
from msm_mae_jax.train.state import Setup

DATA = {"data": 4, "fsdp": 1, "tensor": 1}
FSDP = {"data": 2, "fsdp": 2, "tensor": 1}
# Two topologies, a data mesh and a data x fsdp mesh: one compile each.
CASES = {"v5e-data": ("v5e:2x2", DATA), "v4-fsdp": ("v4-8", FSDP)}


def _libtpu() -> str:
    try:
        return devices.find_libtpu()
    except ConfigError as e:
        pytest.fail(f"{e} (`make setup-dev` installs it for the tests)")


@pytest.fixture(scope="module")
def tiny():
    return config_args.parse_config("tiny", [])


@pytest.fixture(scope="module")
def slices():
    _libtpu()
    out = {}
    for name in ("v5e:2x2", "v4-8"):
        s = chips.parse_slice(name)
        out[name] = (s, devices.tpu_devices(s))
    return out


@pytest.fixture(scope="module")
def plans(tiny, slices):
    """The tiny step compiled for each case (one compile each, shared by the tests; the
    compiled programs kept for their shardings)."""
    out = {}
    for case, (name, mesh) in CASES.items():
        s, devs = slices[name]
        out[case] = planner.plan(tiny, s, devs, 16, mesh, keep_compiled=True, breakdown=True)
    return out


def test_devices_are_the_slices_chips(slices):
    (_, v5e_devs), (v4, v4_devs) = slices["v5e:2x2"], slices["v4-8"]
    assert [d.platform for d in v5e_devs + v4_devs] == ["tpu"] * 8
    assert {d.device_kind for d in v5e_devs} == {"TPU v5 lite"}
    # v4-8: 4 chips of 2 TensorCores, one megacore device per chip, as jax shows a real v4-8
    assert (v4.chips, v4.topology, {d.device_kind for d in v4_devs}) == (4, "v4:2x2x1", {"TPU v4"})
    assert len(v4_devs) == 4 and len(v5e_devs) == 4
    assert jax.devices()[0].platform == "cpu"  # loading libtpu changed nothing for jax


def test_the_model_is_traced_for_the_platform_of_the_mesh(slices):
    """Attention picks its kernel by the platform compiled for: a TPU mesh on this CPU host
    traces the TPU model (jax's default backend would say cpu)."""
    _, devs = slices["v5e:2x2"]
    mesh = jax.make_mesh((4,), ("data",), devices=devs, axis_types=(jax.sharding.AxisType.Auto,))
    seen = []

    def f(x):
        seen.append(vit.target_platform())
        return x

    with jax.set_mesh(mesh):
        jax.jit(f).trace(jax.ShapeDtypeStruct((4,), jnp.float32))
    jax.jit(f).trace(jax.ShapeDtypeStruct((4,), jnp.float32))
    assert seen == ["tpu", "cpu"]


@pytest.mark.parametrize("case", list(CASES))
def test_train_step_compiles_for_tpu(plans, case):
    p = plans[case]
    a = p.analysis
    assert a is not None and p.fits, p.oom_message
    assert 0 < a.memory.total < p.chip.hbm_bytes
    assert a.memory.alias > 0.9 * a.memory.output  # the donated state is updated in place
    assert a.flops > 0 and a.bytes_accessed > 0
    assert p.samples_per_second > 0 and p.bound in ("compute", "memory")


def test_flops_match_the_cpu_compile_of_the_same_step(tiny, plans):
    """Per-device FLOPs of the TPU program vs the CPU one on a 4-device CPU mesh of the same
    step. v5e's count is ~8% higher for this tiny model (its fusions duplicate cheap
    element-wise work of the backward pass; the forward pass is within 3%, the matmuls are
    the same), so 12% of slack: a missing backward pass, an unsplit batch or a step per
    micro-batch is off by 2x or more."""
    c = planner.run_config(tiny, 16, DATA)
    setup = Setup(c, optim.resolve_schedule(c, 1000), devices=jax.devices()[:4])
    compiled, _, _ = analysis.compile_for(
        setup.train_step_lean,
        (setup.abstract_state, setup.abstract_input()),
        "cpu",
        context=setup.activate,
    )
    cpu = analysis.analyse(compiled, 0.0)
    assert plans["v5e-data"].analysis.flops == pytest.approx(cpu.flops, rel=0.12)
    # fsdp moves parameters, not work: the same FLOPs per chip (v4's compiler fuses
    # differently: 194 against v5e's 210 MFLOP, the CPU's 194)
    assert plans["v4-fsdp"].analysis.flops == pytest.approx(cpu.flops, rel=0.12)


def _kernels(tree) -> dict[str, object]:
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]
    return {
        jax.tree_util.keystr(k): v
        for k, v in flat
        if jax.tree_util.keystr(k).endswith("['kernel']")
    }


def test_parameters_are_split_over_fsdp_as_the_rules_say(plans):
    """On the compiled program: every kernel is split over fsdp along its 'embed' axis
    (rules: embed -> fsdp) and along no other, in the state it takes and in the state it
    returns, and so are Adam's moments."""
    p = plans["v4-fsdp"]
    state_in = p.compiled.input_shardings[0][0]
    state_out = p.compiled.output_shardings[0]
    model = ModelConfig.from_dict(config_args.parse_config("tiny", []).model)
    logical = _kernels(nn.get_partition_spec(mae.abstract_params(model)))
    params = _kernels(state_in.params)
    assert params.keys() == logical.keys() and len(params) >= 10
    split = 0
    for name, spec in logical.items():
        sh = params[name]
        assert sh == _kernels(state_out.params)[name]
        mesh_spec = sh.spec + (None,) * (len(spec) - len(sh.spec))
        for axis, mesh_axis in zip(spec, mesh_spec, strict=True):
            assert (mesh_axis == "fsdp") == (axis == "embed"), (name, spec, sh.spec)
        split += "embed" in spec
    assert split >= 8
    mu = state_in.opt_state
    leaves = [s for s in jax.tree.leaves(mu) if isinstance(s, NamedSharding)]
    assert sum("fsdp" in s.spec for s in leaves) >= 2 * split  # Adam's mu and nu follow


def test_collectives_are_those_of_the_mesh(plans):
    """Data parallel: gradients all-reduced, no parameter gathering; fsdp: parameters
    all-gathered before use (and gradients reduce-scattered or all-reduced)."""
    kinds = {c: {x.kind for x in plans[c].analysis.collectives} for c in CASES}
    assert "all-reduce" in kinds["v5e-data"] and "all-gather" not in kinds["v5e-data"]
    assert "all-gather" in kinds["v4-fsdp"], kinds["v4-fsdp"]
    data, fsdp = (plans[c].analysis.memory.argument for c in ("v5e-data", "v4-fsdp"))
    assert fsdp < 0.6 * data  # the state (most of the arguments) is split in two


@pytest.mark.parametrize("case", list(CASES))
def test_breakdown_parts_sum_to_xlas_totals(plans, case):
    """Each op of the compiled TPU step costed alone, with libtpu's tiled array sizes: the
    FLOPs add up to XLA's total exactly, the bytes to all but a few percent of it (what libtpu
    counts beyond XLA's rules for gathers and prefetch copies, large in this tiny model: ~6%;
    0.2% for ViT-B). Untiled sizes would miss about half."""
    p = plans[case]
    b = p.breakdown
    assert b.attributed_flops == pytest.approx(p.analysis.flops, rel=1e-6)
    assert b.total_bytes == p.analysis.bytes_accessed
    assert 0.9 * b.total_bytes < b.attributed_bytes <= 1.001 * b.total_bytes
    assert sum(o.logical_bytes for o in b.ops) < 0.7 * b.total_bytes
    assert 0 < b.hbm_bytes < 0.5 * b.attributed_bytes  # most of this tiny step stays on chip
    assert {"forward", "backward", "update"} <= {g.name for g in b.groups("phase")}
    assert p.hbm_step_seconds <= p.step_seconds
    text = report.breakdown_text(p, 5)
    assert "per sample (4 a chip)" in text and "HBM part" in text
    doc = p.as_dict()
    assert doc["breakdown"]["total_flops"] == p.analysis.flops
    assert doc["per_sample"]["bytes"] == pytest.approx(p.analysis.bytes_accessed / 4)


def test_tiled_sizes_are_what_libtpu_counts(slices):
    """Single-op programs for one v5e chip: f32[17,64] takes 24 x 128 elements, a scalar a
    128-element tile; the breakdown of each is libtpu's own total, to the byte."""
    _, devs = slices["v5e:2x2"]
    mesh = jax.make_mesh((1,), ("d",), devices=devs[:1], axis_types=(jax.sharding.AxisType.Auto,))
    rep = NamedSharding(mesh, P())
    cases = {
        "add": ((17, 64), lambda x, y: x + y, 3 * 24 * 128 * 4),
        "scalar": ((), lambda x, y: x * y, None),
        "tanh": ((130, 96), lambda x, y: jnp.tanh(x) * y, 3 * 136 * 128 * 4),
    }
    for name, (shape, fn, want) in cases.items():
        arg = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=rep)
        compiled = jax.jit(fn).trace(arg, arg).lower(lowering_platforms=("tpu",)).compile()
        b = breakdown.breakdown(compiled)
        assert b.attributed_bytes == b.total_bytes, name
        assert want is None or b.total_bytes == want, name


def test_planner_tells_fits_from_does_not_fit(plans, tmp_path, capsys):
    """The tiny step with a 2^18 batch on one v5e chip needs ~200 GiB of temporaries: the
    compiler refuses it and the planner says so; the 16-batch plans fit."""
    assert all(p.fits for p in plans.values())
    out = tmp_path / "plan.json"
    argv = ["--tpu", "v5e-1", "--config", "tiny", "--batch", str(2**18), "--json", str(out)]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if "v5e-1" in line)
    assert " NO " in row and "needs" in row
    doc = json.loads(out.read_text())
    (p,) = doc["plans"]
    assert p["fits"] is False and p["memory_bytes"] > 16 * 2**30 and "HBM" in p["oom_message"]
    assert doc["command"].startswith("msm-mae plan --tpu v5e-1")


def test_finetune_step_compiles_for_tpu(slices):
    s, devs = slices["v5e:2x2"]
    c = ft_config(mesh="(('data',2),('fsdp',2),('tensor',1))", batch_size="8")
    head = ft_model.HeadConfig.from_config(c.head, 3, MICRO)
    setup = ft_state.Setup(c, MICRO, head, False, ft_optimizer.schedule(c, 3), 64, devices=devs)
    r = setup.replicated_sharding
    batch = [
        jax.ShapeDtypeStruct(shape, dt, sharding=sh)
        for shape, dt, sh in zip(
            setup.batch_shapes,
            (jnp.float32, jnp.bool_, jnp.float32),
            setup.batch_shardings,
            strict=True,
        )
    ]
    aux = [jax.ShapeDtypeStruct((8,), t, sharding=r) for t in (jnp.float32, jnp.int32)]
    compiled, _, _ = analysis.compile_for(
        setup.train_step, (setup.abstract_state, *batch, *aux), "tpu", context=setup.activate
    )
    a = analysis.analyse(compiled, 0.0)
    assert a.flops > 0 and 0 < a.memory.total < s.chip.hbm_bytes
    qkv = compiled.input_shardings[0][0].params["encoder"]["blocks_0"]["attn"]["qkv"]["kernel"]
    assert qkv.spec[0] == "fsdp"


def test_runtime_encoder_compiles_for_tpu(slices):
    """The Runtime's feature function (waveforms -> log-mel -> encoder -> frame features),
    its batch split over the slice's chips."""
    s, devs = slices["v4-8"]
    mesh = jax.make_mesh((4,), ("batch",), devices=devs, axis_types=(jax.sharding.AxisType.Auto,))
    rep, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("batch"))
    params = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
        nn.unbox(
            jax.eval_shape(
                lambda: mae.Encoder(MICRO).init(jax.random.key(0), mae.dummy_input(MICRO))
            )
        )["params"],
    )
    units = 2
    samples = chunking.window_samples(units * MICRO.input_size[1])  # a window of 2 units
    args = (
        params,
        jax.ShapeDtypeStruct((8, samples), jnp.float32, sharding=rows),
        jax.ShapeDtypeStruct((8,), jnp.int32, sharding=rows),
        jax.ShapeDtypeStruct((), jnp.float32, sharding=rep),
        jax.ShapeDtypeStruct((), jnp.float32, sharding=rep),
    )
    fn = jax.jit(
        lambda *a: calls._features(
            *a, config=MICRO, units=units, from_wav=True, batch_stats=False, return_layers=False
        ),
        out_shardings=rows,
    )
    compiled, _, _ = analysis.compile_for(fn, args, "tpu", context=lambda: jax.set_mesh(mesh))
    (out,) = jax.tree.leaves(compiled.out_info)
    assert out.shape == (8, units * 32 // 16, MICRO.feature_dim)
    assert analysis.analyse(compiled, 0.0).flops > 0


def test_libtpu_is_found_where_make_installs_it_and_leaves_no_trace(slices, tmp_path):
    with pytest.raises(ConfigError, match="make setup-tpu"):
        devices.find_libtpu(str(tmp_path))
    (tmp_path / "libtpu").mkdir()
    (tmp_path / "libtpu" / "libtpu.so").write_bytes(b"")
    assert devices.find_libtpu(str(tmp_path)) == os.path.join(tmp_path, "libtpu", "libtpu.so")
    before = dict(os.environ)
    assert len(devices.tpu_devices(chips.parse_slice("v5e-16"))) == 16
    assert dict(os.environ) == before  # libtpu's start-up variables were set only meanwhile
