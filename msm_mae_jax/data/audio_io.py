"""Audio file reading: any soundfile format, rate and channel count -> mono float32 at 16 kHz.

Every failure (missing, unreadable, empty, corrupt, non-audio, too short, NaN/Inf samples,
float samples far outside [-1, 1], a FIFO/socket/device, which is never opened) is an
`AudioError` whose message starts with the file's path, so callers can skip and count bad
files; a file cut short is read as far as it goes, with a warning (`audio_cut`). Long files
are never loaded whole when `max_seconds` is given: only a window is read (seek + read), which
keeps one-hour recordings cheap in every tf.data worker; `ClipReader` reads any span of a
file's 16 kHz signal, decoding only that span; `iter_blocks` reads a whole file of any length
block by block.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import soundfile as sf
import soxr

from msm_mae_jax.core import fs, paths
from msm_mae_jax.data import audio_cut
from msm_mae_jax.data.audio import HOP_LENGTH, MAX_ABS_SAMPLE, SAMPLE_RATE

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

# What opening/reading a file can raise: libsndfile errors (RuntimeError subclasses), OS errors
# (missing, permission, I/O), and ValueError/TypeError/EOFError from odd headers.
_READ_ERRORS = (OSError, RuntimeError, ValueError, TypeError, EOFError)
# libsndfile subtypes of integer samples, which decode into [-1, 1].
_INTEGER_SUBTYPES = ("PCM_", "ULAW", "ALAW", "DPCM_", "DWVW_", "ALAC_")


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
    _check_regular(os.fspath(path))
    try:
        if fs.is_remote(path):
            with fs.open(os.fspath(path), "rb") as raw:
                info = sf.info(raw)
        else:
            info = sf.info(os.fspath(path))
    except _READ_ERRORS as e:
        name = os.fspath(path)
        raise AudioError(
            f"{name}: cannot read audio header ({_describe_open_error(name, e)})"
        ) from e
    _check_header(path, info.frames, info.samplerate, info.channels)
    return AudioInfo(int(info.frames), int(info.samplerate), int(info.channels))


@contextlib.contextmanager
def _open_sound(name: str) -> Iterator[tuple[sf.SoundFile, Any]]:
    """(SoundFile, the remote file object it reads or None) of a path or URL."""
    _check_regular(name)
    if not fs.is_remote(name):
        with sf.SoundFile(name) as f:
            yield f, None
        return
    with fs.open(name, "rb") as raw, sf.SoundFile(raw) as f:
        yield f, raw


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
    download) yields the samples that are there, with a warning naming it (`audio_cut`).
    """
    name = os.fspath(path)
    if max_seconds is not None and not max_seconds >= MIN_SECONDS:
        raise ValueError(f"max_seconds must be >= {MIN_SECONDS} or None, got {max_seconds}")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator or None, got {type(rng).__name__}")
    try:
        with _open_sound(name) as (f, _):
            frames, sr_in, channels = int(f.frames), int(f.samplerate), int(f.channels)
            _check_header(name, frames, sr_in, channels)
            start, count = 0, frames
            if max_seconds is not None:
                count = min(frames, max(1, int(round(max_seconds * sr_in))))
                if rng is not None and frames > count:
                    start = int(rng.integers(0, frames - count + 1))
                if start:
                    f.seek(start)
            data_SC = audio_cut.read(f, name, start, count, frames, sr_in, _READ_ERRORS)
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
    _check_peak(name, float(np.max(np.abs(data_SC))))
    wav_S = resample(np.ascontiguousarray(wav_S), sr_in, sr)
    return wav_S


