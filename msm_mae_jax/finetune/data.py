"""The task's clips as log-mels in host memory, training batches and evaluation batches.

Every clip is read once and turned into its log-mel (computed on the device, bucketed by
length so a task of many lengths compiles a handful of programs); the store holds float32
[F, T_i] per clip, about 32 KB per second of audio. A clip that cannot be decoded is skipped
and counted (`ClipStore.skipped`); the job leaves it out of every split. Normalisation
('task': one mean and std over the frames of the clips that train some fold; 'checkpoint':
the model's statistics) is applied on the host when a batch is built; padding is 0 after
normalisation, as the runtime.

Training batches (`TrainBatches`): a seeded order per epoch (a permutation, or class-balanced
sampling with replacement), `crop_frames`-long crops at random offsets (time shift; a clip
shorter than the crop is placed at a random offset), the batch of step s a pure function of
(seed, s): a resumed run continues the same sequence, and each process takes its contiguous
slice of every global batch. Evaluation batches (`eval_batches`): whole clips, zero-padded to a
bucketed number of model units, grouped by that bucket.

Shape letters: N clips, B batch, F mel bins, T frames, S samples, C classes, U units.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np

from msm_mae_jax.core.errors import DataError
from msm_mae_jax.data import audio
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.features.runtime import bucket_size
from msm_mae_jax.tasks.task import Task
from msm_mae_jax.tasks.task_audio import fit_length, read_clips

LOG_MEL_BATCH = 32
_STREAM_ORDER, _STREAM_CROP = 1, 2  # independent numpy streams of one run seed


_log_mel = jax.jit(audio.log_mel_jax)


def log_mels(wavs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Log-mel [F, 1 + S_i // 160] of each waveform, equal to `audio.log_mel_jax` of the clip.

    Clips are reflect-extended to a bucketed length (2^k / 3*2^k frames) plus the STFT's
    half window, so every frame a clip has sees exactly what it sees unpadded (as the runtime
    does); one compiled program per bucket.
    """
    out: list[np.ndarray | None] = [None] * len(wavs)
    groups: dict[int, list[int]] = collections.defaultdict(list)
    for i, w in enumerate(wavs):
        if len(w) == 0:
            raise DataError(f"clip {i} has no samples")
        groups[bucket_size(audio.num_frames(len(w)))].append(i)
    for frames_b, idx in sorted(groups.items()):
        s_b = frames_b * audio.HOP_LENGTH + audio.N_FFT // 2
        for start in range(0, len(idx), LOG_MEL_BATCH):
            chunk = idx[start : start + LOG_MEL_BATCH]
            x = np.zeros((LOG_MEL_BATCH, s_b), np.float32)
            for r, i in enumerate(chunk):
                x[r] = np.pad(wavs[i], (0, s_b - len(wavs[i])), mode="reflect")
            lms = np.asarray(_log_mel(x))
            for r, i in enumerate(chunk):
                out[i] = np.ascontiguousarray(lms[r, :, : audio.num_frames(len(wavs[i]))])
    return out


@dataclasses.dataclass
class ClipStore:
    """Un-normalised log-mels of every clip of a task, [F, T_i] float32 ([F, 0] for a clip
    that could not be read: `skipped` holds its index and the reason)."""

    lms: list[np.ndarray]
    unit_sec: float  # 0: whole clips
    skipped: dict[int, str] = dataclasses.field(default_factory=dict)

    def frames(self, i: int) -> int:
        return self.lms[i].shape[1]

    def norm_stats(self, indices: Sequence[int]) -> NormStats:
        """Mean and std of the log-mel values of the given clips' frames (float64 sums)."""
        total = total_sq = count = 0.0
        for i in indices:
            x = self.lms[i].astype(np.float64)
            total += x.sum()
            total_sq += np.square(x).sum()
            count += x.size
        mean = total / count
        return NormStats(mean=float(mean), std=float(np.sqrt(max(total_sq / count - mean**2, 0))))

    def skipped_report(self, task: Task) -> list[dict]:
        """[{index, name, reason}] of the clips that could not be read, in index order."""
        return [
            {"index": i, "name": task.source.name(i), "reason": r}
            for i, r in sorted(self.skipped.items())
        ]


