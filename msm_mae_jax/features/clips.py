"""Waveform inputs of the runtime: one clip, a batch or a list of clips -> 16 kHz clips.

Accepted: a waveform [S], a batch [B, S] (numpy, jax, torch or TF; converted without
importing torch or TF), or a Python list/tuple of waveforms [S_i] of any lengths. Every clip
must hold real float samples, all finite and within `audio.MAX_ABS_SAMPLE` of zero (full scale
is [-1, 1]; far beyond it a waveform is mis-scaled, refused as `embed` refuses such a file);
other sample rates are resampled with soxr (by the runtime, chunk by chunk).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from msm_mae_jax.data import audio
from msm_mae_jax.model.config import ModelConfig

MIN_SAMPLE_RATE = 1000  # Hz; below this a waveform carries nothing a 50-8000 Hz front end uses
MAX_SAMPLE_RATE = 1_000_000

SINGLE, BATCH, LIST = "single", "batch", "list"  # input layouts; outputs follow them
_CHECK_BLOCK = 1 << 20  # samples checked for NaN/Inf at a time


def to_numpy(x: Any) -> np.ndarray:
    """numpy / jax / torch / TF tensors -> numpy, without importing torch or TF."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor
        x = x.detach().cpu().numpy()
    elif hasattr(x, "numpy") and not isinstance(x, np.ndarray):  # tf.Tensor (eager)
        x = x.numpy()
    return np.asarray(x)


def is_clip_list(x: Any) -> bool:
    """A Python list/tuple of clips (of possibly different lengths), not an array."""
    return isinstance(x, (list, tuple))


def input_lengths(audio_in: Any) -> list[int]:
    """Samples of each clip as given (before resampling)."""
    if is_clip_list(audio_in):
        return [int(np.shape(to_numpy(c))[-1]) for c in audio_in]
    shape = np.shape(to_numpy(audio_in))
    return [int(shape[-1])] * (1 if len(shape) == 1 else int(shape[0]))


def patch_timestamps_ms(
    num_samples: int, sample_rate: float, num_steps: int, model_config: ModelConfig
) -> np.ndarray:
    """Timestamps [T] in milliseconds of the T feature time steps of a clip of `num_samples`.

    Step t covers log-mel frames [t*pw, (t+1)*pw), i.e. nominally centred at
    (t + 0.5) * pw * hop / sr. The last column is usually only partly audio (the rest is
    padding), and its nominal centre can pass the clip's end (1.98 s: 2000 ms); HEAR requires
    evenly spaced timestamps that do not pass the end. So the spacing stays exactly the patch
    period (160 ms) and the offset of the first step is the nominal half period, lowered just
    enough to keep the last timestamp inside the clip (an offset in [0, 80] ms).
    """
    period_ms = model_config.patch_size[1] * audio.HOP_LENGTH / audio.SAMPLE_RATE * 1000.0
    duration_ms = num_samples / sample_rate * 1000.0
    offset = min(period_ms / 2, max(0.0, duration_ms - (num_steps - 1) * period_ms))
    return (offset + period_ms * np.arange(num_steps)).astype(np.float32)


def prepare_clips(audio_in: Any, sample_rate: float) -> tuple[list[np.ndarray], str, int]:
    """-> (checked float clips [S_i] at `sample_rate`, layout: SINGLE, BATCH or LIST, the rate
    as an int); ValueError naming the bad clip otherwise. Nothing is copied or resampled here:
    the runtime reads the clips chunk by chunk (`chunking.blocks_16k`)."""
    sr = check_sample_rate(sample_rate)
    if is_clip_list(audio_in):
        if not audio_in:
            raise ValueError("audio is an empty list: no clip to encode")
        clips = [_checked(to_numpy(c), f"audio[{i}]", 1) for i, c in enumerate(audio_in)]
        layout = LIST
    else:
        wav = _checked(to_numpy(audio_in), "audio", 2)
        layout = SINGLE if wav.ndim == 1 else BATCH
        clips = [wav] if layout == SINGLE else list(wav)
    if sr != audio.SAMPLE_RATE:
        for c in clips:
            if int(np.floor(c.shape[0] * audio.SAMPLE_RATE / sr + 0.5)) == 0:
                raise ValueError(
                    f"audio of {c.shape[0]} samples at {sr} Hz is empty after resampling to "
                    f"{audio.SAMPLE_RATE} Hz"
                )
    return clips, layout, sr


def _checked(wav: np.ndarray, name: str, max_ndim: int) -> np.ndarray:
    """A float waveform (max_ndim 1) or batch (max_ndim 2) after the checks every clip needs."""
    if wav.ndim < 1 or wav.ndim > max_ndim:
        want = "[batch, samples] or one waveform [samples]" if max_ndim == 2 else "[samples]"
        raise ValueError(f"{name} has shape {wav.shape} ({wav.ndim}-D); expected waveforms {want}")
    if wav.dtype.kind != "f":
        raise ValueError(
            f"{name} has dtype {wav.dtype}; expected real float waveforms in [-1, 1] "
            "(integer PCM: divide by its full scale, e.g. 32768 for int16)"
        )
    if wav.size == 0:
        raise ValueError(f"{name} has shape {wav.shape}: no waveform or no samples")
    for row in wav[None] if wav.ndim == 1 else wav:  # a block at a time: no copy of the clip
        for a in range(0, row.shape[0], _CHECK_BLOCK):
            peak = float(np.max(np.abs(row[a : a + _CHECK_BLOCK])))  # NaN if any is NaN
            if not np.isfinite(peak):
                raise ValueError(f"{name} contains NaN or Inf samples")
            if peak > audio.MAX_ABS_SAMPLE:
                raise ValueError(
                    f"{name} has samples of magnitude {peak:.3g}, far outside [-1, 1] (limit "
                    f"{audio.MAX_ABS_SAMPLE:g}, as for audio files): scale it to [-1, 1] "
                    "(int16 values: divide by 32768)"
                )
    return wav


def check_sample_rate(sample_rate: Any) -> int:
    """An integer rate in Hz within [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]; ValueError otherwise."""
    try:
        sr = float(sample_rate)
    except (TypeError, ValueError):
        raise ValueError(f"sample_rate={sample_rate!r} is not a number") from None
    if not math.isfinite(sr) or sr != int(sr) or not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        raise ValueError(
            f"sample_rate={sample_rate!r}: expected an integer rate in Hz between "
            f"{MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE} (audio is resampled to "
            f"{audio.SAMPLE_RATE} Hz)"
        )
    return int(sr)
