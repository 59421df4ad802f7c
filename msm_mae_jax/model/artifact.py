"""The encoder artifact: a directory with the encoder's parameters and what is needed to use them.

Written by `msm_mae_jax.export` (from a training run) and `msm_mae_jax.convert` (official
PyTorch weights); read by `msm_mae_jax.runtime.Runtime.load`. Layout:

    DIR/msm_mae.json   {"format", "model": ModelConfig, "norm_stats": {mean, std},
                        "version", "source", ...extra}
    DIR/encoder/       orbax PyTree checkpoint of the encoder parameters (float32)
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from msm_mae_jax import __version__
from msm_mae_jax.core import fs, json_files
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.model.config import ModelConfig

FORMAT = "msm_mae_jax.encoder/1"
META_FILE = "msm_mae.json"
PARAMS_DIR = "encoder"


def is_model_dir(path: str) -> bool:
    return fs.isfile(fs.join(path, META_FILE))


def save_model_dir(
    path: str,
    model_config: ModelConfig,
    encoder_params: Any,
    norm_stats: NormStats,
    source: str,
    extra: dict | None = None,
) -> str:
    """Writes the artifact; the metadata file is written last so a partial dir is never valid."""
    path = fs.absolute(path)
    fs.remove(fs.join(path, META_FILE))
    fs.rmtree(fs.join(path, PARAMS_DIR))
    fs.makedirs(path)
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), encoder_params)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(fs.join(path, PARAMS_DIR), params)
        ckptr.wait_until_finished()
    meta = {
        "format": FORMAT,
        "model": model_config.to_dict(),
        "norm_stats": norm_stats.to_dict(),
        "version": __version__,
        "source": source,
        **(extra or {}),
    }
    fs.write_text(fs.join(path, META_FILE), json.dumps(meta, indent=2))
    return path


def load_model_dir(path: str) -> tuple[ModelConfig, Any, NormStats, dict]:
    """Returns (model config, encoder params as numpy, normalisation stats, metadata)."""
    meta_path = fs.join(path, META_FILE)
    if not fs.isfile(meta_path):
        raise FileNotFoundError(f"{path}: not an msm_mae_jax model directory (no {META_FILE})")
    meta = json_files.read_object(
        meta_path, "the model's metadata", hint="export or convert the model again"
    )
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{meta_path}: unsupported format {meta.get('format')!r}, expected {FORMAT!r}"
        )
    try:
        model_config = ModelConfig.from_dict(meta["model"])
        norm_stats = NormStats.from_dict(meta["norm_stats"])
    except (KeyError, TypeError, ValueError) as e:  # entries a save never writes
        raise ValueError(
            f"{meta_path}: the model's metadata is damaged ({type(e).__name__}: {e}); export "
            "or convert the model again"
        ) from None
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(fs.join(fs.absolute(path), PARAMS_DIR))
    return model_config, jax.tree.map(np.asarray, params), norm_stats, meta