def iter_blocks(path: str | os.PathLike, block_frames: int = 1 << 20) -> Iterator[np.ndarray]:
    """A file as mono float32 blocks at 16 kHz, decoded `block_frames` source frames at a time
    and resampled with soxr's streaming resampler: concatenated, exactly `load_audio(path)`,
    without the file ever in memory. The same checks as `load_audio`, each raised (an
    AudioError naming the file) when the block that fails it is read."""
    name = os.fspath(path)
    got = 0
    try:
        with _open_sound(name) as (f, _):
            frames, sr_in, channels = int(f.frames), int(f.samplerate), int(f.channels)
            _check_header(name, frames, sr_in, channels)
            declared = audio_cut.wav_declared_frames(name) or frames
            if declared > frames:
                audio_cut.warn_cut(name, frames, declared, sr_in)
            stream = None
            if sr_in != SAMPLE_RATE:
                stream = soxr.ResampleStream(sr_in, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
            while True:
                try:
                    data_SC = f.read(block_frames, dtype="float32", always_2d=True)
                    last = data_SC.shape[0] < block_frames
                except _READ_ERRORS as e:  # a cut FLAC: keep what decodes, then end
                    data_SC = audio_cut.read_what_decodes(f, block_frames, _READ_ERRORS, got)
                    if not got + data_SC.shape[0]:
                        raise e from None
                    last = True
                    audio_cut.warn_cut(name, got + data_SC.shape[0], declared, sr_in)
                if not np.isfinite(np.add.reduce(data_SC, axis=None)):
                    bad = int(np.count_nonzero(~np.isfinite(data_SC)))
                    raise AudioError(
                        f"{name}: {bad} NaN/Inf sample value(s) from {got / sr_in:.1f} s"
                    )
                if data_SC.size:
                    _check_peak(name, float(np.max(np.abs(data_SC))))
                wav_S = data_SC.mean(axis=1, dtype=np.float32) if channels > 1 else data_SC[:, 0]
                got += data_SC.shape[0]
                if stream is not None:
                    wav_S = stream.resample_chunk(np.ascontiguousarray(wav_S), last=last)
                if wav_S.size:
                    yield wav_S
                if last:
                    break
    except AudioError:
        raise
    except _READ_ERRORS as e:
        raise AudioError(f"{name}: cannot read audio ({_describe_open_error(name, e)})") from e
    if got < max(2, int(np.ceil(MIN_SECONDS * sr_in))):
        raise AudioError(
            f"{name}: too short to use ({got} samples at {sr_in} Hz read, {frames} in the "
            f"header; need >= {MIN_SECONDS * 1000:.0f} ms)"
        )


class TruncatedAudio(AudioError):
    """The file holds fewer samples than its header says (a cut download)."""


class ClipReader:
    """An open audio file read as 16 kHz mono spans: `read_into(a, out)` fills `out` with
    samples [a, a + len(out)) of what `load_audio(path)` returns, decoding only those (plus a
    resampler margin at other rates).

    At 16 kHz a span is exact (a mono file is decoded straight into `out`). At other rates the
    span is resampled from the source samples around it (a margin of >= 256 source samples,
    aligned so that 16 kHz sample positions fall on source samples): equal to the whole-file
    resampling up to the resampler's edge effects.
    """

    _MARGIN = 256

    def __init__(self, path: str | os.PathLike):
        self.name = os.fspath(path)
        self._raw = None  # the remote file object soundfile reads (URLs)
        _check_regular(self.name)
        try:
            if fs.is_remote(self.name):
                self._raw = fs.open(self.name, "rb")
                self._f = sf.SoundFile(self._raw)
            else:
                self._f = sf.SoundFile(self.name)
        except _READ_ERRORS as e:
            self.close()
            raise AudioError(
                f"{self.name}: cannot read audio ({_describe_open_error(self.name, e)})"
            ) from e
        f = self._f
        self.frames, self.samplerate, self.channels = int(f.frames), int(f.samplerate), f.channels
        try:
            _check_header(self.name, self.frames, self.samplerate, self.channels)
        except AudioError:
            self.close()
            raise
        # soxr's output length for the whole file (what load_audio returns).
        self.samples = int(np.floor(self.frames * SAMPLE_RATE / self.samplerate + 0.5))
        # Source samples per whole number of 16 kHz samples (441 at 44.1 kHz, 3 at 48 kHz).
        self._align = self.samplerate // int(np.gcd(self.samplerate, SAMPLE_RATE))
        self._pos = 0  # the decoder's position (source frames)
        # Integer PCM (WAV, FLAC, ...) is decoded into [-1, 1]: only other formats can hold
        # mis-scaled samples, so only they pay for the peak check.
        self._check_peak = not str(f.subtype).startswith(_INTEGER_SUBTYPES)

    def __enter__(self) -> ClipReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        f, raw = getattr(self, "_f", None), self._raw
        self._raw = None
        try:
            if f is not None:
                f.close()
        finally:
            if raw is not None:
                raw.close()

    def _decode(self, start: int, out_SC: np.ndarray) -> None:
        """Source frames [start, start + len(out)) into float32 `out` ([S] mono, [S, C])."""
        if start != self._pos:
            try:
                self._f.seek(start)
            except _READ_ERRORS as e:  # past the data of a cut file, or a broken one
                raise TruncatedAudio(f"{self.name}: cannot seek to {start} ({_describe(e)})") from e
        try:
            got = _read_frames_into(self._f, out_SC)
        except _READ_ERRORS as e:
            raise AudioError(f"{self.name}: cannot read audio ({_describe(e)})") from e
        self._pos = start + got
        if got < out_SC.shape[0]:
            raise TruncatedAudio(f"{self.name}: {got} of {out_SC.shape[0]} samples from {start}")
        # One sum finds NaN/Inf (audio is far from float32 overflow); count them if so.
        if not np.isfinite(np.add.reduce(out_SC, axis=None)):
            bad = int(np.count_nonzero(~np.isfinite(out_SC)))
            if bad:
                raise AudioError(f"{self.name}: {bad} NaN/Inf sample value(s)")
        if self._check_peak and out_SC.size:
            _check_peak(self.name, max(float(out_SC.max()), -float(out_SC.min())))

    def _source(self, start: int, count: int) -> np.ndarray:
        """Mono float32 [count] of source frames from `start` (any rate)."""
        data_SC = np.empty((count, self.channels), np.float32)
        self._decode(start, data_SC)
        return data_SC.mean(axis=1, dtype=np.float32) if self.channels > 1 else data_SC[:, 0]

    def read_into(self, a: int, out: np.ndarray) -> None:
        """Samples [a, a + len(out)) of the clip at 16 kHz into float32 `out` (1-D, C order),
        0 <= a < a + len(out) <= samples. Short files raise `TruncatedAudio`."""
        b, sr = a + out.shape[0], self.samplerate
        if sr == SAMPLE_RATE:
            if self.channels == 1:
                self._decode(a, out)
            else:
                out[:] = self._source(a, b - a)
            return
        src_a = max(0, (a * sr // SAMPLE_RATE - self._MARGIN) // self._align * self._align)
        src_b = min(self.frames, -(-b * sr // SAMPLE_RATE) + self._MARGIN)
        wav = resample(self._source(src_a, src_b - src_a), sr, SAMPLE_RATE)
        first = src_a * SAMPLE_RATE // sr  # exact: src_a is a multiple of the alignment
        got = wav[a - first : b - first]
        out[: got.shape[0]] = got
        out[got.shape[0] :] = 0.0  # the resampler's rounding at the file's end

    def read(self, a: int, b: int) -> np.ndarray:
        """float32 [b - a]: samples [a, b) of the clip at 16 kHz."""
        out = np.empty(b - a, np.float32)
        self.read_into(a, out)
        return out


def _read_frames_into(f: sf.SoundFile, out: np.ndarray) -> int:
    """Decodes len(out) frames at the current position into C-ordered float32 `out`; returns
    the frames decoded. libsndfile is called directly where soundfile exposes it: soundfile's
    own read seeks to the position it reached afterwards, which costs FLAC a frame decode."""
    snd, ffi = getattr(sf, "_snd", None), getattr(sf, "_ffi", None)
    if snd is None or ffi is None or not out.flags.c_contiguous:
        return int(f.read(out=out).shape[0])
    got = int(snd.sf_readf_float(f._file, ffi.cast("float *", out.ctypes.data), out.shape[0]))
    err = int(snd.sf_error(f._file))
    if err:
        raise RuntimeError(ffi.string(snd.sf_error_number(err)).decode("utf-8", "replace"))
    return got


def _check_regular(name: str) -> None:
    """A FIFO, a socket or a device is never opened (a FIFO would block until a writer
    comes): an AudioError, so that it is skipped and counted like an unreadable file."""
    why = paths.not_regular(name)
    if why:
        raise AudioError(f"{name}: {why}")


def _check_peak(name: str, peak: float) -> None:
    if peak > MAX_ABS_SAMPLE:
        raise AudioError(
            f"{name}: sample values reach {peak:.3g}, far outside [-1, 1] (limit "
            f"{MAX_ABS_SAMPLE:g}): a float file holding unscaled integer values? Rescale it"
        )


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
            with fs.open(name, "rb"):
                pass
        except OSError as os_error:
            return _describe(os_error)
    return _describe(e)
