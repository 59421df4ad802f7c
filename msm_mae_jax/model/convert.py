"""Official MSM-MAE weights (PyTorch state dict) <-> Flax parameters (command: `msm-mae convert`).

    python -m msm_mae_jax.convert SRC OUT_DIR [--input-size 80x208] [--patch-size 16x16]
        [--num-heads H] [--decoder-num-heads H] (--norm-mean M --norm-std S | --per-batch-norm)

SRC is an official checkpoint (`.pth`: `{'model': state_dict, ...}` or a bare state dict;
needs PyTorch; no code from the file runs) or a `.npz` with the same names. The input
and patch sizes come from the run-name prefix of the checkpoint's folder
(`80x208p16x16_...`), else from the flags, else from the tensors (80 mel bins, the patch from
the patch-embedding kernel, the frames from the positional table). [CLS] is on when
`cls_token` is present; depth and widths come from the tensors; heads default to width / 64
(ViT-S 6, ViT-B 12, ViT-L 16, decoder 6), overridable.

Normalisation: the official checkpoints carry no statistics (training used the dataset's
mean/std; the official HEAR wrapper normalises each batch by its own statistics). So either
pass the statistics of your data (`--norm-mean/--norm-std`), or `--per-batch-norm`, which
stores mean 0 / std 1 with `"normalization": "per_batch"` in the metadata: the runtime then
normalises each batch by its own statistics, as the official HEAR wrapper does. There is no
silent default.

The name and tensor mapping is in `model/state_dict.py`.
"""

from __future__ import annotations

import argparse
import io
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from msm_mae_jax.core import fs, staging
from msm_mae_jax.core.errors import ConversionError
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.model.artifact import load_meta, read_file, save_model_dir
from msm_mae_jax.model.config import ModelConfig, parse_run_name
from msm_mae_jax.model.state_dict import (  # noqa: F401  (the converter's public names)
    check_finite,
    infer_config,
    official_name,
    params_to_state_dict,
    state_dict_to_params,
    tree_paths,
)

DECODER_SIDE_FILE = "decoder_params.npz"


