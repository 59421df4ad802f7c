"""Data sources for training and evaluation: one class per kind, opened from a spec.

    source = open_source(config.data.source, config.data)
    source.total_examples, source.num_examples_per_process(P), source.elements(...)

Kinds (spec syntax in `source_base`): `SyntheticSource` (the built-in generator),
`FileSource` (audio files), `TfdsSource` (TensorFlow Datasets, `tfds_source`) and `LmsSource`
(prepared log-mel shards, `lms_shards`). The first three are `AudioSource`s: evaluation tasks
read their clips by index (`name`, `iterate`, `durations`, `identity`).

Bad files of a `files:` source are skipped up front from their headers (`file_scan`); a file
that passes but fails to decode in training (or holds NaN/Inf in its crop) is replaced by the
next file of the global sorted list that decodes (deterministic and the same on every host),
and reported once in the source's `SkipReport`. Training reads only each crop's window of a
file (`crops.py`), the rows of a batch decoded by a thread pool (libsndfile and soxr release
the GIL).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from msm_mae_jax.core import fs
from msm_mae_jax.core.errors import DataError
from msm_mae_jax.data import audio, audio_io, crops, synthetic
from msm_mae_jax.data.file_scan import scan_files
from msm_mae_jax.data.lms_shards import LmsSource
from msm_mae_jax.data.source_base import (
    SOURCE_KINDS,
    AudioSource,
    BatchLoader,
    DataSource,
    IndexedSource,
    SkipReport,
    SourceSpec,
    parse_spec,
)
from msm_mae_jax.data.tfds_source import TfdsSource

__all__ = [
    "SOURCE_KINDS",
    "AudioSource",
    "DataSource",
    "FileSource",
    "IndexedSource",
    "LmsSource",
    "SkipReport",
    "SourceSpec",
    "SyntheticSource",
    "TfdsSource",
    "open_source",
    "parse_spec",
]

MAX_SUBSTITUTES = 16  # decode failures in a row before a training pipeline gives up


class SyntheticSource(IndexedSource, AudioSource):
    """Clips of the built-in generator: clip i is `synthetic.make_clip(i, seed, seconds)`."""

    def __init__(self, n: int, seed: int = 0, seconds: float = 3.0, spec: str = "synthetic"):
        self.n, self.seed, self.seconds = int(n), int(seed), float(seconds)
        self.spec = spec
        self.report = SkipReport(spec)

    @classmethod
    def from_spec(cls, spec: SourceSpec, data_config: Any) -> SyntheticSource:
        n = int(data_config.synthetic_clips)
        if n <= 0:
            raise DataError(f"data.synthetic_clips={n} must be positive")
        seed, seconds = int(data_config.synthetic_seed), float(data_config.synthetic_seconds)
        return cls(n, seed, seconds, spec.spec)

    @property
    def total_examples(self) -> int:
        return self.n

    def batch_loader(self, seed: int, frames: int) -> BatchLoader:
        data_seed, seconds = self.seed, self.seconds

        def load(pos_B: np.ndarray, idx_B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            out_BL = np.zeros((len(idx_B), crops.window_samples(frames)), np.float32)
            n_B = np.zeros(len(idx_B), np.int32)
            for b, (i, u) in enumerate(zip(idx_B, crops.uniform(seed, pos_B), strict=True)):
                wav = synthetic.make_clip_cached(int(i), data_seed, seconds)[0]
                n_B[b] = crops.window_of_wave(wav, u, out_BL[b])
            return out_BL, n_B

        return BatchLoader(load, "wav", np.float32, (crops.window_samples(frames),))

    def name(self, i: int) -> str:
        return f"synthetic clip {i} (seed {self.seed})"

    def iterate(
        self, indices: Sequence[int], max_seconds: float | None = None
    ) -> Iterator[np.ndarray]:
        for i in indices:
            wav, _ = synthetic.make_clip(int(i), self.seed, self.seconds)
            yield wav if max_seconds is None else wav[: int(round(max_seconds * audio.SAMPLE_RATE))]

    def durations(self) -> np.ndarray:
        return np.full(self.n, self.seconds)

    def labels(self) -> np.ndarray:
        """Class ids [n] of the clips (`synthetic.CLASS_NAMES`)."""
        return np.array([synthetic.label_of(i) for i in range(self.n)], np.int64)

    def identity(self) -> str:
        return f"synthetic:{self.n}:{self.seed}:{self.seconds}"


class FileSource(IndexedSource, AudioSource):
    """Audio files in a fixed order, read with `audio_io.load_audio` (any format and rate)."""

    def __init__(
        self,
        paths: Sequence[str],
        *,
        seconds: Sequence[float] | None = None,
        report: SkipReport | None = None,
        spec: str = "files",
        max_clip_seconds: float = 0.0,
    ):
        self.paths = list(paths)
        self.seconds = None if seconds is None else list(seconds)
        self.spec = spec
        self.report = report or SkipReport(spec)
        self.max_clip_seconds = float(max_clip_seconds)

    @classmethod
    def from_spec(cls, spec: SourceSpec, data_config: Any) -> FileSource:
        """The usable files of a `files:` spec (header-checked; skips in `report`)."""
        found = scan_files(spec)
        return cls(
            found.paths,
            seconds=found.seconds,
            report=found.report,
            spec=spec.spec,
            max_clip_seconds=float(data_config.max_clip_seconds),
        )

    @property
    def total_examples(self) -> int:
        return len(self.paths)

    def max_crop_frames(self, frames: int) -> int:
        """Valid frames of a crop at most: `frames`, capped by max_clip_seconds (> 0)."""
        cap = self.max_clip_seconds
        if cap <= 0:
            return int(frames)
        return min(int(frames), audio.num_frames(int(round(cap * audio.SAMPLE_RATE))))

    def batch_loader(self, seed: int, frames: int) -> BatchLoader:
        reader = _CropReader(self.paths, seed, frames, self.report, self.spec)
        reader.max_frames = self.max_crop_frames(frames)
        reader.max_seconds = self.max_clip_seconds or None
        return BatchLoader(reader, "wav", np.float32, (crops.window_samples(frames),))

    def name(self, i: int) -> str:
        return self.paths[i]

    def iterate(
        self, indices: Sequence[int], max_seconds: float | None = None
    ) -> Iterator[np.ndarray]:
        for i in indices:
            yield audio_io.load_audio(self.paths[i], audio.SAMPLE_RATE, max_seconds=max_seconds)

    def durations(self) -> np.ndarray:
        if self.seconds is None:
            self.seconds = [audio_io.audio_info(p).seconds for p in self.paths]
        return np.array(self.seconds)

    def identity(self) -> str:
        """Paths, sizes and modification times: a changed file invalidates cached embeddings."""
        h = hashlib.sha256()
        for p in self.paths:
            size, version = fs.stamp(p)
            h.update(f"{p}\0{size}\0{version}\n".encode())
        return "files:" + h.hexdigest()


_POOL: concurrent.futures.ThreadPoolExecutor | None = None


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    """Decoding threads shared by every files pipeline of the process (one per core)."""
    global _POOL
    if _POOL is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        _POOL = concurrent.futures.ThreadPoolExecutor(
            max(2, cores or os.cpu_count() or 2), thread_name_prefix="msm-mae-decode"
        )
    return _POOL


class _CropReader:
    """numpy side of a files pipeline: (global positions, indices) -> crop windows, frames.

    Each row reads only its crop's window (`crops.window` over an `audio_io.ClipReader`); a
    clip no longer than the crop is read whole (`load_audio`, exactly as evaluation reads it).
    A file that fails to decode is replaced by the next files of the global sorted list (the
    same on every host and every run, so resumption and the process-independent order stay
    exact) and reported once; attempt k draws its crop from (seed, position, k).
    """

    def __init__(self, paths, seed, frames, report, spec):  # noqa: ANN001
        self.paths, self.report, self.spec = paths, report, spec
        self.seed, self.frames = int(seed), int(frames)
        self.max_frames = self.frames  # valid frames of a crop at most
        self.max_seconds: float | None = None  # what is read of a clip read whole

    def __call__(self, pos_B: np.ndarray, idx_B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out_BL = np.zeros((len(idx_B), crops.window_samples(self.frames)), np.float32)
        try:
            rows = _pool().map(self.row, pos_B, idx_B, out_BL)
        except RuntimeError:  # the interpreter is shutting down: no new threads
            rows = map(self.row, pos_B, idx_B, out_BL)
        return out_BL, np.fromiter(rows, np.int32, len(idx_B))

    def row(self, pos: Any, i: Any, out: np.ndarray) -> int:
        """Writes position `pos`'s crop window (of clip i, or a substitute) into zeroed `out`;
        returns its valid frames."""
        n = len(self.paths)
        tried = min(n, MAX_SUBSTITUTES)
        for k in range(tried):
            path = self.paths[(int(i) + k) % n]
            u = float(crops.uniform(self.seed, int(pos), k))
            try:
                return self._crop(path, u, out)
            except audio_io.AudioError as e:
                out[:] = 0.0  # a partial read of the failed file
                self.report.add(path, str(e))
        what = (
            "the only file (1 file tried)"
            if tried == 1
            else f"{tried} files in a row" + (" (all of them)" if tried == n else "")
        )
        raise DataError(
            f"data source {self.spec!r}: {what} failed to decode; " + self.report.summary()
        )

    def _crop(self, path: str, u: float, out: np.ndarray) -> int:
        with audio_io.ClipReader(path) as f:
            clip_frames = audio.num_frames(f.samples)
            if clip_frames > self.frames:
                t0 = int(crops.crop_start(u, clip_frames, self.frames))
                n = min(self.max_frames, clip_frames - t0)
                try:
                    crops.window(f.read_into, f.samples, t0, n, out)
                    return n
                except audio_io.TruncatedAudio:
                    out[:] = 0.0  # the header promised more: read what is there, as evaluation does
        wav = audio_io.load_audio(path, max_seconds=self.max_seconds)
        return crops.window_of_wave(wav, u, out, self.max_frames)


_KINDS: dict[str, Any] = {
    "synthetic": SyntheticSource,
    "files": FileSource,
    "tfds": TfdsSource,
    "lms": LmsSource,
}


def open_source(spec: str, data_config: Any) -> DataSource:
    """The source of a spec ('synthetic', 'files:...', 'tfds:...', 'lms:...'), set up from the
    `config.data` keys of its kind; DataError naming the spec when it is unusable."""
    parsed = parse_spec(spec, data_config.file_pattern)
    return _KINDS[parsed.kind].from_spec(parsed, data_config)
