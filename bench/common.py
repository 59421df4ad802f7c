"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import os
import platform

from msm_mae_jax.core.config_files import load_config
from msm_mae_jax.model.config import ModelConfig


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
