"""Reading `lms:` corpora of manifest version 1 (`tf.train.Example` records of [80, frames]).

Each host reads every P-th shard (or, with fewer shards than hosts, every P-th record) in a
per-epoch seeded shard order and shuffle, so the batch order depends on the process count;
`start_step` skips records of the current epoch without decoding them. Crops are drawn per
element from (seed, process, local position). Re-running `prepare` writes version 2, which
reads only the crops and in the process-independent order (`lms_shards`).
"""

from __future__ import annotations

import os
from typing import Any

from msm_mae_jax.core.errors import DataError
from msm_mae_jax.data import audio
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.data.source_base import BIG, DataSource, SkipReport, epoch_seed, mix_seed
from msm_mae_jax.data.tf_setup import plain, tensorflow


def parse_lms_record(record, dtype: str):  # noqa: ANN001, ANN201 (tf in, tf out)
    """A serialized version-1 record -> (lms float32 [80, frames], path string)."""
    tf = tensorflow()
    ex = tf.io.parse_single_example(
        record,
        {
            "lms": tf.io.FixedLenFeature([], tf.string),
            "frames": tf.io.FixedLenFeature([], tf.int64),
            "path": tf.io.FixedLenFeature([], tf.string),
        },
    )
    lms = tf.io.decode_raw(ex["lms"], tf.float16 if dtype == "float16" else tf.float32)
    lms = tf.reshape(tf.cast(lms, tf.float32), [audio.N_MELS, -1])
    return lms, ex["path"]


def host_shards(manifest: dict, p: int, n: int) -> tuple[list[str], int, bool]:
    """Shards host p of n reads, its records per epoch, and whether records are split instead."""
    shards = manifest["shards"]
    if len(shards) >= n:
        mine = shards[p::n]
        return [s["name"] for s in mine], sum(int(s["num_records"]) for s in mine), False
    total = sum(int(s["num_records"]) for s in shards)
    count = len(range(p, total, n))
    if count == 0:
        raise DataError(f"lms corpus has {total} records, fewer than {n} processes")
    return [s["name"] for s in shards], count, True


def crop(lms_FT, pos, seed: int, frames: int):  # noqa: ANN001, ANN201 (tf in, tf out)
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
    valid = tf.shape(out)[1]
    out = tf.pad(out, [[0, 0], [0, frames - valid]])
    out.set_shape([audio.N_MELS, frames])
    return out, valid


class LegacyLmsSource(DataSource):
    """Log-mel shards of manifest version 1, read sequentially per host."""

    yields = "lms"

    def __init__(self, path: str, manifest: dict, shuffle_buffer: int = 2048, spec: str = ""):
        self.path, self.manifest = path, manifest
        self.spec = spec or f"lms:{path}"
        self.shuffle_buffer = int(shuffle_buffer)
        self.report = SkipReport(self.spec)

    @property
    def total_examples(self) -> int:
        return sum(int(s["num_records"]) for s in self.manifest["shards"])

    def num_examples_per_process(self, process_count: int) -> list[int]:
        return [host_shards(self.manifest, p, process_count)[1] for p in range(process_count)]

    def known_norm_stats(self) -> NormStats:
        return NormStats.from_dict(self.manifest["norm_stats"])

    def batches(
        self,
        *,
        seed: int,
        process_index: int,
        process_count: int,
        local_batch: int,
        start_step: int,
        frames: int,
    ) -> Any:
        tf = tensorflow()
        shards, counts, record_shard = host_shards(self.manifest, process_index, process_count)
        files = [os.path.join(self.path, s) for s in shards]
        dtype, buf = self.manifest["dtype"], self.shuffle_buffer
        host_seed = mix_seed(seed, process_index, 1)
        crop_seed = mix_seed(seed, process_index, 2)

        def epoch(e):  # noqa: ANN001, ANN202
            noise = tf.random.stateless_uniform(
                [len(files)], seed=tf.stack([tf.constant(host_seed, tf.int64), e])
            )
            order = tf.gather(tf.constant(files), tf.argsort(noise, stable=True))
            ds = tf.data.Dataset.from_tensor_slices(order).interleave(
                tf.data.TFRecordDataset,
                cycle_length=min(4, len(files)),
                block_length=1,
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
            if record_shard:
                ds = ds.shard(process_count, process_index)
            return ds.shuffle(buf, seed=epoch_seed(host_seed, e), reshuffle_each_iteration=False)

        def element(p, r):  # noqa: ANN001, ANN202
            lms, valid = crop(parse_lms_record(r, dtype)[0], p, crop_seed, frames)
            return lms, tf.cast(valid, tf.int32)

        start = start_step * local_batch
        epoch0, offset = divmod(start, counts)
        recs = tf.data.Dataset.range(epoch0, BIG).flat_map(plain(epoch)).skip(offset)
        pos = tf.data.Dataset.range(start, BIG)
        ds = tf.data.Dataset.zip(pos, recs).map(plain(element), tf.data.AUTOTUNE)
        ds = ds.batch(local_batch, drop_remainder=True)
        return ds.map(plain(lambda x, n: {"lms": x, "frames": n}))
