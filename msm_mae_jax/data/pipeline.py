"""The tf.data training pipeline: batches of normalised random log-mel crops of a data source,
and the dataset normalisation statistics.

The source (`config.data.source`, see `sources.open_source`) gives this process's batches of
random crops (`DataSource.batches`): waveform windows of audio sources (`crops.py`: only the
crop is decoded and transformed) or log-mel crops of `lms:` shards. Here the front end turns a
batch into the model input in a few batched TF ops: the log-mel of all windows at once
(`audio.log_mel(..., center=False)`), zero after each crop's valid frames, normalised. With
`config.data.logmel_on_device` the host stops at the windows and the accelerator computes the
same input (`device_frontend.py`). Crops are drawn from (seed, global position) for
global-order sources (synthetic, files, lms), so the hosts' local batches concatenated in
process order are exactly the one-process batch for any process count dividing the batch;
tfds (and version-1 lms corpora) key crops by (seed, process, local position). The batch of
a step depends only on the seed and the step: `start_step` resumes exactly.
Shape letters: B batch, F mel bins, T frames, L window samples.
"""

from __future__ import annotations

import atexit
import functools
import logging
import re
import weakref
from typing import Any, NamedTuple

import numpy as np

from msm_mae_jax.core.errors import ConfigError, DataError
from msm_mae_jax.data import audio, crops
from msm_mae_jax.data.normalization import (
    F32_EPS,
    NORM_STATS_METHODS,
    NormAccumulator,
    NormStats,
)
from msm_mae_jax.data.source_base import IndexedSource, SkipReport, mix_seed
from msm_mae_jax.data.sources import open_source
from msm_mae_jax.data.tf_setup import tensorflow

log = logging.getLogger(__name__)


class BatchIterator:
    """Iterator of numpy batches; `skip_report` lists inputs skipped so far.

    `close()` stops the pipeline; iterators still open when the interpreter exits are closed
    first (atexit): TF waits for the Python calls in flight, which could never run again once
    the interpreter is finalising (a process that ends with a live iterator would hang).
    """

    def __init__(self, ds: Any, report: SkipReport, num_local: int):
        self._it = iter(ds.as_numpy_iterator())
        self.skip_report = report
        self.num_local = num_local  # elements of one epoch this process reads
        _OPEN.add(self)

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:
            raise StopIteration
        try:
            return next(self._it)
        except tensorflow().errors.OpError as e:
            # A DataError raised by a source's numpy code reaches here wrapped in a TF error.
            m = re.search(r"DataError: (.+)", e.message or "")
            if m is None:
                raise
            raise DataError(m.group(1).strip()) from e

    def close(self) -> None:
        self._it = None  # TF's iterator is deleted here, the GIL released while it waits
        _OPEN.discard(self)


_OPEN: weakref.WeakSet[BatchIterator] = weakref.WeakSet()


@atexit.register
def _close_open_iterators() -> None:
    for it in list(_OPEN):
        it.close()


def _options():  # noqa: ANN202
    tf = tensorflow()
    opts = tf.data.Options()
    opts.deterministic = True
    opts.threading.max_intra_op_parallelism = 1  # parallelism comes from parallel maps
    return opts


def _local_batch(config, process_count: int) -> int:  # noqa: ANN001
    if config.batch_size % process_count:
        raise DataError(
            f"batch_size={config.batch_size} is not divisible by process_count={process_count}"
        )
    return config.batch_size // process_count


def _check_input_size(config) -> int:  # noqa: ANN001
    """The model's input frames (T); its mel bins must be the front end's."""
    f, t = (int(v) for v in config.model.input_size)
    if f != audio.N_MELS:
        raise DataError(f"model.input_size[0]={f}: the log-mel front end has {audio.N_MELS} bins")
    return t


def host_frontend(batch: dict, norm_stats: NormStats) -> dict:
    """tf: a source batch -> {"lms": float32 [B, 1, F, T] normalised, "frames": int32 [B]}.

    "wav" windows become log-mels here (one batched STFT); frames at or after a crop's valid
    frames are 0 before normalisation (the padding of short clips)."""
    tf = tensorflow()
    n_B = batch["frames"]
    lms_BFT = audio.log_mel(batch["wav"], center=False) if "wav" in batch else batch["lms"]
    t = tf.shape(lms_BFT)[2]
    valid_BFT = tf.range(t)[None, None, :] < n_B[:, None, None]
    lms_BFT = tf.where(valid_BFT, lms_BFT, tf.zeros_like(lms_BFT))
    return {"lms": norm_stats.normalize(lms_BFT)[:, None], "frames": n_B}


@functools.cache
def _compiled_frontend(norm_stats: NormStats):  # noqa: ANN202
    """`host_frontend` compiled by XLA (fused: ~25% less CPU than op by op); one function per
    statistics for every pipeline of the process, so XLA compiles each batch shape once."""
    tf = tensorflow()
    return tf.function(lambda b: host_frontend(b, norm_stats), jit_compile=True, autograph=False)


def _frontend_map(ds: Any, norm_stats: NormStats) -> Any:
    return ds.map(_compiled_frontend(norm_stats), tensorflow().data.AUTOTUNE)


def count_clips(config) -> int:  # noqa: ANN001
    """Training clips of the whole source (all hosts): steps per epoch = this // batch_size."""
    return open_source(config.data.source, config.data).total_examples


