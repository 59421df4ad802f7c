"""A task's clips as the linear evaluation reads them: fitted to unit length as EVAR, bad clips
skipped.

Fitting (EVAR `evar/data.py`, `BaseRawAudioDataset.__getitem__`): a clip shorter than the unit
is zero-padded at the end; a longer one is cropped, at a random start for training and
validation clips and from the start for test clips. The random start is EVAR's
`np.random.randint(n - unit)` (uniform over [0, n - unit)) drawn from a generator seeded by
(crop seed, clip index): a run is reproducible and a clip has the same crop in every fold.
A clip is therefore read in up to two *views*, TEST (start crop) and TRAIN (random crop),
which differ only for clips longer than the unit.

A clip that cannot be decoded (`audio_io.AudioError`), or whose header cannot be read when the
default unit length is looked up, is skipped and recorded in `Clips.skipped` (clip index ->
reason) instead of ending the evaluation; the caller leaves it out of every split and reports
it. Rows decoded once are kept in memory (up to `IN_MEMORY_BYTES`), so the normalisation pass
and the extraction pass decode a clip once.

Shape letters: N clips, B batch, S samples.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from msm_mae_jax.data import audio, audio_io
from msm_mae_jax.data.normalization import NormAccumulator, NormStats
from msm_mae_jax.data.sources import FileSource
from msm_mae_jax.tasks.task import Task

log = logging.getLogger(__name__)

MAX_DEFAULT_UNIT_SEC = 10.0
IN_MEMORY_BYTES = 2 << 30  # fitted rows kept in memory (decoded once) up to this size
TEST, TRAIN = "test", "train"  # the views: start crop, seeded random crop
# EVAR's normalisation statistics: shuffled training batches of 128 until >= 5,000 clips
NORM_STATS_CLIPS = 5_120
_CROP_STREAM = 0x45564152  # keeps the crop generator apart from other uses of the same seed

Plan = Sequence[tuple[int, tuple[str, ...]]]  # (clip index, views wanted), increasing index


def fit_length(wav_S: np.ndarray, samples: int, start: int = 0) -> np.ndarray:
    """EVAR's unit length: a shorter clip zero-padded at the end, a longer one cropped to
    [start, start + samples)."""
    n = len(wav_S)
    if n <= samples:
        return np.pad(np.asarray(wav_S, np.float32), (0, samples - n))
    return np.asarray(wav_S[start : start + samples], np.float32)


def random_crop_start(n: int, samples: int, seed: int, index: int) -> int:
    """Start of the training crop of clip `index` (n samples): uniform over [0, n - samples)
    as EVAR's `np.random.randint(n - samples)`, from a generator seeded by (seed, index);
    0 for a clip not longer than `samples`."""
    if n <= samples:
        return 0
    rng = np.random.default_rng([_CROP_STREAM, int(seed), int(index)])
    return int(rng.integers(0, n - samples))


def task_views(task: Task) -> tuple[np.ndarray, np.ndarray]:
    """(test [N] bool, train [N] bool): clips tested in some fold; clips trained or validated
    on in some fold."""
    test, train = np.zeros(len(task), bool), np.zeros(len(task), bool)
    for f in task.folds:
        test[f.test] = True
        train[f.train] = True
        train[f.valid] = True
    return test, train


def extraction_plan(task: Task) -> list[tuple[int, tuple[str, ...]]]:
    """Every clip with the views its splits need (a clip in no split: TEST)."""
    test, train = task_views(task)
    plan = []
    for i in range(len(task)):
        views = ((TEST,) if test[i] else ()) + ((TRAIN,) if train[i] else ())
        plan.append((i, views or (TEST,)))
    return plan


def norm_stats_indices(task: Task, seed: int, limit: int = NORM_STATS_CLIPS) -> np.ndarray:
    """The clips of the task's normalisation statistics (EVAR's `calculate_norm_stats` on the
    first fold's training loader): the training clips of the first fold (fold tasks: every
    clip outside its test fold; EVAR holds validation out of these later), at most `limit`
    of them drawn with a seeded generator; sorted."""
    fold = task.folds[0]
    pool = np.union1d(fold.train, fold.valid) if len(task.folds) > 1 else np.asarray(fold.train)
    if len(pool) > limit:
        pool = np.random.default_rng([_CROP_STREAM, int(seed), 1]).choice(pool, limit, False)
    return np.sort(pool)


def roles_digest(task: Task, crop_seed: int) -> str:
    """Digest of what the splits decide about extraction (a part of a cache key): each clip's
    views and the clips of the normalisation statistics."""
    test, train = task_views(task)
    h = hashlib.sha256(np.packbits(test).tobytes() + np.packbits(train).tobytes())
    h.update(norm_stats_indices(task, crop_seed).tobytes())
    return h.hexdigest()[:16]


def clip_durations(task: Task) -> tuple[np.ndarray | None, dict[int, str]]:
    """(seconds [N] or None when unknown without decoding, {clip index: why its header
    cannot be read}); an unreadable file's duration is NaN."""
    src = task.source
    try:
        d = src.durations()
        return (None if d is None else np.asarray(d, np.float64)), {}
    except audio_io.AudioError:
        if not isinstance(src, FileSource):
            raise
    out, bad = np.full(len(src), np.nan), {}
    for i, path in enumerate(src.paths):
        try:
            out[i] = audio_io.audio_info(path).seconds
        except audio_io.AudioError as e:
            bad[i] = str(e)
            log.warning("skipping clip %d of %s: %s", i, task.spec, e)
    return out, bad


