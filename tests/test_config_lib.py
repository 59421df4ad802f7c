import pytest

from msm_mae_jax.config_lib import load_config
from msm_mae_jax.model_config import ConfigError


def test_variant_and_path_specs_agree():
    a = load_config("tiny")
    b = load_config("configs/msm_mae.py:tiny")
    assert a.to_dict() == b.to_dict() and a.variant == "tiny"
    assert load_config("").variant == "base_208"


def test_dotted_overrides_and_unknown_keys():
    c = load_config("tiny", {"total_steps": 7, "model.mask_ratio": 0.5, "data.source": "x"})
    assert c.total_steps == 7 and c.model.mask_ratio == 0.5 and c.data.source == "x"
    with pytest.raises(ConfigError, match="unknown config key 'model.mask_ratoi'"):
        load_config("tiny", {"model.mask_ratoi": 0.5})
    with pytest.raises(ConfigError, match="unknown config key 'nope.x'"):
        load_config("tiny", {"nope.x": 1})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config("missing.py:tiny")