def train_iterator(
    config,  # noqa: ANN001
    norm_stats: NormStats,
    *,
    process_index: int = 0,
    process_count: int = 1,
    start_step: int = 0,
) -> BatchIterator:
    """Endless training batches of this host: {"lms": float32 [B_local, 1, 80, T] normalised
    crops, "frames": int32 [B_local] valid (non-padding) frames of each crop}; with
    `config.data.logmel_on_device`, {"wav": float32 [B_local, L] crop windows, "frames"}
    instead, for `device_frontend.normalized_log_mel` (L = crops.window_samples(T)).

    B_local = config.batch_size // process_count, T = config.model.input_size[1]. Batch s is
    the same whether iteration started at 0 or at `start_step=s`. For global-order sources
    host p's batch s is rows [p * B_local, (p + 1) * B_local) of the one-process batch s; a
    `tfds` source (or a version-1 `lms` corpus) gives each host its own shard, so the order
    depends on process_count.
    """
    frames = _check_input_size(config)
    b_local = _local_batch(config, process_count)
    if not 0 <= process_index < process_count:
        raise DataError(f"process_index={process_index} not in [0, {process_count})")
    source = open_source(config.data.source, config.data)
    on_device = bool(config.data.logmel_on_device)
    if on_device and source.yields != "wav":
        raise ConfigError(
            f"data.logmel_on_device needs an audio source (files, synthetic, tfds); "
            f"{config.data.source!r} holds log-mels already (set data.logmel_on_device=False)"
        )
    num_local = source.num_examples_per_process(process_count)[process_index]
    ds = source.batches(
        seed=int(config.seed),
        process_index=process_index,
        process_count=process_count,
        local_batch=b_local,
        start_step=int(start_step),
        frames=frames,
    )
    if not on_device:
        ds = _frontend_map(ds, norm_stats)
    ds = ds.prefetch(int(config.data.prefetch))
    return BatchIterator(ds.with_options(_options()), source.report, num_local)


NORM_BATCH = 64  # crops per batch of the statistics' pipeline


def compute_norm_stats(config, seed: int = 0) -> NormStats:  # noqa: ANN001
    """Mean/std of log-mel values over `config.data.norm_stats_crops` random training crops.

    Explicit `config.data.norm_std > 0` wins. `config.data.norm_stats_method`:
    - "official" (default), as the official `SpectrogramDataset` computes them: clips drawn
      with replacement (`official_sample`), each made into a training crop (a random crop of
      a longer clip, a shorter one zero-padded at the end in log-mel space), the mean and
      the std over every value of the stacked crops, **the padding included**, the std
      unbiased plus float32 eps. Record sources (tfds, version-1 lms corpora), which cannot
      be read by index, take the first crops of a seeded pass instead.
    - "frames": the crops' real frames only (the padding left out), population std; a
      source that knows its exact statistics (an `lms:` manifest) gives those.
    """
    if float(config.data.norm_std) > 0:
        return NormStats(float(config.data.norm_mean), float(config.data.norm_std))
    method = str(config.data.norm_stats_method)
    if method not in NORM_STATS_METHODS:
        raise ConfigError(
            f"config.data.norm_stats_method={method!r}; expected one of {NORM_STATS_METHODS}"
        )
    source = open_source(config.data.source, config.data)
    if method == "frames":
        known = source.known_norm_stats()
        if known is not None:
            return known
    n = int(config.data.norm_stats_crops)
    if n <= 0:
        raise DataError(f"data.norm_stats_crops={n} must be positive (or set data.norm_std)")
    frames = _check_input_size(config)
    if method == "official" and isinstance(source, IndexedSource):
        plan = official_sample(seed, n, source.total_examples)
        ds = source.crops_at(
            crop_seed=plan.crop_seed,
            frames=frames,
            positions=plan.positions,
            indices=plan.indices,
            batch=NORM_BATCH,
        )
    else:
        ds = source.batches(
            seed=mix_seed(seed, 7),
            process_index=0,
            process_count=1,
            local_batch=NORM_BATCH,
            start_step=0,
            frames=frames,
        )
    ds = _frontend_map(ds, NormStats(0.0, 1.0)).prefetch(2)
    acc, seen = NormAccumulator(), 0
    # A BatchIterator: a source's DataError (no file decodes) arrives as itself, one line.
    batches = BatchIterator(ds.with_options(_options()), source.report, 0)
    try:
        for batch in batches:
            lms_BFT, valid_B = batch["lms"][:, 0, :, :][: n - seen], batch["frames"][: n - seen]
            if method == "official":
                acc.add(lms_BFT)  # the padding (0) counts
            else:
                mask_BT = np.arange(lms_BFT.shape[2])[None, :] < valid_B[:, None]
                acc.add(lms_BFT.transpose(0, 2, 1)[mask_BT])
            seen += len(valid_B)
            if seen >= n:
                break
    finally:
        batches.close()
    stats = acc.stats(unbiased=True, eps=F32_EPS) if method == "official" else acc.stats()
    log.info(
        "normalisation statistics (%s) over %d crops: mean %.4f std %.4f",
        method,
        seen,
        stats.mean,
        stats.std,
    )
    return stats


class CropSample(NamedTuple):
    """Crops of the statistics: crop k is of clip `indices[k]`, drawn at `positions[k]` with
    `crop_seed` (`IndexedSource.crops_at`)."""

    positions: np.ndarray
    indices: np.ndarray
    crop_seed: int


def official_sample(seed: int, n: int, num_clips: int) -> CropSample:
    """The official statistics' sample (`np.random.randint(0, len(files), n)`: n clips with
    replacement) from `seed`: clip k is floor(u_k * num_clips), u_k = crops.uniform(seed', k);
    its crop start is drawn at position k with another seed, as training crops are."""
    u = crops.uniform(mix_seed(seed, 7, 1), np.arange(n))
    indices = np.minimum((u * num_clips).astype(np.int64), num_clips - 1)
    return CropSample(np.arange(n, dtype=np.int64), indices, mix_seed(seed, 7, 2))
