"""The model under a fake 8-device CPU mesh: logical axis names -> mesh shardings.

Forward + gradient compile and run with the batch sharded over `data` (8), over a (4, 2)
`data` x `fsdp` mesh (parameters sharded over `fsdp` by the config's rules) and over a
(2, 2, 2) `data` x `fsdp` x `tensor` mesh (heads, qkv and mlp axes over `tensor` too), and give
the single-device loss and gradients.
"""

import importlib.util
import pathlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from model_utils import small_model

from msm_mae_jax.model import mae
from msm_mae_jax.model.config import ModelConfig

TINY = small_model()
B = 16


def _config_rules():
    path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "msm_mae.py"
    spec = importlib.util.spec_from_file_location("msm_mae_config_for_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rules = mod.get_config("tiny").sharding_rules
    return tuple((name, tuple(a) if isinstance(a, list) else a) for name, a in rules)


def _mesh(shape):
    devices = np.array(jax.devices()[: int(np.prod(shape))]).reshape(shape)
    return Mesh(devices, ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)


def _batch_constraints(hlo_text):
    return [
        line
        for line in hlo_text.splitlines()
        if "sharding_constraint" in line and '{"data", "fsdp"}' in line
    ]


def _loss(params, lms, key):
    return mae.MaskedAutoencoder(TINY).apply({"params": params}, lms, key)[0]


@pytest.fixture(scope="module")
def reference():
    params = mae.init_params(TINY, jax.random.key(0))
    lms = jax.random.normal(jax.random.key(1), (B, 1, *TINY.input_size))
    key = jax.random.key(2)
    loss, grads = jax.jit(jax.value_and_grad(_loss))(params, lms, key)
    return params, lms, key, float(loss), grads


@pytest.mark.parametrize(
    "shape", [(8, 1, 1), (4, 2, 1), (2, 2, 2)], ids=["data8", "data4xfsdp2", "data2xfsdp2xtensor2"]
)
def test_sharded_step_matches_single_device(reference, shape):
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (fake) devices: XLA_FLAGS=--xla_force_host_platform_device_count=8")
    params, lms, key, loss_1, grads_1 = reference
    mesh, rules = _mesh(shape), _config_rules()
    logical = nn.get_partition_spec(mae.abstract_params(TINY))
    param_sh = nn.logical_to_mesh_sharding(logical, mesh, rules)
    batch_sh = NamedSharding(mesh, P(("data", "fsdp")))

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        step = jax.jit(
            jax.value_and_grad(_loss),
            in_shardings=(param_sh, batch_sh, NamedSharding(mesh, P())),
            out_shardings=(NamedSharding(mesh, P()), param_sh),
        )
        lowered = step.lower(params, lms, key)
        # The activation constraints act under the rules: batch over (data, fsdp).
        assert len(_batch_constraints(lowered.as_text())) >= TINY.depth + TINY.decoder_depth
        p_sh = jax.device_put(params, param_sh)
        loss, grads = step(p_sh, jax.device_put(lms, batch_sh), key)

    # fsdp splits the embed axis of the weights, tensor their mlp / qkv axis
    kernel = grads["encoder"]["blocks_0"]["mlp"]["fc1"]["kernel"]
    qkv = grads["encoder"]["blocks_1"]["attn"]["qkv"]["kernel"]
    fsdp, tensor = shape[1], shape[2]
    assert kernel.addressable_shards[0].data.shape == (64 // fsdp, 4 * 64 // tensor)
    assert qkv.addressable_shards[0].data.shape == (64 // fsdp, 3 * 64 // tensor)
    if tensor > 1:
        assert tuple(kernel.sharding.spec) == ("fsdp", "tensor")
    np.testing.assert_allclose(float(loss), loss_1, rtol=1e-5, atol=1e-5)
    for g, g1 in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_1), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(g1), atol=1e-5)


def test_constraints_are_no_ops_without_rules(reference):
    params, lms, key, loss_1, _ = reference
    lowered = jax.jit(_loss).lower(params, lms, key).as_text()
    assert _batch_constraints(lowered) == []
    assert float(jax.jit(_loss)(params, lms, key)) == pytest.approx(loss_1, abs=1e-6)


# Logical axis names of every parameter, by its path (block numbers as {i}): a kernel or
# table that loses a name is no longer sharded by the rules (silently replicated).
LOGICAL_NAMES = {
    "encoder/patch_embed/proj/kernel": ("patch", "embed"),
    "encoder/patch_embed/proj/bias": ("embed",),
    "encoder/cls_token": (None, None, "embed"),
    "encoder/norm/scale": ("embed",),
    "encoder/norm/bias": ("embed",),
    "decoder/decoder_embed/kernel": (None, "embed"),  # its input: the encoder's width
    "decoder/decoder_embed/bias": ("embed",),
    "decoder/mask_token": (None, None, "embed"),
    "decoder/decoder_norm/scale": ("embed",),
    "decoder/decoder_norm/bias": ("embed",),
    "decoder/decoder_pred/kernel": ("embed", "patch"),
    "decoder/decoder_pred/bias": ("patch",),
    **{
        f"{part}/{blocks}_{{i}}/{name}": names
        for part, blocks in (("encoder", "blocks"), ("decoder", "decoder_blocks"))
        for name, names in {
            "norm1/scale": ("embed",),
            "norm1/bias": ("embed",),
            "attn/qkv/kernel": ("embed", "qkv"),
            "attn/q_bias": ("qkv",),
            "attn/v_bias": ("qkv",),
            "attn/proj/kernel": ("qkv", "embed"),
            "attn/proj/bias": ("embed",),
            "norm2/scale": ("embed",),
            "norm2/bias": ("embed",),
            "mlp/fc1/kernel": ("embed", "mlp"),
            "mlp/fc1/bias": ("mlp",),
            "mlp/fc2/kernel": ("mlp", "embed"),
            "mlp/fc2/bias": ("embed",),
        }.items()
    },
}


def test_every_parameter_has_its_logical_names():
    """Every parameter of ViT-B carries the names of the table; every kernel (>= 2-D, not a
    token) has a name on one of its two axes."""
    c = ModelConfig()
    abstract = mae.abstract_params(c)
    flat = jax.tree_util.tree_flatten_with_path(
        abstract, is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )[0]
    got = {}
    for path, x in flat:
        assert isinstance(x, nn.Partitioned), path
        key = "/".join(str(k.key) for k in path)
        got[key] = x.names
        assert len(x.names) == x.value.ndim, (key, x.names)
        if x.value.ndim >= 2 and not key.endswith("_token"):
            assert any(n is not None for n in x.names[-2:]), (key, x.names)
    generic = {}
    for key, names in got.items():
        generic.setdefault(re.sub(r"blocks_\d+", "blocks_{i}", key), set()).add(names)
    assert generic == {k: {v} for k, v in LOGICAL_NAMES.items()}
    assert len(got) == 12 + 13 * (c.depth + c.decoder_depth)  # every block's parameters


def test_init_directly_into_shardings():
    """Parameters can be created sharded (jit with out_shardings), never on one host."""
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (fake) devices")
    mesh, rules = _mesh((4, 2, 1)), _config_rules()
    param_sh = nn.logical_to_mesh_sharding(
        nn.get_partition_spec(mae.abstract_params(TINY)), mesh, rules
    )
    model = mae.MaskedAutoencoder(TINY)
    init = jax.jit(
        lambda k: nn.unbox(model.init(k, mae.dummy_input(TINY), k)["params"]),
        out_shardings=param_sh,
    )
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        params = init(jax.random.key(0))
    q = params["encoder"]["blocks_1"]["attn"]["qkv"]["kernel"]
    assert q.sharding.spec[0] == "fsdp"
    assert q.addressable_shards[0].data.shape == (TINY.embed_dim // 2, 3 * TINY.embed_dim)
    assert float(jnp.abs(q).sum()) > 0
