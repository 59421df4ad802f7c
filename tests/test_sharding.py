"""Mesh parsing, logical rules -> shardings, batch checks."""

import jax
import pytest
from jax.sharding import PartitionSpec as P

from configs.msm_mae import get_config
from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.model import mae
from msm_mae_jax.model.config import ModelConfig
from msm_mae_jax.train import sharding


def test_parse_mesh_infers_minus_one():
    assert sharding.parse_mesh_spec([("data", -1), ("fsdp", 2)], 8) == (("data", "fsdp"), (4, 2))
    assert sharding.parse_mesh_spec([("data", 2), ("fsdp", 1)], 8)[1] == (2, 1)


@pytest.mark.parametrize(
    "spec,match",
    [
        ([("data", -1), ("fsdp", 3)], "does not divide"),
        ([("data", -1), ("fsdp", -1)], "at most one"),
        ([("data", 0)], "positive"),
        ([("data", 2), ("data", 4)], "repeated"),
        ([], "empty"),
        (["data"], "list of"),
    ],
)
def test_bad_mesh_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        sharding.parse_mesh_spec(spec, 8)


def test_rules_must_name_mesh_axes():
    mesh = sharding.make_mesh([("data", -1)])
    with pytest.raises(ConfigError, match="'embed'.*'fsdp'"):
        sharding.parse_rules([("batch", "data"), ("embed", "fsdp")], mesh)


def test_subset_mesh_uses_first_devices():
    mesh = sharding.make_mesh([("data", 2), ("fsdp", 1)])
    assert mesh.devices.size == 2 and set(mesh.devices.flat) == set(jax.devices()[:2])


def test_param_shardings_follow_rules_and_divisibility():
    c = get_config("tiny")
    mesh = sharding.make_mesh([("data", 2), ("fsdp", 4), ("tensor", 1)])
    rules = sharding.parse_rules(c.sharding_rules, mesh)
    mc = ModelConfig.from_dict(c.model)
    sh = sharding.param_shardings(mae.abstract_params(mc), mesh, rules)
    blk = sh["encoder"]["blocks_0"]
    assert blk["mlp"]["fc1"]["kernel"].spec == P("fsdp", "tensor")
    assert blk["attn"]["proj"]["kernel"].spec == P("tensor", "fsdp")
    assert sh["encoder"]["cls_token"].spec == P(None, None, "fsdp")
    # A dimension the axis cannot split evenly is replicated, not an XLA error.
    assert sharding.spec_for_shape(P("embed", None), (6, 3), mesh, rules) == P(None, None)
    assert sharding.batch_shards(mesh, rules) == 8
    assert sharding.batch_sharding(mesh, rules).spec == P(("data", "fsdp"), None, None, None)
