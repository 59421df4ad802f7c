"""The JSON metadata saved with every checkpoint step (`meta/metadata`: model config,
normalisation statistics, data position, config) read back and checked.

Anything a save never writes (bytes that are not JSON, JSON that is not an object, a model
config that is not an object, statistics that are not two finite numbers; a training
checkpoint without them) is a `MetaError` naming the file. It is not a UserError: the
readers treat the step as damaged (an older step is used, or one line says that none
reads), as for a damaged array file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.model.config import ModelConfig

REQUIRED = ("model", "norm_stats")


class MetaError(ValueError):
    """A checkpoint's metadata file is not what a save writes; the message names it."""


def unreadable(path: str, e: Exception) -> MetaError:
    """The MetaError of a metadata file that does not parse as JSON text."""
    if isinstance(e, UnicodeDecodeError):
        return MetaError(f"{path}: not JSON text (byte 0x{e.object[e.start]:02x} at {e.start})")
    return MetaError(f"{path}: not valid JSON ({type(e).__name__}: {e})")


def check(meta: Any, path: str) -> dict:
    """`meta` as a dict when it has the shape a save writes (a JSON object; its `model` an
    object and its `norm_stats` {mean, std > 0} where present: a checkpoint of other state
    may hold neither); MetaError otherwise."""
    if not isinstance(meta, Mapping):
        raise MetaError(f"{path}: not a JSON object (got {type(meta).__name__})")
    if "model" in meta and not isinstance(meta["model"], Mapping):
        raise MetaError(f"{path}: 'model' is not an object (got {type(meta['model']).__name__})")
    if "norm_stats" in meta:
        stats = meta["norm_stats"]
        values = [stats.get(k) for k in ("mean", "std")] if isinstance(stats, Mapping) else []
        if not (
            len(values) == 2
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
            and values[1] > 0
        ):
            shown = json.dumps(stats)[:80]
            raise MetaError(f"{path}: 'norm_stats' is {shown}, not {{mean, std > 0}}")
    return dict(meta)


def model_entries(meta: dict, where: str) -> tuple[dict, dict]:
    """(model, norm_stats) of a training checkpoint's meta; MetaError naming `where` when
    one is missing."""
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise MetaError(f"{where}: no {' and no '.join(missing)} entry in the checkpoint metadata")
    return meta["model"], meta["norm_stats"]


def model_objects(meta: dict, where: str) -> tuple[ModelConfig, NormStats]:
    """(ModelConfig, NormStats) of a training checkpoint's meta; MetaError naming `where`
    when an entry is missing or its values build neither (a depth "x", an unknown key)."""
    model, stats = model_entries(meta, where)
    try:
        return ModelConfig.from_dict(model), NormStats.from_dict(stats)
    except (KeyError, TypeError, ValueError) as e:
        raise MetaError(f"{where}: the checkpoint's model config is damaged ({e})") from None