def default_unit_sec(task: Task, durations: np.ndarray | None = None) -> float:
    """The longest clip of the task (unreadable ones left out), capped at 10 s."""
    if durations is None:
        durations, _ = clip_durations(task)
    if durations is None:
        raise ValueError(
            f"{task.spec}: give unit_sec (--unit_sec) for this task; the clip "
            "durations are not known without decoding the whole dataset"
        )
    if not np.isfinite(durations).any():
        raise ValueError(f"{task.spec}: no clip of the task can be read")
    return float(min(MAX_DEFAULT_UNIT_SEC, np.nanmax(durations)))


def _progress(total: int, desc: str, enabled: bool):  # noqa: ANN202
    from tqdm import tqdm  # noqa: PLC0415

    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, leave=False)


def read_clips(
    task: Task,
    indices: Sequence[int],
    max_seconds: float | None,
    skipped: dict[int, str],
    bar=None,  # noqa: ANN001 (a tqdm bar, updated per clip)
) -> Iterator[tuple[int, np.ndarray]]:
    """(position in `indices`, waveform) of the clips that decode, in order; the others are
    recorded in `skipped` (clip index -> reason) and warned about (the source's pass
    restarts after a bad clip)."""
    todo = [int(i) for i in indices]
    k = 0
    while k < len(todo):
        try:
            for wav in task.source.iterate(todo[k:], max_seconds=max_seconds):
                yield k, wav
                k += 1
                if bar is not None:
                    bar.update()
        except audio_io.AudioError as e:
            skipped[todo[k]] = str(e)
            log.warning("skipping clip %d of %s: %s", todo[k], task.spec, e)
            k += 1
            if bar is not None:
                bar.update()


