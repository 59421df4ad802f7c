import importlib.util

import numpy as np
import pytest

from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.model.artifact import load_model_dir, save_model_dir
from msm_mae_jax.model.config import ModelConfig, parse_run_name


def _load_config_module():
    spec = importlib.util.spec_from_file_location("msm_mae_cfg", "configs/msm_mae.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_defaults_are_vit_b_80x208():
    c = ModelConfig()
    assert c.grid_size == (5, 13) and c.num_patches == 65 and c.num_keep == 16
    assert c.feature_dim == 3840 and c.run_name_prefix == "80x208p16x16"


@pytest.mark.parametrize(
    "size,patch",
    [
        ((80, 208), (16, 16)),
        ((80, 512), (16, 8)),
        ((80, 608), (16, 4)),
        ((80, 208), (8, 16)),
        ((80, 208), (80, 4)),
    ],
)
def test_supported_shapes(size, patch):
    c = ModelConfig(input_size=size, patch_size=patch)
    assert c.num_patches == (size[0] // patch[0]) * (size[1] // patch[1])


def test_invalid_shapes_fail_with_key_names():
    with pytest.raises(ConfigError, match="not divisible"):
        ModelConfig(input_size=(80, 200), patch_size=(16, 16))
    with pytest.raises(ConfigError, match="num_heads"):
        ModelConfig(embed_dim=100, num_heads=12)
    with pytest.raises(ConfigError, match="unknown model config key"):
        ModelConfig.from_dict({"embed_dims": 3})


def test_parse_run_name():
    assert parse_run_name("80x208p16x16_mymodel") == ((80, 208), (16, 16))
    assert parse_run_name("80x512p16x8") == ((80, 512), (16, 8))
    assert parse_run_name("checkpoint-100") is None


def test_config_variants_build_model_configs():
    mod = _load_config_module()
    for v in mod.VARIANTS:
        c = mod.get_config(v)
        ModelConfig.from_dict(c.model.to_dict())
    with pytest.raises(ConfigError, match="unknown config variant"):
        mod.get_config("huge_999")


def test_model_dir_round_trip(tmp_path):
    params = {
        "a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)},
        "b": np.ones((4,), np.float32),
    }
    cfg = ModelConfig(embed_dim=64, depth=2, num_heads=4)
    save_model_dir(str(tmp_path / "m"), cfg, params, NormStats(-7.0, 4.0), source="test")
    cfg2, params2, stats2, meta = load_model_dir(str(tmp_path / "m"))
    assert cfg2 == cfg and stats2 == NormStats(-7.0, 4.0) and meta["source"] == "test"
    np.testing.assert_array_equal(params2["a"]["kernel"], params["a"]["kernel"])
    with pytest.raises(FileNotFoundError, match="not an msm_mae_jax model directory"):
        load_model_dir(str(tmp_path))
