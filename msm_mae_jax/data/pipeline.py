"""The tf.data training pipeline: normalised random log-mel crops of a data source, and the
dataset normalisation statistics.

The source (`config.data.source`, see `sources.open_source`) gives this process's elements
(position, log-mel); here each is cropped at random to the model's input frames (zero-padded at
the end when shorter), normalised and batched. A crop is drawn from (seed, position): for
global-order sources (synthetic, files) the position is global, so the hosts' local batches
concatenated in process order are exactly the one-process batch for any process count dividing
the batch; record sources (tfds, lms) key crops by (seed, process, local position). The batch of
a step depends only on the seed and the step: `start_step` resumes exactly.
Shape letters: B batch, F mel bins, T frames.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from msm_mae_jax.core.errors import DataError
from msm_mae_jax.data import audio
from msm_mae_jax.data.normalization import NormAccumulator, NormStats
from msm_mae_jax.data.source_base import SkipReport, mix_seed
from msm_mae_jax.data.sources import open_source
from msm_mae_jax.data.tf_setup import tensorflow

log = logging.getLogger(__name__)


class BatchIterator:
    """Iterator of numpy batches; `skip_report` lists inputs skipped so far."""

    def __init__(self, ds: Any, report: SkipReport, num_local: int):
        self._it = iter(ds.as_numpy_iterator())
        self.skip_report = report
        self.num_local = num_local  # elements of one epoch this process reads

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._it)


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


def _crop(lms_FT, pos, seed: int, frames: int):  # noqa: ANN001, ANN202
    """Random crop of `frames` frames (zero-padded at the end) -> (lms [F, frames], valid)."""
    tf = tensorflow()
    t = tf.shape(lms_FT, out_type=tf.int64)[1]
    max_off = tf.maximum(t - frames, 0)
    off = tf.random.stateless_uniform(
        [],
        seed=tf.stack([tf.constant(seed, tf.int64), pos]),
        minval=0,
        maxval=max_off + 1,
        dtype=tf.int64,
    )
    out = lms_FT[:, off : off + frames]
    valid = tf.shape(out, out_type=tf.int64)[1]
    out = tf.pad(out, [[0, 0], [0, frames - valid]])
    out.set_shape([audio.N_MELS, frames])
    return out, valid


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
    crops, "frames": int32 [B_local] valid (non-padding) frames of each crop}.

    B_local = config.batch_size // process_count, T = config.model.input_size[1]. Batch s is
    the same whether iteration started at 0 or at `start_step=s`. For `synthetic` and `files`
    host p's batch s is rows [p * B_local, (p + 1) * B_local) of the one-process batch s; for
    `tfds` and `lms` each host reads its own shard, so the order depends on process_count.
    """
    tf = tensorflow()
    frames = _check_input_size(config)
    b_local = _local_batch(config, process_count)
    if not 0 <= process_index < process_count:
        raise DataError(f"process_index={process_index} not in [0, {process_count})")
    source = open_source(config.data.source, config.data)
    num_local = source.num_examples_per_process(process_count)[process_index]
    elements = source.elements(
        seed=int(config.seed),
        process_index=process_index,
        process_count=process_count,
        local_batch=b_local,
        start=int(start_step) * b_local,
        frames=frames,
    )
    # Global order: crops keyed by the global position only, as the element order is.
    crop_seed = (
        mix_seed(config.seed, 2) if source.global_order else mix_seed(config.seed, process_index, 2)
    )

    def finish(pos, lms_FT):  # noqa: ANN001, ANN202
        lms, valid = _crop(lms_FT, pos, crop_seed, frames)
        return norm_stats.normalize(lms), tf.cast(valid, tf.int32)

    ds = elements.map(finish, tf.data.AUTOTUNE).batch(b_local, drop_remainder=True)
    ds = ds.map(lambda x, v: {"lms": x[:, None], "frames": v}).prefetch(int(config.data.prefetch))
    return BatchIterator(ds.with_options(_options()), source.report, num_local)


def compute_norm_stats(config, seed: int = 0) -> NormStats:  # noqa: ANN001
    """Mean/std of log-mel values over `config.data.norm_stats_crops` random training crops.

    Explicit `config.data.norm_std > 0` wins; a source that knows its exact statistics (an
    `lms:` manifest) gives those. Zero padding of short clips is excluded from the statistics.
    """
    if float(config.data.norm_std) > 0:
        return NormStats(float(config.data.norm_mean), float(config.data.norm_std))
    source = open_source(config.data.source, config.data)
    known = source.known_norm_stats()
    if known is not None:
        return known
    tf = tensorflow()
    frames = _check_input_size(config)
    n = int(config.data.norm_stats_crops)
    if n <= 0:
        raise DataError(f"data.norm_stats_crops={n} must be positive (or set data.norm_std)")
    elements = source.elements(
        seed=mix_seed(seed, 7),
        process_index=0,
        process_count=1,
        local_batch=1,
        start=0,
        frames=frames,
    )
    crop_seed = mix_seed(seed, 8)

    def crop(pos, lms_FT):  # noqa: ANN001, ANN202
        return _crop(lms_FT, pos, crop_seed, frames)

    ds = elements.map(crop, tf.data.AUTOTUNE).take(n).batch(64).prefetch(2)
    acc = NormAccumulator()
    for lms_BFT, valid_B in ds.with_options(_options()).as_numpy_iterator():
        mask_BT = np.arange(frames)[None, :] < valid_B[:, None]
        acc.add(lms_BFT.transpose(0, 2, 1)[mask_BT])
    stats = acc.stats()
    log.info("normalisation statistics over %d crops: mean %.4f std %.4f", n, stats.mean, stats.std)
    return stats
