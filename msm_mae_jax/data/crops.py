"""Random training crops: which frames of a clip an element holds, and the waveform window
that yields exactly those frames.

A clip of S samples has N = 1 + S // 160 log-mel frames (`audio.log_mel`, center=True: frame
t covers samples [160 t - 200, 160 t + 200) of the clip reflect-padded by 200). A crop of T
frames starts at frame t0, uniform in [0, max(N - T, 0)], and holds n = min(T, N - t0) valid
frames. Its window is padded_clip[160 t0 : 160 (t0 + n - 1) + 400] zero-filled to
`window_samples(T)` = 160 (T - 1) + 400 samples: the uncentred log-mel of the window
(`audio.log_mel(w, center=False)`) is frames t0 .. t0 + n - 1 of the clip's log-mel, then
T - n frames that the front end replaces by 0 (padding, before normalisation). Only the window
is read and transformed, never the rest of the clip.

The crop start comes from `uniform(seed, position, attempt)`, a counter-based hash (no
generator state): the same value on every host, in every run, for any batching.
Shape letters: B batch, S samples, L window samples.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from msm_mae_jax.data.audio import HOP_LENGTH, N_FFT, num_frames, reflect_index

_PAD = N_FFT // 2
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def window_samples(frames: int) -> int:
    """Samples of the window of a `frames`-frame crop: 160 (frames - 1) + 400."""
    return HOP_LENGTH * (int(frames) - 1) + N_FFT


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (uint64 arithmetic wraps)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def uniform(seed: int, pos: np.ndarray | int, attempt: int = 0) -> np.ndarray:
    """float64 in [0, 1) per element of `pos`, a hash of (seed, pos, attempt)."""
    with np.errstate(over="ignore"):
        z = np.asarray(pos, np.int64).astype(np.uint64) * _GOLDEN
        z = _mix(z ^ _mix(np.asarray(int(seed) & (2**64 - 1), np.uint64) + _GOLDEN))
        z = _mix(z + np.uint64(int(attempt) & (2**64 - 1)) * _GOLDEN)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def crop_start(u: np.ndarray | float, clip_frames: np.ndarray | int, frames: int) -> np.ndarray:
    """The crop's first frame t0 = floor(u * (max(N - T, 0) + 1)) for uniform draws u."""
    span = np.maximum(np.asarray(clip_frames, np.int64) - int(frames), 0) + 1
    return np.minimum((np.asarray(u) * span).astype(np.int64), span - 1)


def window(
    read_into: Callable[[int, np.ndarray], None],
    samples: int,
    t0: int,
    n: int,
    out: np.ndarray,
) -> None:
    """Writes the window of crop (t0, n valid frames) of a clip of `samples` samples into
    zeroed float32 `out` [window_samples(T)]; `read_into(a, dest)` fills dest with the clip's
    samples [a, a + len(dest)) (only those are read)."""
    lo = HOP_LENGTH * int(t0) - _PAD
    hi = lo + window_samples(n)
    if lo >= 0 and hi <= samples:  # inside the clip: one contiguous read, in place
        read_into(lo, out[: hi - lo])
        return
    idx = reflect_index(np.arange(lo, hi), samples)  # at an edge: the clip's reflect padding
    a = int(idx.min())
    span = np.empty(int(idx.max()) + 1 - a, np.float32)
    read_into(a, span)
    out[: hi - lo] = span[idx - a]


def window_of_wave(wav_S: np.ndarray, u: float, out: np.ndarray, max_frames: int = 0) -> int:
    """Writes the window of the crop drawn by `u` from an in-memory clip into zeroed `out`
    [window_samples(T)]; returns its valid frames (capped by `max_frames` > 0)."""
    frames = num_frames_of_window(out.shape[0])
    s = int(wav_S.shape[0])
    clip_frames = num_frames(s)
    t0 = int(crop_start(u, clip_frames, frames))
    n = min(frames, clip_frames - t0, max_frames or frames)

    def read_into(a: int, dest: np.ndarray) -> None:
        dest[:] = wav_S[a : a + dest.shape[0]]

    window(read_into, s, t0, n, out)
    return n


def num_frames_of_window(samples: int) -> int:
    """T of a window of `window_samples(T)` samples."""
    return 1 + (int(samples) - N_FFT) // HOP_LENGTH
