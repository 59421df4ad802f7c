"""The `lms:` corpus format (written by prepare.py) and its training source.

A corpus directory holds TFRecord shards `lms-KKKKK-of-NNNNN.tfrecord` and `manifest.json`
(files, frames, shards, skipped files and the exact log-mel mean/std of the corpus). Record
features: `lms` (raw bytes of float16/float32 [80, frames], C order), `frames` (int64) and
`path` (bytes, relative to the corpus root).

Training: each host reads every P-th shard (or, with fewer shards than hosts, every P-th
record) in a per-epoch seeded shard order and shuffle, so the batch order depends on the
process count; `start` skips records of the current epoch without decoding them.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from msm_mae_jax.core.errors import DataError
from msm_mae_jax.data import audio
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.data.source_base import (
    BIG,
    DataSource,
    SkipReport,
    SourceSpec,
    epoch_seed,
    mix_seed,
)
from msm_mae_jax.data.tf_setup import tensorflow

MANIFEST = "manifest.json"
DTYPES = ("float16", "float32")


def shard_name(k: int, n: int) -> str:
    return f"lms-{k:05d}-of-{n:05d}.tfrecord"


def read_manifest(path: str) -> dict[str, Any]:
    """The manifest.json of an `lms:` directory (written by prepare.py)."""
    mpath = os.path.join(path, MANIFEST)
    if not os.path.isfile(mpath):
        raise DataError(f"{path}: no {MANIFEST}; write shards with `python -m msm_mae_jax.prepare`")
    with open(mpath) as f:
        manifest = json.load(f)
    if not manifest.get("shards"):
        raise DataError(f"{mpath}: no shards listed (no usable audio in the prepared corpus)")
    for sh in manifest["shards"]:
        if not os.path.isfile(os.path.join(path, sh["name"])):
            raise DataError(f"{mpath}: shard {sh['name']} is missing; re-run prepare to rebuild it")
    return manifest


def serialize_record(lms_FT: np.ndarray, path: str) -> bytes:
    """One record of a shard: the log-mel as stored (float16/float32 [80, T]) and its path."""
    tf = tensorflow()

    def feature(**kw) -> Any:  # noqa: ANN003
        return tf.train.Feature(**kw)

    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "lms": feature(bytes_list=tf.train.BytesList(value=[lms_FT.tobytes()])),
                "frames": feature(int64_list=tf.train.Int64List(value=[lms_FT.shape[1]])),
                "path": feature(bytes_list=tf.train.BytesList(value=[path.encode()])),
            }
        )
    )
    return example.SerializeToString()


def parse_lms_record(record, dtype: str):  # noqa: ANN001, ANN201 (tf in, tf out)
    """A serialized record -> (lms float32 [80, frames], path string)."""
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


class LmsSource(DataSource):
    """Log-mel shards of a prepared corpus (`lms:/dir`)."""

    def __init__(self, path: str, *, shuffle_buffer: int = 2048, spec: str = ""):
        self.path = path
        self.spec = spec or f"lms:{path}"
        self.manifest = read_manifest(path)
        self.shuffle_buffer = int(shuffle_buffer)
        self.report = SkipReport(self.spec)

    @classmethod
    def from_spec(cls, spec: SourceSpec, data_config: Any) -> LmsSource:
        return cls(spec.path, shuffle_buffer=int(data_config.shuffle_buffer), spec=spec.spec)

    @property
    def total_examples(self) -> int:
        return sum(int(s["num_records"]) for s in self.manifest["shards"])

    def num_examples_per_process(self, process_count: int) -> list[int]:
        return [host_shards(self.manifest, p, process_count)[1] for p in range(process_count)]

    def known_norm_stats(self) -> NormStats:
        return NormStats.from_dict(self.manifest["norm_stats"])

    def elements(
        self,
        *,
        seed: int,
        process_index: int,
        process_count: int,
        local_batch: int,
        start: int,
        frames: int,
    ) -> Any:
        tf = tensorflow()
        shards, counts, record_shard = host_shards(self.manifest, process_index, process_count)
        files = [os.path.join(self.path, s) for s in shards]
        dtype, buf = self.manifest["dtype"], self.shuffle_buffer
        host_seed = mix_seed(seed, process_index, 1)

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

        epoch0, offset = divmod(start, counts)
        recs = tf.data.Dataset.range(epoch0, BIG).flat_map(epoch).skip(offset)
        pos = tf.data.Dataset.range(start, BIG)
        return tf.data.Dataset.zip(pos, recs).map(
            lambda p, r: (p, parse_lms_record(r, dtype)[0]), tf.data.AUTOTUNE
        )
