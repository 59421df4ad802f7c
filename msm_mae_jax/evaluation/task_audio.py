"""A task's clips as the linear evaluation reads them: unit length, batches, bad clips skipped.

Clips are fitted to `unit_sec` as EVAR does (shorter clips zero-padded equally on both sides,
longer ones cropped from the start). A clip that cannot be decoded (`audio_io.AudioError`) is
skipped and recorded in `Clips.skipped` (clip index -> reason) instead of ending the
evaluation; the caller leaves it out of every split and reports it.

Shape letters: N clips, B batch, S samples.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from msm_mae_jax.data import audio, audio_io
from msm_mae_jax.data.normalization import NormAccumulator, NormStats
from msm_mae_jax.evaluation.tasks import Task

log = logging.getLogger(__name__)

MAX_DEFAULT_UNIT_SEC = 10.0
IN_MEMORY_BYTES = 2 << 30  # clips are kept in memory (one decode) below this size


def fit_length(wav_S: np.ndarray, samples: int) -> np.ndarray:
    """EVAR's unit length: zero-pad both sides (extra sample at the end), crop from start."""
    n = len(wav_S)
    if n < samples:
        left = (samples - n) // 2
        return np.pad(wav_S, (left, samples - n - left)).astype(np.float32)
    return np.asarray(wav_S[:samples], np.float32)


def default_unit_sec(task: Task) -> float:
    durations = task.source.durations()
    if durations is None:
        raise ValueError(
            f"{task.spec}: give unit_sec (--unit_sec) for this task; the clip "
            "durations are not known without decoding the whole dataset"
        )
    return float(min(MAX_DEFAULT_UNIT_SEC, np.max(durations)))


def _progress(total: int, desc: str, enabled: bool):  # noqa: ANN202
    from tqdm import tqdm  # noqa: PLC0415

    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, leave=False)


class Clips:
    """The task's clips fitted to unit length, batch by batch; decoded once when they fit."""

    def __init__(self, task: Task, unit_sec: float, progress: bool = True):
        self.task, self.progress = task, progress
        self.samples = int(round(unit_sec * audio.SAMPLE_RATE))
        self.unit_sec = float(unit_sec)
        self.skipped: dict[int, str] = {}  # clip index -> why it could not be used
        self._all: np.ndarray | None = None
        self._lengths: np.ndarray | None = None
        if len(task) * self.samples * 4 <= IN_MEMORY_BYTES:
            self._all = np.zeros((len(task), self.samples), np.float32)
            self._lengths = np.zeros(len(task), np.int64)
            for i, wav in self._read(range(len(task)), "reading audio"):
                self._all[i] = fit_length(wav, self.samples)
                self._lengths[i] = min(len(wav), self.samples)

    def _read(self, indices: Sequence[int], desc: str) -> Iterator[tuple[int, np.ndarray]]:
        """(position in `indices`, waveform) of the clips that decode, in order; the others
        go to `skipped` (the source's pass restarts after a bad clip)."""
        todo = [int(i) for i in indices]
        k = 0
        with _progress(len(todo), desc, self.progress) as bar:
            while k < len(todo):
                if todo[k] in self.skipped:
                    k += 1
                    bar.update()
                    continue
                try:
                    for wav in self.task.source.iterate(todo[k:], max_seconds=self.unit_sec):
                        yield k, wav
                        k += 1
                        bar.update()
                except audio_io.AudioError as e:
                    self.skipped[todo[k]] = str(e)
                    log.warning("skipping clip %d of %s: %s", todo[k], self.task.spec, e)
                    k += 1
                    bar.update()

    def batches(
        self, indices: Sequence[int], batch_size: int, desc: str
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(positions into `indices` [b], wavs [batch_size, S], audio lengths [b]) of the clips
        that decode; the last batch is zero-padded to batch_size rows."""
        indices = np.asarray(indices)
        if self._all is not None:
            usable = np.array([int(i) not in self.skipped for i in indices], bool)
            positions = np.flatnonzero(usable)
            with _progress(len(positions), desc, self.progress) as bar:
                for start in range(0, len(positions), batch_size):
                    pos = positions[start : start + batch_size]
                    bar.update(len(pos))
                    rows = self._all[indices[pos]]
                    yield pos, _pad_rows(rows, batch_size), self._lengths[indices[pos]]
            return
        buf, pos, lens = [], [], []
        for k, wav in self._read(indices, desc):
            buf.append(fit_length(wav, self.samples))
            pos.append(k)
            lens.append(min(len(wav), self.samples))
            if len(buf) == batch_size:
                yield np.array(pos), np.stack(buf), np.array(lens)
                buf, pos, lens = [], [], []
        if buf:
            yield np.array(pos), _pad_rows(np.stack(buf), batch_size), np.array(lens)

    def skipped_report(self) -> list[dict]:
        """[{index, name, reason}] of the skipped clips, in index order."""
        src = self.task.source
        return [
            {"index": i, "name": src.name(i), "reason": r} for i, r in sorted(self.skipped.items())
        ]


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    # A fixed batch shape: one compiled function for the whole extraction.
    return np.pad(x, ((0, rows - len(x)),) + ((0, 0),) * (x.ndim - 1))


log_mel = jax.jit(audio.log_mel_jax)


def task_norm_stats(clips: Clips, indices: Sequence[int], batch_size: int = 64) -> NormStats:
    """Mean and std of the log-mel values of the given (unit-length) clips."""
    acc = NormAccumulator()
    for pos, wav_BS, _ in clips.batches(indices, batch_size, "norm stats"):
        acc.add(np.asarray(log_mel(jnp.asarray(wav_BS)))[: len(pos)])
    return acc.stats()
