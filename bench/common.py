"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import importlib.util
import os
import platform

from msm_mae_jax.model_config import ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(variant: str):
    """configs/msm_mae.py:get_config(variant) without absl flags."""
    spec = importlib.util.spec_from_file_location(
        "msm_mae_config", os.path.join(ROOT, "configs", "msm_mae.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(variant)


def model_config_for(variant: str) -> ModelConfig:
    return ModelConfig.from_dict(load_config(variant).model.to_dict())


def machine_info() -> dict:
    info = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor(),
    }
    try:
        import jax

        info["jax_devices"] = [str(d) for d in jax.devices()]
        info["jax"] = jax.__version__
    except Exception:  # jax import problems should not hide the other figures
        pass
    return info
