import pytest

from msm_mae_jax.core.config_files import load_config
from msm_mae_jax.core.errors import ConfigError


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
    with pytest.raises(ConfigError, match="config file 'missing.py' not found"):
        load_config("missing.py:tiny")
    with pytest.raises(ConfigError, match="unknown config variant 'tinny' in msm_mae.py; known"):
        load_config("configs/msm_mae.py:tinny")


def test_resolves_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = load_config("configs/msm_mae.py:tiny")
    assert a.to_dict() == load_config("msm_mae:tiny").to_dict() == load_config("tiny").to_dict()
    own = tmp_path / "mine.py"
    own.write_text(
        "VARIANTS = ('a',)\ndef get_config(arg=None):\n"
        "    import ml_collections\n    return ml_collections.ConfigDict({'v': arg})\n"
    )
    assert load_config("mine.py:a").v == "a"
