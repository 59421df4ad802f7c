"""Loading the Python config files outside absl (demo, benchmarks, evaluation)."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import ml_collections

from msm_mae_jax.model_config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "msm_mae.py")


def load_config(
    spec: str = "", overrides: dict[str, Any] | None = None
) -> ml_collections.ConfigDict:
    """'configs/msm_mae.py:tiny' (or just 'tiny') -> its ConfigDict with dotted overrides.

    Overrides must name declared keys, as `--config.key=value` does on the command line.
    """
    path, _, variant = spec.rpartition(":") if ":" in spec else ("", "", spec)
    path = path or DEFAULT_CONFIG
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    mod_spec = importlib.util.spec_from_file_location(f"_msm_mae_config_{abs(hash(path))}", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    config = mod.get_config(variant or None)
    for key, value in (overrides or {}).items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            if p not in node:
                raise ConfigError(f"unknown config key {key!r} in {path}")
            node = node[p]
        if leaf not in node:
            raise ConfigError(f"unknown config key {key!r} in {path}")
        node[leaf] = value
    return config
