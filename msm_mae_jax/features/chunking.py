"""Long clips in bounded pieces: waveform windows of whole encoder units, cut from a clip that
arrives in blocks, each equal to what the log-mel of the whole clip sees.

The log-mel (`data.audio`: center=True, n_fft 400, hop 160) gives a clip of S samples
F = 1 + S // 160 frames; frame t covers the samples [160 t - 200, 160 t + 200) of the clip
reflect-padded by 200 at both ends. A chunk of N frames starting at frame t0 therefore needs
exactly the samples [160 t0 - 200, 160 (t0 + N - 1) + 200), `window_samples(N)` of them, and
the log-mel of that window framed with center=False gives its N frames unchanged. Consecutive
windows overlap by 240 samples; only the first and the last see the clip's reflect padding.
Samples more than 200 past the clip's end reach only frames past its end (whose features are
dropped, their log-mel zeroed after normalisation), so they are zeros here.

`Windower` cuts a stream of 16 kHz blocks into such windows of `chunk_frames` frames (the last
one shortened to the whole units it needs), holding at most a window and a block: a clip of any
length, in memory or read from a file block by block, goes through the encoder in pieces of a
fixed size.

Shape letters: S samples, W window samples, N chunk frames.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from msm_mae_jax.data import audio

CHUNK_UNITS = 16  # encoder units per chunk: 16 x 208 frames = 33.3 s for 80x208 models
_MARGIN = 256  # samples kept before the next window (a guard: see `finish`)
_RESAMPLE_BLOCK = 1 << 20  # input samples per streaming-resampler call


def window_samples(frames: int) -> int:
    """Samples a window of `frames` log-mel frames needs: 160 (frames - 1) + 400."""
    return audio.HOP_LENGTH * (int(frames) - 1) + audio.N_FFT


class Windower:
    """Blocks of a clip's 16 kHz samples in, (window [W], real frames) out, in clip order.

    `push(block)` returns the windows complete so far; `finish()` the rest, once the clip's end
    (and so its length `samples`) is known. Every window but the last holds `chunk_frames`
    frames; the last one the whole units (of `unit_frames`) its real frames need.
    """

    def __init__(self, chunk_frames: int, unit_frames: int):
        if chunk_frames % unit_frames:
            raise ValueError(f"chunk_frames={chunk_frames} is not whole units of {unit_frames}")
        self.chunk_frames, self.unit_frames = int(chunk_frames), int(unit_frames)
        self.samples = 0  # samples pushed so far
        self._buf = np.zeros(0, np.float32)  # samples [self._start, self.samples)
        self._start = 0
        self._k = 0  # the next chunk

    def _first(self, k: int) -> int:
        """First sample of chunk k's window (-200 for the first: the reflect padding)."""
        return audio.HOP_LENGTH * k * self.chunk_frames - audio.N_FFT // 2

    def push(self, block: np.ndarray) -> list[tuple[np.ndarray, int]]:
        block = np.asarray(block).reshape(-1)  # any float dtype: windows are made float32
        if self._buf.size == 0:
            self._buf, self._start = block, self.samples  # no copy: a view of the caller's
        else:
            self._buf = np.concatenate([self._buf, block])
        self.samples += block.shape[0]
        out = []
        w = window_samples(self.chunk_frames)
        while self._first(self._k) + w <= self.samples:
            a = self._first(self._k)
            if a < 0:  # the clip's start: reflected (it is longer than the padding here)
                window = self._buf[np.abs(np.arange(a, a + w)) - self._start]
            else:
                window = self._buf[a - self._start : a - self._start + w]
            window = np.array(window, np.float32)  # a copy: the buffer moves on
            out.append((window, self.chunk_frames))
            self._k += 1
            keep = max(self._start, self._first(self._k) - _MARGIN)
            self._buf, self._start = self._buf[keep - self._start :], keep
        return out

    def finish(self) -> list[tuple[np.ndarray, int]]:
        """The remaining windows; reflect padding at the clip's end. ValueError: no sample."""
        s = self.samples
        if s == 0:
            raise ValueError("no samples: nothing to encode")
        frames, out = audio.num_frames(s), []
        while self._k * self.chunk_frames < frames:
            real = min(self.chunk_frames, frames - self._k * self.chunk_frames)
            units = -(-real // self.unit_frames)
            a = self._first(self._k)
            i = np.arange(a, a + window_samples(units * self.unit_frames))
            used = i < s + audio.N_FFT // 2  # what the real frames see
            window = np.zeros(i.shape[0], np.float32)
            j = audio.reflect_index(i[used], s) - self._start
            # The end padding reflects back to sample S - 201, before this window only when
            # its chunk holds one frame (S = its first sample + 200); the chunk before it was
            # then not complete during `push` either, so the buffer still starts before it.
            if j.size and j.min() < 0:
                raise RuntimeError(f"chunk {self._k}: sample {j.min() + self._start} was dropped")
            window[used] = self._buf[j]
            out.append((window, real))
            self._k += 1
        self._buf = np.zeros(0, np.float32)
        return out


def windows(
    blocks: Iterable[np.ndarray], chunk_frames: int, unit_frames: int
) -> Iterator[tuple[np.ndarray, int]]:
    """(window, real frames) of a clip given as 16 kHz blocks (see `Windower`)."""
    w = Windower(chunk_frames, unit_frames)
    for block in blocks:
        yield from w.push(block)
    yield from w.finish()


def resampled_length(samples: int, sample_rate: int) -> int:
    """Samples at 16 kHz of `samples` at `sample_rate` (soxr's output length)."""
    if sample_rate == audio.SAMPLE_RATE:
        return int(samples)
    return int(np.floor(samples * audio.SAMPLE_RATE / sample_rate + 0.5))


def blocks_16k(clip_S: np.ndarray, sample_rate: int) -> Iterator[np.ndarray]:
    """A clip in memory as 16 kHz blocks: itself at 16 kHz, else resampled piece by piece
    (soxr's streaming resampler, equal to resampling the whole clip at once)."""
    if sample_rate == audio.SAMPLE_RATE:
        yield clip_S
        return
    import soxr

    stream = soxr.ResampleStream(sample_rate, audio.SAMPLE_RATE, 1, dtype="float32", quality="HQ")
    n = clip_S.shape[0]
    for a in range(0, n, _RESAMPLE_BLOCK):
        piece = np.asarray(clip_S[a : a + _RESAMPLE_BLOCK], np.float32)
        yield stream.resample_chunk(piece, last=a + _RESAMPLE_BLOCK >= n)