# ---- files -----------------------------------------------------------------------------------
def load_state_dict(src: str) -> dict[str, np.ndarray]:
    """Reads a `.pth`/`.pt` (PyTorch) or `.npz` state dict into float32 numpy arrays (a local
    file or a URL)."""
    if not fs.isfile(src):
        raise FileNotFoundError(f"{src}: no such checkpoint file")
    if fs.is_remote(src):
        with staging.local_file(src) as local:
            return load_state_dict(local)
    if src.endswith(".npz"):
        return _load_npz(src)
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"reading {src} needs PyTorch: `pip install torch` (the CPU build is "
            "enough), or convert it to a .npz of the same names"
        ) from e
    try:
        # Only tensors and plain containers are unpickled (nothing runs); training scripts of
        # the MAE family also store their argparse.Namespace, a plain container too.
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (torch raises many kinds for one bad file)
        raise _unreadable(src, e) from None
    sd = ckpt.get("model", ckpt) if isinstance(ckpt, Mapping) else None
    if not isinstance(sd, Mapping):
        raise ConversionError(
            f"{src}: expected {{'model': state_dict}} or a state dict, got {type(ckpt).__name__}"
        )
    out = {}
    for k, v in sd.items():
        if not hasattr(v, "detach"):
            raise ConversionError(f"{src}: entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k] = v.detach().cpu().float().numpy()
    return out


def _unreadable(src: str, e: Exception) -> ConversionError:
    """What a `.pth` that torch does not read is, in one line (torch's own advice, to load
    without its safety check, is not repeated: loading may run code from the file)."""
    text = str(e)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return ConversionError(
            f"{src}: not a plain state-dict checkpoint: it stores a Python object "
            f"({found.group(1)}) that is not loaded, for safety; save "
            "{'model': model.state_dict()} (or a .npz of the same names) and convert that"
        )
    first = text.strip().splitlines()[0].split(". ")[0] if text.strip() else ""
    detail = "" if not first or "eights only" in first or "weights_only" in first else f": {first}"
    return ConversionError(
        f"{src}: a damaged file, or not a PyTorch checkpoint ({type(e).__name__}{detail})"
    )


# What a malformed .npz raises: not a zip or cut short (BadZipFile, EOFError), a member that
# is not an array or holds objects/strings (ValueError, TypeError), an unreadable file.
_NPZ_ERRORS = (zipfile.BadZipFile, EOFError, ValueError, TypeError, KeyError, OSError)


def _load_npz(src: str) -> dict[str, np.ndarray]:
    try:
        z = np.load(src)
        if not isinstance(z, np.lib.npyio.NpzFile):  # a .npy renamed
            raise ConversionError(f"{src}: a single array, not a .npz of named tensors")
        with z:
            return {k: np.asarray(z[k], np.float32) for k in z.files}
    except _NPZ_ERRORS as e:
        raise ConversionError(
            f"{src}: not a readable .npz of float tensors ({type(e).__name__}: {e})"
        ) from None


def sizes_from_path(src: str) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Input and patch size from the run-name prefix of the folder (or the file name)."""
    path = fs.absolute(src)
    for name in (fs.basename(fs.dirname(path)), fs.basename(path)):
        parsed = parse_run_name(name)
        if parsed:
            return parsed
    return None


def convert(
    src: str,
    out_dir: str,
    *,
    input_size: tuple[int, int] | None = None,
    patch_size: tuple[int, int] | None = None,
    num_heads: int | None = None,
    decoder_num_heads: int | None = None,
    norm_stats: NormStats | None = None,
    per_batch_norm: bool = False,
    keep_decoder: bool = True,
) -> str:
    """Converts SRC into an encoder artifact at OUT_DIR (see `model_dir`); returns OUT_DIR."""
    if (norm_stats is None) == (not per_batch_norm):
        raise ValueError(
            "give the normalisation statistics of your data (--norm-mean, "
            "--norm-std) or choose per-batch normalisation (--per-batch-norm); "
            "the official checkpoints carry no statistics"
        )
    from_path = sizes_from_path(src)
    if input_size is None and from_path:
        input_size = from_path[0]
    if patch_size is None and from_path:
        patch_size = from_path[1]
    state_dict = load_state_dict(src)  # its errors name the file
    try:
        kw, params = state_dict_to_params(
            state_dict,
            input_size=input_size,
            patch_size=patch_size,
            num_heads=num_heads,
            decoder_num_heads=decoder_num_heads,
        )
    except ConversionError as e:
        raise ConversionError(f"{src}: {e}") from e
    config = ModelConfig(**kw)
    extra: dict[str, Any] = {"normalization": "per_batch" if per_batch_norm else "dataset"}
    files = {}
    if keep_decoder and params["decoder"] is not None:
        # A further file of the artifact: written in its swap, its SHA-256 checked when read.
        extra["decoder_params"] = DECODER_SIDE_FILE
        flat = {"/".join(p): np.asarray(a) for p, a in tree_paths(params["decoder"])}
        buf = io.BytesIO()
        np.savez(buf, **flat)
        files[DECODER_SIDE_FILE] = buf.getvalue()
    save_model_dir(
        out_dir,
        config,
        params["encoder"],
        norm_stats if norm_stats is not None else NormStats(0.0, 1.0),
        source=f"converted from {fs.absolute(src)}",
        extra=extra,
        files=files,
    )
    return out_dir


def load_decoder_params(model_dir: str) -> dict[str, Any]:
    """The decoder parameters kept beside a converted artifact (nested dict of numpy);
    ValueError when the file differs from the SHA-256 recorded when it was written."""
    path = fs.join(model_dir, DECODER_SIDE_FILE)
    if not fs.isfile(path):
        raise FileNotFoundError(
            f"{model_dir}: no {DECODER_SIDE_FILE} (converted without "
            "decoder, or not a converted artifact)"
        )
    data = read_file(model_dir, DECODER_SIDE_FILE, load_meta(model_dir))
    tree: dict[str, Any] = {}
    with np.load(io.BytesIO(data)) as z:
        for k in z.files:
            node = tree
            *parents, leaf = k.split("/")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = np.asarray(z[k])
    return tree
