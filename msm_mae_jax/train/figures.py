"""Reconstruction figures: input / masked input / reconstruction for a few clips (PNG).

Each row is one clip cropped to its real frames (the zero padding of short clips is left
out), with time in seconds, mel bins and one colour bar shared by every panel.

Shape letters: B clips, F mel bins, T frames, N patches, P values per patch.
"""

from __future__ import annotations

import io
import os

import matplotlib

matplotlib.use("Agg")  # files only, no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from msm_mae_jax.data import audio  # noqa: E402
from msm_mae_jax.model.config import ModelConfig  # noqa: E402

SECONDS_PER_FRAME = audio.HOP_LENGTH / audio.SAMPLE_RATE
DPI = 80
_COLUMNS = ("input", "masked input", "reconstruction")


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


def valid_frames(frames_B: np.ndarray | None, batch: int, width: int) -> np.ndarray:
    """Frames to show per clip: the clip's valid frames within [1, width]; all when unknown."""
    if frames_B is None:
        return np.full(batch, width, np.int64)
    return np.clip(np.asarray(frames_B, np.int64).reshape(batch), 1, width)


def reconstruction_figure(
    lms_B1FT: np.ndarray,
    pred_BNP: np.ndarray,
    mask_BN: np.ndarray,
    config: ModelConfig,
    frames_B: np.ndarray | None = None,
    title: str = "",
) -> Figure:
    """One row per clip, columns input / masked input / reconstruction, each cropped to the
    clip's `frames_B` valid frames (all frames when None); one colour scale for all panels."""
    panels = reconstruction_panels(lms_B1FT, pred_BNP, mask_BN, config)
    B, F, T = panels[0].shape
    valid_B = valid_frames(frames_B, B, T)
    shown = np.concatenate([panels[0][b, :, : valid_B[b]].ravel() for b in range(B)])
    vmin, vmax = np.nanpercentile(shown, 1), np.nanpercentile(shown, 99)
    panel_w, panel_h = max(2.4, int(valid_B.max()) / 50), max(1.4, F / 50)
    fig, axes = plt.subplots(
        B,
        3,
        figsize=(3 * panel_w + 1.2, 0.6 + B * (panel_h + 0.4)),
        squeeze=False,
        layout="constrained",
    )
    image = None
    for b in range(B):
        v = int(valid_B[b])
        for j, (panel, name) in enumerate(zip(panels, _COLUMNS, strict=True)):
            ax = axes[b, j]
            image = ax.imshow(
                panel[b, :, :v],
                origin="lower",
                aspect="auto",
                vmin=vmin,
                vmax=vmax,
                cmap="magma",
                interpolation="nearest",
                extent=(0.0, v * SECONDS_PER_FRAME, -0.5, F - 0.5),
            )
            ax.tick_params(labelsize=7)
            if b == 0:
                ax.set_title(name, fontsize=9)
            if b == B - 1:
                ax.set_xlabel("time (s)", fontsize=8)
            if j == 0:
                ax.set_ylabel("mel bin", fontsize=8)
            else:
                ax.set_yticklabels([])
    bar = fig.colorbar(image, ax=axes, shrink=min(1.0, 3.0 / B), aspect=25, pad=0.01)
    bar.set_label("normalised log-mel", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes; closes the figure."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return buf.getvalue()


def write_file(path: str, data: bytes) -> str:
    """Atomic write (temporary file + rename): a reader never sees half a PNG."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def save_reconstruction_figure(
    path: str,
    lms_B1FT: np.ndarray,
    pred_BNP: np.ndarray,
    mask_BN: np.ndarray,
    config: ModelConfig,
    frames_B: np.ndarray | None = None,
    title: str = "",
) -> bytes:
    """Writes `reconstruction_figure(...)` to `path` as PNG; returns the PNG bytes."""
    fig = reconstruction_figure(lms_B1FT, pred_BNP, mask_BN, config, frames_B, title)
    data = png_bytes(fig)
    write_file(path, data)
    return data