def load_clips(
    task: Task,
    unit_sec: float = 0.0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> ClipStore:
    """Reads every clip of the task (fitted to `unit_sec` as EVAR's test clips when > 0: end
    padding, crop from the start) -> ClipStore. A clip that cannot be decoded is skipped
    (warned about, recorded in `skipped`); none readable is a DataError."""
    from tqdm import tqdm

    n = len(task)
    max_seconds = unit_sec if unit_sec > 0 else None
    samples = int(round(unit_sec * audio.SAMPLE_RATE)) if unit_sec > 0 else 0
    wavs: dict[int, np.ndarray] = {}
    skipped: dict[int, str] = {}
    with tqdm(total=n, desc="reading audio", file=sys.stderr, disable=not progress) as bar:
        for i, wav in read_clips(task, range(n), max_seconds, skipped, bar):
            wavs[i] = fit_length(wav, samples) if samples else np.asarray(wav, np.float32)
    if not wavs:
        raise DataError(f"{task.spec}: none of its {n} clips can be read")
    seconds = sum(len(w) for w in wavs.values()) / audio.SAMPLE_RATE
    log(f"{n} clips, {seconds / 3600:.2f} h of audio -> log-mels ({seconds * 32e-3:.0f} MB)")
    if skipped:
        log(f"skipped {len(skipped)} clip(s) that could not be decoded")
    readable = sorted(wavs)
    lms = dict(zip(readable, log_mels([wavs[i] for i in readable]), strict=True))
    empty = np.zeros((audio.N_MELS, 0), np.float32)
    return ClipStore([lms.get(i, empty) for i in range(n)], float(unit_sec), skipped)


def targets(task: Task, indices: np.ndarray) -> np.ndarray:
    """Float32 targets [n, C]: one-hot (single-label) or multi-hot."""
    y = task.y[indices]
    if task.multilabel:
        return y.astype(np.float32)
    return np.eye(task.num_classes, dtype=np.float32)[y]


def balanced_weights(y: np.ndarray, multilabel: bool, num_classes: int) -> np.ndarray:
    """Per-clip sampling weights: the sum over the clip's labels of 1 / (label count + 0.01)
    (AudioMAE's `dataset/audioset/gen_weight.py`, up to its constant factor 1000)."""
    y_NC = y if multilabel else np.eye(num_classes, dtype=np.int64)[y]
    count_C = y_NC.sum(0).astype(np.float64)
    return (y_NC * (1.0 / (count_C + 0.01))[None]).sum(1)


def normalize(x_FT: np.ndarray, stats: NormStats) -> np.ndarray:
    return (x_FT - np.float32(stats.mean)) / np.float32(stats.std)


class TrainBatches:
    """The training batch of every step of one run (see the module docstring)."""

    def __init__(
        self,
        store: ClipStore,
        indices: np.ndarray,
        y_NC: np.ndarray,
        *,
        stats: NormStats,
        seed: int,
        batch_size: int,
        crop_frames: int,
        padded_frames: int,
        time_shift: bool,
        weights: np.ndarray | None = None,
        process_index: int = 0,
        process_count: int = 1,
    ):
        self.store, self.indices, self.y_NC = store, np.asarray(indices), y_NC
        self.stats, self.seed, self.batch_size = stats, int(seed), int(batch_size)
        self.crop, self.padded, self.time_shift = int(crop_frames), int(padded_frames), time_shift
        self.p = weights / weights.sum() if weights is not None else None
        self.steps_per_epoch = len(self.indices) // self.batch_size
        self.local = self.batch_size // process_count
        self.row0 = process_index * self.local
        self._order: tuple[int, np.ndarray] | None = None

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Positions into `indices` of one epoch (a permutation, or weighted draws)."""
        if self._order is None or self._order[0] != epoch:
            rng = np.random.default_rng([self.seed, _STREAM_ORDER, epoch])
            n = len(self.indices)
            order = rng.permutation(n) if self.p is None else rng.choice(n, n, p=self.p)
            self._order = (epoch, order)
        return self._order[1]

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This process's rows of step `step`: (x [b, F, padded], valid [b, padded], y [b, C])."""
        epoch, pos = divmod(int(step), self.steps_per_epoch)
        rows = self.epoch_order(epoch)[pos * self.batch_size : (pos + 1) * self.batch_size]
        u_B = np.random.default_rng([self.seed, _STREAM_CROP, int(step)]).random(self.batch_size)
        sl = slice(self.row0, self.row0 + self.local)
        rows, u_B = rows[sl], u_B[sl]
        F = self.store.lms[0].shape[0]
        x = np.zeros((self.local, F, self.padded), np.float32)
        valid = np.zeros((self.local, self.padded), bool)
        for r, (k, u) in enumerate(zip(rows, u_B, strict=True)):
            lms = self.store.lms[self.indices[k]]
            t, c = lms.shape[1], self.crop
            shift = int(u * (abs(t - c) + 1)) if self.time_shift else 0
            if t >= c:  # a random window of the clip
                x[r, :, :c] = normalize(lms[:, shift : shift + c], self.stats)
                valid[r, :c] = True
            else:  # the whole clip at a random offset
                x[r, :, shift : shift + t] = normalize(lms, self.stats)
                valid[r, shift : shift + t] = True
        return x, valid, self.y_NC[rows]


def eval_batches(
    store: ClipStore,
    indices: Sequence[int],
    batch_size: int,
    unit_frames: int,
    stats: NormStats,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Whole clips: (positions into `indices` [b], x [batch_size, F, U*fu], valid [.., U*fu]),
    grouped by the bucketed unit count U; the last batch of a group is padded with empty rows."""
    indices = np.asarray(indices)
    units = np.array([bucket_size(-(-store.frames(i) // unit_frames)) for i in indices])
    F = store.lms[0].shape[0]
    for u in np.unique(units):
        pos = np.flatnonzero(units == u)
        T = int(u) * unit_frames
        for start in range(0, len(pos), batch_size):
            chunk = pos[start : start + batch_size]
            x = np.zeros((batch_size, F, T), np.float32)
            valid = np.zeros((batch_size, T), bool)
            for r, p in enumerate(chunk):
                lms = store.lms[indices[p]]
                x[r, :, : lms.shape[1]] = normalize(lms, stats)
                valid[r, : lms.shape[1]] = True
            yield chunk, x, valid
