"""The encoder artifact: a directory with the encoder's parameters and what is needed to use them.

Written by `msm_mae_jax.export` (from a training run) and `msm_mae_jax.convert` (official
PyTorch weights); read by `msm_mae_jax.runtime.Runtime.load`. Layout:

    DIR/msm_mae.json   {"format", "model": ModelConfig, "norm_stats": {mean, std},
                        "version", "source", ...extra}
    DIR/encoder/       orbax PyTree checkpoint of the encoder parameters (float32)
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from msm_mae_jax import __version__
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.model.config import ModelConfig

FORMAT = "msm_mae_jax.encoder/1"
META_FILE = "msm_mae.json"
PARAMS_DIR = "encoder"


def is_model_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, META_FILE))


def save_model_dir(
    path: str,
    model_config: ModelConfig,
    encoder_params: Any,
    norm_stats: NormStats,
    source: str,
    extra: dict | None = None,
) -> str:
    """Writes the artifact; the metadata file is written last so a partial dir is never valid."""
    path = os.path.abspath(path)
    if os.path.exists(os.path.join(path, META_FILE)):
        os.remove(os.path.join(path, META_FILE))
    if os.path.exists(os.path.join(path, PARAMS_DIR)):
        shutil.rmtree(os.path.join(path, PARAMS_DIR))
    os.makedirs(path, exist_ok=True)
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), encoder_params)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(path, PARAMS_DIR), params)
        ckptr.wait_until_finished()
    meta = {
        "format": FORMAT,
        "model": model_config.to_dict(),
        "norm_stats": norm_stats.to_dict(),
        "version": __version__,
        "source": source,
        **(extra or {}),
    }
    tmp = os.path.join(path, META_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=2)
    os.replace(tmp, os.path.join(path, META_FILE))
    return path


def load_model_dir(path: str) -> tuple[ModelConfig, Any, NormStats, dict]:
    """Returns (model config, encoder params as numpy, normalisation stats, metadata)."""
    meta_path = os.path.join(path, META_FILE)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"{path}: not an msm_mae_jax model directory (no {META_FILE})")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{meta_path}: unsupported format {meta.get('format')!r}, expected {FORMAT!r}"
        )
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(os.path.join(os.path.abspath(path), PARAMS_DIR))
    params = jax.tree.map(np.asarray, params)
    return (
        ModelConfig.from_dict(meta["model"]),
        params,
        NormStats.from_dict(meta["norm_stats"]),
        meta,
    )
