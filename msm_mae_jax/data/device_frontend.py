"""The model input computed on the accelerator from waveform crops (`data.logmel_on_device`).

With `config.data.logmel_on_device` the training iterator yields {"wav": float32 [B, L] crop
windows, "frames": int32 [B] valid frames} (`crops.py`, L = crops.window_samples(T)); inside
the jitted train step `normalized_log_mel` turns them into the normalised log-mel batch the
host front end (`pipeline.host_frontend`) would have produced: the same STFT, mel basis and
log (`audio.log_mel_jax`, equal to the TF op to float32 rounding), 0 after each crop's valid
frames (before normalisation), then (x - mean) / std. It is row-wise, so a batch sharded over
devices stays sharded. Its cost (~7 MFLOP a crop for T = 208) is noise next to the model's.
Shape letters: B batch, L window samples, F mel bins, T frames.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from msm_mae_jax.data import audio
from msm_mae_jax.data.normalization import NormStats

if TYPE_CHECKING:
    import jax


def masked_log_mel(wav_BL: jax.Array, frames_B: jax.Array) -> jax.Array:
    """Crop windows [B, L] + valid frames [B] -> log-mels float32 [B, 80, T], 0 after each
    crop's valid frames, T = 1 + (L - 400) // 160. Jittable."""
    import jax.numpy as jnp

    lms_BFT = audio.log_mel_jax(wav_BL, center=False)
    t = lms_BFT.shape[-1]
    valid_BFT = jnp.arange(t)[None, None, :] < jnp.asarray(frames_B)[:, None, None]
    return jnp.where(valid_BFT, lms_BFT, 0.0)


def normalized_log_mel(wav_BL: jax.Array, frames_B: jax.Array, norm_stats: NormStats) -> jax.Array:
    """Crop windows [B, L] + valid frames [B] -> normalised log-mels float32 [B, 1, 80, T].
    Jittable (`norm_stats` is static: plain floats)."""
    return norm_stats.normalize(masked_log_mel(wav_BL, frames_B))[:, None]
