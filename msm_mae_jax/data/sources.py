"""Data sources for training and evaluation: one class per kind, opened from a spec.

    source = open_source(config.data.source, config.data)
    source.total_examples, source.num_examples_per_process(P), source.elements(...)

Kinds (spec syntax in `source_base`): `SyntheticSource` (the built-in generator),
`FileSource` (audio files), `TfdsSource` (TensorFlow Datasets, `tfds_source`) and `LmsSource`
(prepared log-mel shards, `lms_shards`). The first three are `AudioSource`s: evaluation tasks
read their clips by index (`name`, `iterate`, `durations`, `identity`).

Bad files of a `files:` source are skipped up front from their headers (`file_scan`); a file
that passes but fails to decode in training (or holds NaN/Inf) is replaced by the next file of
the global sorted list that decodes (deterministic and the same on every host), and reported
once in the source's `SkipReport`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from msm_mae_jax.core.errors import DataError
from msm_mae_jax.data import audio, audio_io, synthetic
from msm_mae_jax.data.file_scan import scan_files
from msm_mae_jax.data.lms_shards import LmsSource
from msm_mae_jax.data.source_base import (
    SOURCE_KINDS,
    AudioSource,
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


class SyntheticSource(IndexedSource):
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

    def training_loader(self, seed: int, frames: int) -> Callable[[Any, Any], np.ndarray]:
        data_seed, seconds = self.seed, self.seconds

        def load(pos, i) -> np.ndarray:  # noqa: ANN001
            return synthetic.make_clip_cached(int(i), data_seed, seconds)[0]

        return load

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


class FileSource(IndexedSource):
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

    def window_seconds(self, frames: int) -> float:
        """Audio read per training element: the crop plus two frames, capped by
        max_clip_seconds (> 0), so hour-long files cost no more than short ones."""
        need = (frames + 2) * audio.HOP_LENGTH / audio.SAMPLE_RATE
        cap = self.max_clip_seconds
        return min(need, cap) if cap > 0 else need

    def training_loader(self, seed: int, frames: int) -> Callable[[Any, Any], np.ndarray]:
        return _SubstitutingLoader(
            self.paths, self.window_seconds(frames), seed, self.report, self.spec
        )

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
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return "files:" + h.hexdigest()


class _SubstitutingLoader:
    """numpy side of a files pipeline: (global pos, index) -> wav of the window for that pos.

    A file that fails to decode is replaced by the next files of the global sorted list (the
    same replacement on every host and every run, so resumption and the process-independent
    order stay exact) and reported once. The window is drawn from (seed, pos, attempt).
    """

    def __init__(self, paths, seconds, seed, report, spec):  # noqa: ANN001
        self.paths, self.seconds, self.report, self.spec = paths, seconds, report, spec
        self.seed = int(seed)

    def __call__(self, pos, i) -> np.ndarray:  # noqa: ANN001
        n = len(self.paths)
        for k in range(min(n, MAX_SUBSTITUTES)):
            path = self.paths[(int(i) + k) % n]
            rng = np.random.default_rng((self.seed, int(pos), k))
            try:
                return audio_io.load_audio(path, max_seconds=self.seconds, rng=rng)
            except audio_io.AudioError as e:
                self.report.add(path, str(e))
        raise DataError(
            f"data source {self.spec!r}: {MAX_SUBSTITUTES} files in a row failed to decode; "
            + self.report.summary()
        )


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
