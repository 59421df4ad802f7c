"""The encoder artifact: a directory with the encoder's parameters and what is needed to use them.

Written by `msm_mae_jax.export` (from a training run) and `msm_mae_jax.convert` (official
PyTorch weights); read by `msm_mae_jax.runtime.Runtime.load`. Layout:

    DIR/msm_mae.json   {"format", "model": ModelConfig, "norm_stats": {mean, std},
                        "version", "source", "checksums": {"arrays", "files"}, ...extra}
    DIR/encoder/       orbax PyTree checkpoint of the encoder parameters (float32)
    DIR/<name>         further files of the artifact (a fine-tuned head), when given

Writing never damages an existing artifact: the new one is written completely beside it and
then swapped in (`core.outputs.replacing_dir`), so a process killed at any moment leaves the
old artifact or the new one. (Object stores have no rename: there the files are replaced in
place, the metadata removed first and written last, so a cut write leaves no artifact rather
than a mixed one.)

Every array's checksum (`model.checksums`) and every further file's SHA-256 are recorded in
the metadata and checked when the artifact is read: damage (a flipped bit) is a ValueError
naming the array or file, never silently different features.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from msm_mae_jax import __version__
from msm_mae_jax.core import fs, json_files, output_kinds, outputs
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.model import checksums, orbax_quiet
from msm_mae_jax.model.config import ModelConfig

FORMAT = "msm_mae_jax.encoder/1"
META_FILE = output_kinds.MODEL_META_FILE
PARAMS_DIR = output_kinds.MODEL_PARAMS_DIR


def is_model_dir(path: str) -> bool:
    return fs.isfile(fs.join(path, META_FILE))


def save_model_dir(
    path: str,
    model_config: ModelConfig,
    encoder_params: Any,
    norm_stats: NormStats,
    source: str,
    extra: dict | None = None,
    files: dict[str, bytes] | None = None,
) -> str:
    """Writes the artifact to `path` (replacing an artifact there atomically); returns path.

    files: further files of the artifact, {name: content}, checksummed like the arrays.
    ValueError: `path` exists and is something else (a file, a folder of other files)."""
    path = fs.absolute(path).rstrip("/")
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), encoder_params)
    files = dict(files or {})
    meta = {
        "format": FORMAT,
        "model": model_config.to_dict(),
        "norm_stats": norm_stats.to_dict(),
        "version": __version__,
        "source": source,
        **(extra or {}),
        "checksums": {
            "arrays": checksums.tree_checksums(params),
            "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        },
    }
    if fs.is_remote(path):  # written in place there: no artifact until the new one is whole
        fs.remove(fs.join(path, META_FILE))
        fs.rmtree(fs.join(path, PARAMS_DIR))
    else:
        _check_replaceable(path)
    with outputs.replacing_dir(path) as new:
        _write(new, params, files, meta)
    return path


def _write(path: str, params: Any, files: dict[str, bytes], meta: dict) -> None:
    """The artifact's files into `path`; the metadata last."""
    fs.makedirs(path)
    orbax_quiet.install()
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(fs.join(path, PARAMS_DIR), params)
        ckptr.wait_until_finished()
    for name, data in files.items():
        fs.write_bytes(fs.join(path, name), data)
    fs.write_text(fs.join(path, META_FILE), json.dumps(meta, indent=2))


def _check_replaceable(path: str) -> None:
    """An existing `path` must be an artifact, an empty folder or an artifact's remains."""
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path):
        raise ValueError(f"{path} exists and is not a directory; give a folder for the model")
    if not output_kinds.MODEL_DIR.recognise(path):
        raise ValueError(
            f"{path} is a folder of other files (no {META_FILE}); give a new or empty folder, "
            "or an existing model directory to replace"
        )


def load_meta(path: str) -> dict:
    """The artifact's metadata (`msm_mae.json`) as a dict; FileNotFoundError when `path` is no
    artifact, ValueError (DataError when not JSON) naming the file when it is damaged."""
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
    return meta


def load_model_dir(path: str) -> tuple[ModelConfig, Any, NormStats, dict]:
    """Returns (model config, encoder params as numpy, normalisation stats, metadata).

    ValueError naming the array when a checksum recorded at export does not match."""
    meta_path = fs.join(path, META_FILE)
    meta = load_meta(path)
    try:
        model_config = ModelConfig.from_dict(meta["model"])
        norm_stats = NormStats.from_dict(meta["norm_stats"])
    except (KeyError, TypeError, ValueError) as e:  # entries a save never writes
        raise ValueError(
            f"{meta_path}: the model's metadata is damaged ({type(e).__name__}: {e}); export "
            "or convert the model again"
        ) from None
    orbax_quiet.install()
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(fs.join(fs.absolute(path), PARAMS_DIR))
    params = jax.tree.map(np.asarray, params)
    bad = checksums.first_mismatch(params, meta.get("checksums", {}).get("arrays"))
    if bad:
        raise ValueError(
            f"{fs.join(path, PARAMS_DIR)}: {bad}; the model is damaged, export it again"
        )
    return model_config, params, norm_stats, meta


def read_file(path: str, name: str, meta: dict) -> bytes:
    """A further file of the artifact, checked against its recorded SHA-256 (when recorded)."""
    data = fs.read_bytes(fs.join(path, name))
    want = meta.get("checksums", {}).get("files", {}).get(name)
    if want is not None and hashlib.sha256(data).hexdigest() != want:
        raise ValueError(
            f"{fs.join(path, name)}: checksum mismatch (the file changed since it was "
            "written); the model is damaged, export it again"
        )
    return data
