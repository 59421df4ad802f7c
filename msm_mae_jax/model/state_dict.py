"""Official MSM-MAE state-dict names and tensors <-> Flax parameters (no file I/O).

Parameter mapping (Flax path -> official name): `encoder/` and `decoder/` prefixes dropped,
`blocks_{i}` -> `blocks.{i}`, `kernel` -> `weight` transposed ([in, out] <-> [out, in]),
LayerNorm `scale` -> `weight`; the patch embedding kernel [ph*pw, D] is the Conv2d weight
[D, 1, ph, pw] flattened over (ph, pw) and transposed. The fixed tables `pos_embed` and
`decoder_pos_embed` are checked against ours (a warning when they differ) and not stored.
The model configuration (depth, widths, [CLS], input and patch size) is inferred from the
tensors where the caller does not give it.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from msm_mae_jax.core.errors import ConfigError, ConversionError
from msm_mae_jax.core.key_paths import key_names
from msm_mae_jax.model import mae, posembed
from msm_mae_jax.model.config import ModelConfig

NUM_MEL_BINS = 80  # the official front end; used only when nothing else gives the input size
HEAD_WIDTH = 64  # every official variant has 64-wide heads


# ---- names ---------------------------------------------------------------------------------
def official_name(path: tuple[str, ...]) -> str:
    """('encoder', 'blocks_3', 'attn', 'qkv', 'kernel') -> 'blocks.3.attn.qkv.weight'."""
    parts = list(path[1:]) if path[0] in ("encoder", "decoder") else list(path)
    out = []
    for p in parts:
        m = re.fullmatch(r"(decoder_blocks|blocks)_(\d+)", p)
        out.extend([m.group(1), m.group(2)] if m else [p])
    if out[-1] in ("kernel", "scale"):
        out[-1] = "weight"
    return ".".join(out)


def tree_paths(tree: Any) -> list[tuple[tuple[str, ...], Any]]:
    """(path of dict keys, leaf) for every leaf of a nested parameter dict."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [(key_names(path), leaf) for path, leaf in flat]


def _to_official(path: tuple[str, ...], a: np.ndarray) -> np.ndarray:
    """Dense kernels [in, out] -> Linear weights [out, in] (the patch kernel is reshaped to
    the Conv2d layout by the caller, which knows the patch size)."""
    return a.T if path[-1] == "kernel" else a


def _from_official(path: tuple[str, ...], a: np.ndarray) -> np.ndarray:
    if path[-1] != "kernel":
        return a
    if path[-3:-1] == ("patch_embed", "proj"):  # Conv2d [D, 1, ph, pw] -> [ph*pw, D]
        return a.reshape(a.shape[0], -1).T
    return a.T


