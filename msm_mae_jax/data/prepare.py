"""Precompute log-mels of an audio corpus into TFRecord shards + manifest.json (`lms:` source).

    python -m msm_mae_jax.prepare SRC OUT [--shard-size N] [--workers N] [--dtype float16]

SRC is a directory (scanned recursively, `--pattern` globs), a glob, or a `files:` spec. Files
are split, in sorted order, into shards of `--shard-size` files; worker processes compute the
log-mels (`audio.log_mel`) and write one shard each: `lms-KKKKK-of-NNNNN.tfrecord` (written
under a temporary name, then renamed) and its completion marker `<shard>.json` (records,
skipped files with reasons, statistics, byte size). Re-running keeps every shard whose marker
matches the plan and whose file has the recorded size, so an interrupted run resumes where it
stopped. manifest.json lists files, frames, shards, skipped files and the exact mean/std of
all log-mel values of the corpus (`NormStats`).

Record features: `lms` (raw bytes of float16/float32 [80, frames], C order), `frames` (int64),
`path` (bytes, relative to the corpus root).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from typing import Any

import numpy as np

from msm_mae_jax.core.errors import DataError
from msm_mae_jax.data import audio_io
from msm_mae_jax.data.file_scan import list_audio_files
from msm_mae_jax.data.lms_shards import DTYPES, MANIFEST, serialize_record, shard_name
from msm_mae_jax.data.normalization import NormAccumulator
from msm_mae_jax.data.source_base import SourceSpec, parse_spec
from msm_mae_jax.data.tf_setup import tensorflow

log = logging.getLogger(__name__)
MANIFEST_VERSION = 1


def _source_of(src: str, pattern: str) -> tuple[SourceSpec, str]:
    """(files spec, corpus root for relative paths) from a dir, a glob or a files: spec."""
    source = parse_spec(src if src.startswith("files:") else f"files:{src}", pattern)
    root = source.path
    if not os.path.isdir(root):
        root = os.path.dirname(root.split("*")[0].split("?")[0].split("[")[0]) or "."
    return source, os.path.abspath(root)


def _marker_path(out: str, name: str) -> str:
    return os.path.join(out, name + ".json")


def _shard_is_complete(out: str, name: str, rel_files: list[str]) -> dict | None:
    """The marker of a fully written shard of exactly these files, else None."""
    try:
        with open(_marker_path(out, name)) as f:
            marker = json.load(f)
        size = os.path.getsize(os.path.join(out, name))
    except (OSError, ValueError):
        return None
    if marker.get("files") != rel_files or marker.get("bytes") != size:
        return None
    return marker


def _write_shard(job: tuple) -> dict[str, Any]:
    """Worker: log-mels of one shard's files -> tfrecord + marker. Returns the marker."""
    out, name, root, rel_files, dtype, max_seconds = job
    from msm_mae_jax.data import audio

    tf = tensorflow()
    records, skipped = [], []
    acc = NormAccumulator()
    tmp = os.path.join(out, f".{name}.tmp")
    with tf.io.TFRecordWriter(tmp) as writer:
        for rel in rel_files:
            path = os.path.join(root, rel)
            try:
                wav = audio_io.load_audio(path, max_seconds=max_seconds or None)
                lms_FT = np.asarray(audio.log_mel(wav), np.float32)
                if not np.isfinite(lms_FT).all():  # cannot happen for finite audio; guard anyway
                    raise audio_io.AudioError(f"{path}: non-finite log-mel values")
            except audio_io.AudioError as e:
                skipped.append({"path": rel, "reason": str(e)})
                continue
            stored = lms_FT.astype(dtype)
            writer.write(serialize_record(stored, rel))
            records.append({"path": rel, "frames": int(stored.shape[1])})
            acc.add(stored)  # the statistics of the values as stored
    final = os.path.join(out, name)
    os.replace(tmp, final)
    marker = {
        "name": name,
        "files": rel_files,
        "records": records,
        "skipped": skipped,
        **acc.to_dict(),  # count, mean, m2: merged exactly into the corpus statistics
        "bytes": os.path.getsize(final),
    }
    mtmp = _marker_path(out, name) + ".tmp"
    with open(mtmp, "w") as f:
        json.dump(marker, f)
    os.replace(mtmp, _marker_path(out, name))
    return marker


def prepare(
    src: str,
    out: str,
    *,
    shard_size: int = 1024,
    workers: int | None = None,
    dtype: str = "float16",
    pattern: str = "*",
    max_seconds: float = 0.0,
    progress: bool = True,
) -> dict[str, Any]:
    """Writes (or completes) the shards and manifest of corpus `src` in `out`; returns it."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; expected one of {DTYPES}")
    if shard_size <= 0:
        raise ValueError(f"shard_size={shard_size} must be positive")
    source, root = _source_of(src, pattern)
    rel = [os.path.relpath(os.path.abspath(p), root) for p in list_audio_files(source)]
    os.makedirs(out, exist_ok=True)
    n_shards = -(-len(rel) // shard_size)
    plan = [
        (shard_name(k, n_shards), rel[k * shard_size : (k + 1) * shard_size])
        for k in range(n_shards)
    ]

    markers: dict[str, dict] = {}
    jobs = []
    for name, files in plan:
        done = _shard_is_complete(out, name, files)
        if done is not None:
            markers[name] = done
        else:
            jobs.append((out, name, root, files, dtype, max_seconds))
    log.info("%s: %d files, %d shards (%d already complete)", src, len(rel), n_shards, len(markers))

    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    from tqdm import tqdm

    bar = tqdm(
        total=sum(len(j[3]) for j in jobs), unit="file", disable=not progress, desc="log-mel shards"
    )
    if workers == 1:
        results = map(_write_shard, jobs)
        pool = None
    else:  # spawn: TensorFlow is not fork-safe once initialised in the parent
        pool = multiprocessing.get_context("spawn").Pool(workers)
        results = pool.imap_unordered(_write_shard, jobs)
    try:
        for marker in results:
            markers[marker["name"]] = marker
            bar.update(len(marker["files"]))
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()

    manifest = _manifest(src, root, dtype, shard_size, plan, markers)
    tmp = os.path.join(out, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(out, MANIFEST))
    if manifest["skipped"]:
        log.warning(
            "%d file(s) skipped; reasons in %s",
            len(manifest["skipped"]),
            os.path.join(out, MANIFEST),
        )
    if not manifest["shards"]:
        raise DataError(
            f"{src}: none of the {len(rel)} audio file(s) is usable; "
            f"reasons in {os.path.join(out, MANIFEST)}"
        )
    return manifest


def _manifest(src, root, dtype, shard_size, plan, markers) -> dict[str, Any]:  # noqa: ANN001
    files, shards, skipped = [], [], []
    acc = NormAccumulator()
    for name, _ in plan:
        m = markers[name]
        skipped += m["skipped"]
        if not m["records"]:
            continue
        shards.append(
            {
                "name": name,
                "num_records": len(m["records"]),
                "frames": sum(r["frames"] for r in m["records"]),
            }
        )
        files += [dict(r, shard=name) for r in m["records"]]
        acc.merge(NormAccumulator.from_dict(m))
    stats = acc.stats().to_dict() if acc.count else None
    return {
        "version": MANIFEST_VERSION,
        "source": os.path.abspath(src) if not src.startswith("files:") else src,
        "root": root,
        "dtype": dtype,
        "n_mels": 80,
        "sample_rate": 16000,
        "shard_size": shard_size,
        "num_records": len(files),
        "norm_stats": stats,
        "shards": shards,
        "files": files,
        "skipped": skipped,
    }
