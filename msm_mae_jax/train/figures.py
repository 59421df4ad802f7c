"""Reconstruction figures: input / masked input / reconstruction for a few clips (PNG)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # files only, no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from msm_mae_jax.model.config import ModelConfig  # noqa: E402


def _patchify(lms_B1FT: np.ndarray, patch_size: tuple[int, int]) -> np.ndarray:
    B, _, F, T = lms_B1FT.shape
    ph, pw = patch_size
    x = lms_B1FT.reshape(B, F // ph, ph, T // pw, pw).transpose(0, 1, 3, 2, 4)
    return x.reshape(B, -1, ph * pw)


def _unpatchify(x_BNP: np.ndarray, config: ModelConfig) -> np.ndarray:
    (ph, pw), (gf, gt) = config.patch_size, config.grid_size
    B = x_BNP.shape[0]
    return x_BNP.reshape(B, gf, gt, ph, pw).transpose(0, 1, 3, 2, 4).reshape(B, gf * ph, gt * pw)


def reconstruction_panels(
    lms_B1FT: np.ndarray, pred_BNP: np.ndarray, mask_BN: np.ndarray, config: ModelConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input, masked input with removed patches as NaN, reconstruction) each [B, F, T].

    The reconstruction shows the prediction on removed patches and the input on visible
    ones, as the MAE visualisation does. With norm_pix_loss the prediction is in per-patch
    normalised units; it is mapped back with the input patch's mean/std for display.
    """
    lms_B1FT = np.asarray(lms_B1FT, np.float32)
    target_BNP = _patchify(lms_B1FT, config.patch_size)
    pred_BNP = np.asarray(pred_BNP, np.float32)
    if config.norm_pix_loss:
        mu = target_BNP.mean(-1, keepdims=True)
        var = target_BNP.var(-1, keepdims=True)
        pred_BNP = pred_BNP * np.sqrt(var + 1e-6) + mu
    m_BN1 = np.asarray(mask_BN, np.float32)[..., None]
    masked = _unpatchify(np.where(m_BN1 > 0, np.nan, target_BNP), config)
    recon = _unpatchify(np.where(m_BN1 > 0, pred_BNP, target_BNP), config)
    return lms_B1FT[:, 0], masked, recon


def save_reconstruction_figure(
    path: str,
    lms_B1FT: np.ndarray,
    pred_BNP: np.ndarray,
    mask_BN: np.ndarray,
    config: ModelConfig,
    title: str = "",
) -> str:
    """One row per clip, columns input / masked input / reconstruction; shared colour scale."""
    inp, masked, recon = reconstruction_panels(lms_B1FT, pred_BNP, mask_BN, config)
    B = inp.shape[0]
    vmin, vmax = np.nanpercentile(inp, 1), np.nanpercentile(inp, 99)
    F, T = config.input_size
    fig, axes = plt.subplots(
        B, 3, figsize=(3 * max(2.0, T / 50), 1.2 + B * max(1.0, F / 50)), squeeze=False
    )
    for b in range(B):
        for j, (img, name) in enumerate(
            ((inp, "input"), (masked, "masked input"), (recon, "reconstruction"))
        ):
            ax = axes[b, j]
            ax.imshow(
                img[b],
                origin="lower",
                aspect="auto",
                vmin=vmin,
                vmax=vmax,
                cmap="magma",
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if b == 0:
                ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)
    return path
