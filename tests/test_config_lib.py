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
    with pytest.raises(ConfigError, match="config file 'missing.py' is not a bundled config"):
        load_config("missing.py:tiny")
    with pytest.raises(ConfigError, match="config file './missing.py' not found"):
        load_config("./missing.py:tiny")
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
    assert load_config("./mine.py:a").v == "a"  # a file of the user's: named by a path
    with pytest.raises(ConfigError, match=r"not a bundled config .* e\.g\. \./mine\.py"):
        load_config("mine.py:a")


def test_wheel_holds_every_package_and_the_configs(tmp_path):
    """A non-editable install (the wheel) resolves configs with no checkout in sight."""
    import os
    import shutil
    import subprocess
    import sys
    import zipfile

    from tests.conftest import ROOT

    # Built from a copy: setuptools leaves build/ behind, whose stale files would go into
    # later wheels.
    src = tmp_path / "src"
    skip = shutil.ignore_patterns(".*", "build", "runs", "*.egg-info", "__pycache__", "tests")
    shutil.copytree(ROOT, src, ignore=skip)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path / "dist"), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("msm_mae_jax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    source_packages = {
        str(p.parent.relative_to(src)) for p in (src / "msm_mae_jax").rglob("__init__.py")
    }
    missing = {p for p in source_packages if f"{p}/__init__.py" not in names}
    assert not missing, f"sub-packages left out of pyproject's package list: {sorted(missing)}"
    assert "msm_mae_jax/configs/msm_mae.py" in names
    data = {p.relative_to(src).as_posix() for p in (src / "msm_mae_jax").rglob("data/*.csv")}
    data |= {p.relative_to(src).as_posix() for p in (src / "msm_mae_jax").rglob("*.npy")}
    assert data and data <= names, f"package data left out of the wheel: {sorted(data - names)}"
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "from msm_mae_jax.core.config_files import load_config; "
        "import msm_mae_jax; assert 'site' in msm_mae_jax.__file__; "
        "print(load_config('configs/msm_mae.py:tiny').variant, load_config('tiny').variant); "
        "from msm_mae_jax.tasks.evar.layout import shipped_split; "
        "print(len(shipped_split('surge_tone_splits.csv')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["tiny", "tiny", "2084"]