# ---- state dict -> params --------------------------------------------------------------------
def _strip_prefix(sd: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in sd.items():
        k2 = k[len("module.") :] if k.startswith("module.") else k
        out[k2] = np.asarray(v, dtype=np.float32)
    return out


def check_finite(sd: Mapping[str, np.ndarray]) -> None:
    """ConversionError naming every tensor that holds NaN or Inf (it would make every
    feature NaN)."""
    bad = []
    for name, a in sd.items():
        nan, inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
        if nan or inf:
            bad.append(f"{name} ({nan} NaN, {inf} Inf of {a.size})")
    if bad:
        raise ConversionError(f"non-finite values in {len(bad)} tensor(s): {', '.join(bad)}")


def infer_config(
    sd: Mapping[str, np.ndarray],
    *,
    input_size: tuple[int, int] | None = None,
    patch_size: tuple[int, int] | None = None,
    num_heads: int | None = None,
    decoder_num_heads: int | None = None,
) -> dict[str, Any]:
    """ModelConfig kwargs read from the tensors (and the given sizes/heads)."""

    def need(key: str) -> np.ndarray:
        if key not in sd:
            raise ConversionError(
                f"state dict has no {key!r}: not an MSM-MAE/MAE checkpoint "
                f"(keys start with {sorted(sd)[:5]})"
            )
        return sd[key]

    w = need("patch_embed.proj.weight")
    if w.ndim != 4 or w.shape[1] != 1:
        raise ConversionError(
            f"patch_embed.proj.weight has shape {w.shape}; expected [D, 1, ph, pw]"
        )
    embed_dim, ph, pw = w.shape[0], w.shape[2], w.shape[3]
    if patch_size is not None and tuple(patch_size) != (ph, pw):
        raise ConversionError(
            f"patch size {patch_size} given, but patch_embed.proj.weight "
            f"{w.shape} has {ph}x{pw} patches"
        )
    use_cls = "cls_token" in sd
    if input_size is None:
        if "pos_embed" not in sd:
            raise ConversionError(
                "no input size given and no pos_embed to infer it from: pass --input-size FxT"
            )
        n = sd["pos_embed"].shape[-2] - int(use_cls)
        gf = NUM_MEL_BINS // ph
        if NUM_MEL_BINS % ph or n % gf:
            raise ConversionError(
                f"cannot infer the input size from pos_embed "
                f"{sd['pos_embed'].shape}: pass --input-size FxT"
            )
        input_size = (NUM_MEL_BINS, (n // gf) * pw)
    if "pos_embed" in sd:  # before anything else reads the grid from input_size
        rows = int(np.prod(sd["pos_embed"].shape[:-1]))
        f, t = input_size
        expect = (f // ph) * (t // pw) + int(use_cls)
        if rows != expect:
            raise ConversionError(
                f"pos_embed has {rows} rows but a {f}x{t} input with "
                f"{ph}x{pw} patches has {expect} positions: wrong "
                "--input-size / --patch-size?"
            )
    depth = _count(sd, "blocks")
    decoder_depth = _count(sd, "decoder_blocks")
    kw: dict[str, Any] = dict(
        input_size=tuple(input_size),
        patch_size=(ph, pw),
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads or max(1, embed_dim // HEAD_WIDTH),
        use_cls_token=use_cls,
        mlp_ratio=need("blocks.0.mlp.fc1.weight").shape[0] / embed_dim,
    )
    if decoder_depth:
        dd = need("decoder_embed.weight").shape[0]
        kw.update(
            decoder_embed_dim=dd,
            decoder_depth=decoder_depth,
            decoder_num_heads=decoder_num_heads or max(1, dd // HEAD_WIDTH),
        )
        kw["decoder_pos_embed"] = _decoder_table_kind(sd, kw)
    try:
        ModelConfig(**kw)
    except ConfigError as e:
        raise ConversionError(f"the checkpoint's shapes give an invalid model: {e}") from e
    return kw


def _count(sd: Mapping[str, Any], prefix: str) -> int:
    ids = {int(m.group(1)) for k in sd if (m := re.match(rf"{prefix}\.(\d+)\.", k))}
    if ids and ids != set(range(len(ids))):
        raise ConversionError(f"{prefix}.* indices are not contiguous: {sorted(ids)}")
    return len(ids)


def _decoder_table_kind(sd: Mapping[str, np.ndarray], kw: dict) -> str:
    if "decoder_pos_embed" not in sd:
        return "1d"
    c = ModelConfig(**kw)
    stored = sd["decoder_pos_embed"].reshape(-1, c.decoder_embed_dim)
    for kind in ("1d", "2d"):
        ours = posembed.decoder_table(kind, c.decoder_embed_dim, c.grid_size, c.use_cls_token)
        if ours.shape == stored.shape and np.allclose(ours, stored, atol=1e-4):
            return kind
    warnings.warn(
        "decoder_pos_embed matches neither the 1-D nor the 2-D sin-cos table; "
        "using the official default '1d'",
        stacklevel=3,
    )
    return "1d"


def state_dict_to_params(
    sd: Mapping[str, Any],
    *,
    input_size: tuple[int, int] | None = None,
    patch_size: tuple[int, int] | None = None,
    num_heads: int | None = None,
    decoder_num_heads: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Official state dict -> (ModelConfig kwargs, {'encoder': ..., 'decoder': ...}).

    Every expected name must be present with the expected shape; leftover names are an error.
    Without decoder tensors (an encoder-only dict), 'decoder' is None.
    """
    sd = _strip_prefix(sd)
    check_finite(sd)
    kw = infer_config(
        sd,
        input_size=input_size,
        patch_size=patch_size,
        num_heads=num_heads,
        decoder_num_heads=decoder_num_heads,
    )
    config = ModelConfig(**kw)
    has_decoder = "decoder_embed.weight" in sd
    abstract = nn.unbox(mae.abstract_params(config))
    parts = ("encoder", "decoder") if has_decoder else ("encoder",)
    used = {"pos_embed", "decoder_pos_embed"}
    params: dict[str, Any] = {"encoder": {}, "decoder": None}
    missing, bad = [], []
    for part in parts:
        tree: dict[str, Any] = {}
        for path, leaf in tree_paths({part: abstract[part]}):
            name = official_name(path)
            if name not in sd:
                missing.append(name)
                continue
            used.add(name)
            a = _from_official(path, sd[name])
            if a.shape != leaf.shape:
                bad.append(f"{name}: {sd[name].shape} (expected {_official_shape(path, leaf)})")
                continue
            node = tree
            for p in path[1:-1]:
                node = node.setdefault(p, {})
            node[path[-1]] = np.ascontiguousarray(a, np.float32)
        params[part] = tree
    unexpected = sorted(set(sd) - used)
    errors = []
    if missing:
        errors.append(f"missing keys {missing}")
    if bad:
        errors.append(f"wrong shapes {bad}")
    if unexpected:
        errors.append(f"unexpected keys {unexpected}")
    if errors:
        raise ConversionError(
            f"state dict does not fit {config.run_name_prefix} "
            f"(D={config.embed_dim}, depth={config.depth}): " + "; ".join(errors)
        )
    _check_table(
        sd,
        "pos_embed",
        posembed.encoder_table(config.embed_dim, config.grid_size, config.use_cls_token),
    )
    return kw, params


def _official_shape(path: tuple[str, ...], leaf: Any) -> tuple[int, ...]:
    shape = tuple(leaf.shape)
    return shape[::-1] if path[-1] == "kernel" else shape


def _check_table(sd: Mapping[str, np.ndarray], name: str, ours: np.ndarray) -> None:
    if name not in sd:
        return
    stored = sd[name].reshape(-1, sd[name].shape[-1])
    if stored.shape != ours.shape:
        raise ConversionError(
            f"{name} has {stored.shape[0]} rows; the model has {ours.shape[0]} "
            "positions: wrong --input-size / --patch-size?"
        )
    err = float(np.abs(stored - ours).max())
    if err > 1e-4:
        warnings.warn(
            f"stored {name} differs from the fixed sin-cos table by up to {err:.3g}; "
            "the fixed table is used",
            stacklevel=3,
        )


# ---- params -> state dict --------------------------------------------------------------------
def params_to_state_dict(params: Mapping[str, Any], config: ModelConfig) -> dict[str, np.ndarray]:
    """{'encoder', 'decoder'} (or encoder-only {'encoder'}) params -> official-named numpy
    state dict, including the fixed `pos_embed` / `decoder_pos_embed` buffers [1, N(+1), D]."""
    params = nn.unbox(params)
    sd: dict[str, np.ndarray] = {}
    D, (ph, pw) = config.embed_dim, config.patch_size
    for part in ("encoder", "decoder"):
        if params.get(part) is None:
            continue
        for path, leaf in tree_paths({part: params[part]}):
            a = _to_official(path, np.asarray(leaf, np.float32))
            if path[-3:] == ("patch_embed", "proj", "kernel"):
                a = a.reshape(D, 1, ph, pw)
            sd[official_name(path)] = np.ascontiguousarray(a)
    sd["pos_embed"] = posembed.encoder_table(D, config.grid_size, config.use_cls_token)[None]
    if params.get("decoder") is not None:
        sd["decoder_pos_embed"] = posembed.decoder_table(
            config.decoder_pos_embed,
            config.decoder_embed_dim,
            config.grid_size,
            config.use_cls_token,
        )[None]
    return sd