class Clips:
    """The task's clips fitted to unit length in their views, batch by batch."""

    def __init__(
        self,
        task: Task,
        unit_sec: float,
        progress: bool = True,
        crop_seed: int = 0,
        skipped: dict[int, str] | None = None,
        keep_bytes: int = IN_MEMORY_BYTES,
    ):
        self.task, self.progress = task, progress
        self.samples = int(round(unit_sec * audio.SAMPLE_RATE))
        self.unit_sec = float(unit_sec)
        self.crop_seed = int(crop_seed)
        self.skipped: dict[int, str] = dict(skipped or {})  # clip index -> why it is unusable
        self._kept: dict[tuple[int, str], tuple[np.ndarray, int]] = {}
        self._room = int(keep_bytes)

    def fit(self, wav_S: np.ndarray, index: int, view: str) -> tuple[np.ndarray, int]:
        """(the clip's row in `view` [S], samples of audio in the row)."""
        start = 0
        if view == TRAIN:
            start = random_crop_start(len(wav_S), self.samples, self.crop_seed, index)
        row = fit_length(wav_S, self.samples, start)
        return row, min(len(wav_S), self.samples)

    def _keep(self, key: tuple[int, str], row: np.ndarray, n: int) -> None:
        if self._room >= row.nbytes:
            self._kept[key] = (row, n)
            self._room -= row.nbytes

    def rows(self, plan: Plan, desc: str) -> Iterator[tuple[int, tuple[str, ...], np.ndarray, int]]:
        """(clip index, the views the row stands for, row [S], samples of audio in it) of each
        clip of `plan` that decodes: one row per distinct fit (a clip not longer than the unit
        has one row for all its views)."""
        plan = [(int(i), tuple(v)) for i, v in plan if int(i) not in self.skipped]
        ready = [all((i, x) in self._kept for x in v) for i, v in plan]
        todo = [item for item, r in zip(plan, ready, strict=True) if not r]
        with _progress(len(plan), desc, self.progress) as bar:
            for (i, views), r in zip(plan, ready, strict=True):
                if r:
                    yield from self._kept_rows(i, views)
                    bar.update()
            whole = any(TRAIN in v for _, v in todo)  # a random crop needs the clip's length
            for k, wav in read_clips(
                self.task, [i for i, _ in todo], None if whole else self.unit_sec, self.skipped, bar
            ):
                i, views = todo[k]
                # read whole, a clip of the unit's length is not cropped either; read up to the
                # unit, only a shorter one is known not to be longer (and only TEST is wanted)
                short = len(wav) < self.samples or (whole and len(wav) == self.samples)
                for group in [views] if short else [(v,) for v in views]:
                    row, n = self.fit(wav, i, group[0])
                    for v in group:
                        self._keep((i, v), row, n)
                    yield i, group, row, n

    def _kept_rows(self, i: int, views: tuple[str, ...]) -> Iterator:
        rows: dict[int, list] = {}
        for v in views:
            row, n = self._kept[(i, v)]
            rows.setdefault(id(row), [row, n, ()])[2] += (v,)
        for row, n, group in rows.values():
            yield i, group, row, n

    def plan_batches(
        self, plan: Plan, batch_size: int, desc: str
    ) -> Iterator[tuple[list[tuple[int, tuple[str, ...]]], np.ndarray, np.ndarray]]:
        """([(clip index, views)] [b], wavs [batch_size, S], audio samples [b]); the last batch
        is zero-padded to batch_size rows (one compiled function for the whole pass)."""
        keys, buf, lens = [], [], []
        for i, views, row, n in self.rows(plan, desc):
            keys.append((i, views))
            buf.append(row)
            lens.append(n)
            if len(buf) == batch_size:
                yield keys, np.stack(buf), np.array(lens)
                keys, buf, lens = [], [], []
        if buf:
            yield keys, _pad_rows(np.stack(buf), batch_size), np.array(lens)

    def batches(
        self, indices: Iterable[int], batch_size: int, desc: str, view: str = TEST
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(positions into `indices` [b], wavs [batch_size, S], audio samples [b]) of the clips
        that decode, all in one view."""
        indices = np.asarray(list(indices), np.int64)
        where: dict[int, list[int]] = {}
        for p, i in enumerate(indices):
            where.setdefault(int(i), []).append(p)
        plan = [(i, (view,)) for i in sorted(where)]
        for keys, wav_BS, len_B in self.plan_batches(plan, batch_size, desc):
            pos = [p for i, _ in keys for p in where[i]]
            rows = [r for r, (i, _) in enumerate(keys) for _ in where[i]]
            yield np.array(pos), _pad_rows(wav_BS[rows], batch_size), len_B[rows]

    def norm_stats(self) -> NormStats:
        """EVAR's normalisation statistics of the task: the log-mel values of the clips of
        `norm_stats_indices` in their training fit (`task_norm_stats`)."""
        return task_norm_stats(self, norm_stats_indices(self.task, self.crop_seed))

    def skipped_report(self) -> list[dict]:
        """[{index, name, reason}] of the skipped clips, in index order."""
        src = self.task.source
        return [
            {"index": i, "name": src.name(i), "reason": r} for i, r in sorted(self.skipped.items())
        ]


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    return np.pad(x, ((0, max(0, rows - len(x))),) + ((0, 0),) * (x.ndim - 1))


log_mel = jax.jit(audio.log_mel_jax)


def task_norm_stats(
    clips: Clips, indices: Iterable[int], batch_size: int = 64, view: str = TRAIN
) -> NormStats:
    """Mean and std of the log-mel values of the given clips fitted in `view` (default: the
    training fit, as EVAR computes them on its training loader)."""
    acc, indices = NormAccumulator(), list(indices)
    for pos, wav_BS, _ in clips.batches(indices, batch_size, "norm stats", view):
        acc.add(np.asarray(log_mel(jnp.asarray(wav_BS)))[: len(pos)])
    if acc.count == 0:
        raise ValueError(
            f"{clips.task.spec}: none of the {len(indices)} clip(s) of the normalisation "
            "statistics can be read"
        )
    return acc.stats()
