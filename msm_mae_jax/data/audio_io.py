"""Audio file reading: any soundfile format, rate and channel count -> mono float32 at 16 kHz.

Every failure (missing, unreadable, empty, corrupt, non-audio, too short, NaN/Inf samples,
float samples far outside [-1, 1]) is an `AudioError` whose message starts with the file's
path, so callers can skip and count bad files. Long files are never loaded whole when
`max_seconds` is given: only a window is read (seek + read), which keeps one-hour recordings
cheap in every tf.data worker.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
import soundfile as sf
import soxr

from msm_mae_jax.data.audio import HOP_LENGTH, SAMPLE_RATE

# Extension (lower case, with dot) -> the libsndfile major format that reads it.
_EXTENSION_FORMATS = {
    ".wav": "WAV",
    ".wave": "WAV",
    ".flac": "FLAC",
    ".ogg": "OGG",
    ".oga": "OGG",
    ".opus": "OGG",
    ".mp3": "MP3",
    ".aiff": "AIFF",
    ".aif": "AIFF",
    ".aifc": "AIFF",
    ".au": "AU",
    ".snd": "AU",
    ".caf": "CAF",
    ".w64": "W64",
    ".rf64": "RF64",
}
# The extensions this libsndfile build can decode (files are still validated when opened).
AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    ext for ext, fmt in _EXTENSION_FORMATS.items() if fmt in sf.available_formats()
)

# Shorter clips cannot fill a single hop of the STFT; they are treated as broken files.
MIN_SECONDS = HOP_LENGTH / SAMPLE_RATE
# Float-format files store samples as they are; full scale is [-1, 1] (integer PCM is read
# scaled into it and cannot exceed it). Beyond this peak a file is mis-scaled (integer values
# written as float, say): using it would silently distort the normalisation statistics and
# everything learnt from them, so it is refused like a corrupt file. Real recordings that
# clip a little after processing stay far below.
MAX_ABS_SAMPLE = 16.0

# What opening/reading a file can raise: libsndfile errors (RuntimeError subclasses), OS errors
# (missing, permission, I/O), and ValueError/TypeError/EOFError from odd headers.
_READ_ERRORS = (OSError, RuntimeError, ValueError, TypeError, EOFError)


class AudioError(ValueError):
    """A file that cannot be used as audio; the message names the file."""


class AudioInfo(NamedTuple):
    frames: int
    samplerate: int
    channels: int

    @property
    def seconds(self) -> float:
        return self.frames / self.samplerate if self.samplerate else 0.0


def is_audio_file(path: str | os.PathLike) -> bool:
    """True when the file's extension is one of AUDIO_EXTENSIONS (case-insensitive)."""
    return os.path.splitext(os.fspath(path))[1].lower() in AUDIO_EXTENSIONS


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Frames, sample rate and channel count from the header (no sample is decoded)."""
    try:
        info = sf.info(os.fspath(path))
    except _READ_ERRORS as e:
        name = os.fspath(path)
        raise AudioError(
            f"{name}: cannot read audio header ({_describe_open_error(name, e)})"
        ) from e
    _check_header(path, info.frames, info.samplerate, info.channels)
    return AudioInfo(int(info.frames), int(info.samplerate), int(info.channels))


def resample(wav: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited resampling with soxr (HQ). wav [S] or [S, C] -> float32, same layout."""
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
    wav = np.asarray(wav, dtype=np.float32)
    if sr_in == sr_out:
        return wav
    return np.asarray(soxr.resample(wav, sr_in, sr_out, quality="HQ"), dtype=np.float32)


def load_audio(
    path: str | os.PathLike,
    sr: int = SAMPLE_RATE,
    max_seconds: float | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Read an audio file as mono float32 [S] at `sr` Hz.

    Channels are averaged; other rates are resampled with soxr. With `max_seconds`, a file
    longer than that is cropped while reading: a window of `max_seconds` starting at a
    uniformly random frame (rng given) or at the start (rng None); only that window is decoded.
    Raises AudioError (naming the file) for anything unusable, including NaN/Inf samples and
    clips shorter than MIN_SECONDS. A file whose data ends before its header says (a cut
    download) yields the samples that are there.
    """
    name = os.fspath(path)
    if max_seconds is not None and not max_seconds >= MIN_SECONDS:
        raise ValueError(f"max_seconds must be >= {MIN_SECONDS} or None, got {max_seconds}")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator or None, got {type(rng).__name__}")
    try:
        with sf.SoundFile(name) as f:
            frames, sr_in, channels = int(f.frames), int(f.samplerate), int(f.channels)
            _check_header(name, frames, sr_in, channels)
            start, count = 0, frames
            if max_seconds is not None:
                count = min(frames, max(1, int(round(max_seconds * sr_in))))
                if rng is not None and frames > count:
                    start = int(rng.integers(0, frames - count + 1))
                if start:
                    f.seek(start)
            data_SC = f.read(count, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except _READ_ERRORS as e:
        raise AudioError(f"{name}: cannot read audio ({_describe_open_error(name, e)})") from e

    if data_SC.shape[0] < max(2, int(np.ceil(MIN_SECONDS * sr_in))):
        # A header that promises frames the file does not hold ends up here too.
        raise AudioError(
            f"{name}: too short to use ({data_SC.shape[0]} samples at {sr_in} Hz read, "
            f"{frames} in the header; need >= {MIN_SECONDS * 1000:.0f} ms)"
        )
    wav_S = data_SC.mean(axis=1, dtype=np.float32) if channels > 1 else data_SC[:, 0]
    if not np.isfinite(wav_S).all():
        bad = int(np.count_nonzero(~np.isfinite(data_SC)))
        raise AudioError(f"{name}: {bad} NaN/Inf sample value(s)")
    peak = float(np.max(np.abs(data_SC)))
    if peak > MAX_ABS_SAMPLE:
        raise AudioError(
            f"{name}: sample values reach {peak:.3g}, far outside [-1, 1] (limit "
            f"{MAX_ABS_SAMPLE:g}): a float file holding unscaled integer values? Rescale it"
        )
    wav_S = resample(np.ascontiguousarray(wav_S), sr_in, sr)
    return wav_S


def _check_header(path: str | os.PathLike, frames: int, sr: int, channels: int) -> None:
    name = os.fspath(path)
    if sr <= 0 or channels <= 0:
        raise AudioError(f"{name}: invalid header ({sr} Hz, {channels} channels)")
    if frames <= 0:
        raise AudioError(f"{name}: no audio samples (empty or truncated file)")


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip()


def _describe_open_error(name: str, e: BaseException) -> str:
    """libsndfile reports missing/unreadable files as 'System error'; ask the OS for the cause."""
    if isinstance(e, RuntimeError):
        try:
            with open(name, "rb"):
                pass
        except OSError as os_error:
            return _describe(os_error)
    return _describe(e)
