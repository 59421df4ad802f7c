"""Fixed sin-cos positional tables (constants, never parameters), computed in numpy.

Encoder: MAE's 2-D table over the (F/ph, T/pw) patch grid. Decoder: the interleaved 1-D
sinusoid table over the patch index (official default) or the same 2-D table. Rows follow the
frequency-major patch order (index = f * grid_t + t); a zero row for [CLS] is prepended when
asked.
"""

from __future__ import annotations

import numpy as np


def sincos_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """[sin(pos * w_k)]_k ++ [cos(pos * w_k)]_k with w_k = 1 / 10000^(k / (D/2)); [M, D]."""
    if embed_dim % 2:
        raise ValueError(f"embed_dim={embed_dim} must be even for a sin-cos table")
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out_MK = np.outer(np.asarray(pos, np.float64).reshape(-1), omega)
    return np.concatenate([np.sin(out_MK), np.cos(out_MK)], axis=1)


def sincos_2d(embed_dim: int, grid_size: tuple[int, int], cls_token: bool = False) -> np.ndarray:
    """MAE 2-D table, float32 [(1 +) gf * gt, D].

    The first D/2 channels encode the time (width) index, the last D/2 the frequency (height)
    index, as MAE's `get_2d_sincos_pos_embed` (its meshgrid puts the width index first).
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim={embed_dim} must be divisible by 4 for a 2-D table")
    gf, gt = grid_size
    t_FT, f_FT = np.meshgrid(np.arange(gt), np.arange(gf))  # each [gf, gt], row-major = f-major
    table = np.concatenate(
        [sincos_1d(embed_dim // 2, t_FT), sincos_1d(embed_dim // 2, f_FT)], axis=1
    )
    return _with_cls(table, cls_token)


def sinusoid_1d(embed_dim: int, length: int, cls_token: bool = False) -> np.ndarray:
    """Interleaved transformer table, float32 [(1 +) length, D].

    angle(p, j) = p / 10000^(2 * (j // 2) / D); sin at even j, cos at odd j.
    """
    j = np.arange(embed_dim)
    angle_ND = (
        np.arange(length, dtype=np.float64)[:, None]
        / np.power(10000.0, 2 * (j // 2) / embed_dim)[None, :]
    )
    table = np.where(j % 2 == 0, np.sin(angle_ND), np.cos(angle_ND))
    return _with_cls(table, cls_token)


def encoder_table(embed_dim: int, grid_size: tuple[int, int], cls_token: bool) -> np.ndarray:
    return sincos_2d(embed_dim, grid_size, cls_token)


def decoder_table(
    kind: str, embed_dim: int, grid_size: tuple[int, int], cls_token: bool
) -> np.ndarray:
    if kind == "1d":
        return sinusoid_1d(embed_dim, grid_size[0] * grid_size[1], cls_token)
    if kind == "2d":
        return sincos_2d(embed_dim, grid_size, cls_token)
    raise ValueError(f"decoder positional table {kind!r}; expected '1d' or '2d'")


def _with_cls(table: np.ndarray, cls_token: bool) -> np.ndarray:
    if cls_token:
        table = np.concatenate([np.zeros((1, table.shape[1])), table], axis=0)
    return table.astype(np.float32)
