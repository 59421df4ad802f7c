"""Waveform inputs of the runtime: one clip, a batch or a list of clips -> 16 kHz clips.

Accepted: a waveform [S], a batch [B, S] (numpy, jax, torch or TF; converted without
importing torch or TF), or a Python list/tuple of waveforms [S_i] of any lengths. Every clip
must hold real float samples, all finite; other sample rates are resampled with soxr.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from msm_mae_jax.data import audio

MIN_SAMPLE_RATE = 1000  # Hz; below this a waveform carries nothing a 50-8000 Hz front end uses
MAX_SAMPLE_RATE = 1_000_000

SINGLE, BATCH, LIST = "single", "batch", "list"  # input layouts; outputs follow them


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


def prepare_clips(audio_in: Any, sample_rate: float) -> tuple[list[np.ndarray], str]:
    """-> (float32 clips [S_i] at 16 kHz, layout: SINGLE, BATCH or LIST); ValueError naming
    the bad clip otherwise."""
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
        from msm_mae_jax.data.audio_io import resample

        num_in = [len(c) for c in clips]
        clips = [resample(c, sr, audio.SAMPLE_RATE) for c in clips]
        for n, c in zip(num_in, clips, strict=True):
            if len(c) == 0:
                raise ValueError(
                    f"audio of {n} samples at {sr} Hz is empty after resampling to "
                    f"{audio.SAMPLE_RATE} Hz"
                )
    return clips, layout


def _checked(wav: np.ndarray, name: str, max_ndim: int) -> np.ndarray:
    """A float32 waveform (max_ndim 1) or batch (max_ndim 2) after the checks every clip needs."""
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
    if not np.all(np.isfinite(wav)):
        raise ValueError(f"{name} contains NaN or Inf samples")
    return np.asarray(wav, np.float32)


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
