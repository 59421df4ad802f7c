"""Precompute log-mels of an audio corpus into TFRecord shards + manifest.json (`lms:` source).

    python -m msm_mae_jax.prepare SRC OUT [--shard-size N] [--workers N] [--dtype float16]

SRC is a directory (scanned recursively, `--pattern` globs), a glob, or a `files:` spec. Files
are split, in sorted order, into shards of `--shard-size` files; worker processes compute the
log-mels (`audio.log_mel`) and write one shard each: `lms-KKKKK-of-NNNNN.tfrecord` (written
beside under a temporary name, then renamed: `core.fs.atomic_path`) and its completion marker
`<shard>.json` (records, skipped files with reasons, statistics, byte size). Re-running keeps
every shard whose marker matches the plan and whose file has the recorded size, so an
interrupted run resumes where it stopped. manifest.json lists files, frames, shards, skipped
files and the exact mean/std of all log-mel values of the corpus (`NormStats`).

Records (manifest version 2, `lms_shards`): the raw little-endian bytes of each log-mel,
time-major float16/float32 [frames, 80]; the manifest lists each file's shard, frames and the
byte offset of its record's data, so training reads only its crops.

SRC and OUT may be URLs (gs://...): each shard is written to a local temporary file and
uploaded whole (an object appears complete or not at all), then its marker; resuming works
the same way there.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
from typing import Any

import numpy as np

from msm_mae_jax.core import fs, outputs
from msm_mae_jax.core.errors import DataError
from msm_mae_jax.data import audio_io
from msm_mae_jax.data.file_scan import list_audio_files
from msm_mae_jax.data.lms_shards import (
    DTYPES,
    MANIFEST,
    MANIFEST_VERSION,
    data_offsets,
    record_bytes,
    shard_name,
)
from msm_mae_jax.data.normalization import NormAccumulator
from msm_mae_jax.data.source_base import SourceSpec, parse_spec
from msm_mae_jax.data.tf_setup import tensorflow

log = logging.getLogger(__name__)


def _source_of(src: str, pattern: str) -> tuple[SourceSpec, str]:
    """(files spec, corpus root for relative paths) from a dir, a glob or a files: spec."""
    source = parse_spec(src if src.startswith("files:") else f"files:{src}", pattern)
    root = source.path
    if not fs.isdir(root):
        root = fs.dirname(root.split("*")[0].split("?")[0].split("[")[0]) or "."
    return source, fs.absolute(root)


def _marker_path(out: str, name: str) -> str:
    return fs.join(out, name + ".json")


def _shard_is_complete(out: str, name: str, rel_files: list[str]) -> dict | None:
    """The marker of a fully written shard of exactly these files, else None."""
    try:
        marker = json.loads(fs.read_text(_marker_path(out, name)))
        size = fs.size(fs.join(out, name))
    except (OSError, ValueError):
        return None
    if marker.get("version") != MANIFEST_VERSION:
        return None  # written in an older record format: rewrite the shard
    if marker.get("files") != rel_files or marker.get("bytes") != size:
        return None
    return marker


def _write_shard(job: tuple) -> dict[str, Any]:
    """Worker: log-mels of one shard's files -> tfrecord + marker. Returns the marker."""
    out, name, root, rel_files, dtype, max_seconds = job
    tf = tensorflow()
    with fs.atomic_path(fs.join(out, name)) as tmp:  # beside, renamed (a URL: uploaded whole)
        records, skipped, acc = _write_records(tf, tmp, root, rel_files, dtype, max_seconds)
        nbytes = os.path.getsize(tmp)
    for r, offset in zip(records, data_offsets([r.pop("bytes") for r in records]), strict=True):
        r["offset"] = offset
    marker = {
        "version": MANIFEST_VERSION,
        "name": name,
        "files": rel_files,
        "records": records,
        "skipped": skipped,
        **acc.to_dict(),  # count, mean, m2: merged exactly into the corpus statistics
        "bytes": nbytes,
    }
    fs.write_text(_marker_path(out, name), json.dumps(marker))
    return marker


def _write_records(tf, tmp, root, rel_files, dtype, max_seconds):  # noqa: ANN001, ANN202
    """Log-mel records of `rel_files` into the local TFRecord file `tmp`: (records, skipped,
    statistics)."""
    from msm_mae_jax.data import audio

    records, skipped = [], []
    acc = NormAccumulator()
    with tf.io.TFRecordWriter(tmp) as writer:
        for rel in rel_files:
            path = fs.join(root, rel)
            try:
                wav = audio_io.load_audio(path, max_seconds=max_seconds or None)
                lms_FT = np.asarray(audio.log_mel(wav), np.float32)
                if not np.isfinite(lms_FT).all():  # cannot happen for finite audio; guard anyway
                    raise audio_io.AudioError(f"{path}: non-finite log-mel values")
            except audio_io.AudioError as e:
                skipped.append({"path": rel, "reason": str(e)})
                continue
            stored = lms_FT.astype(dtype)
            data = record_bytes(stored)
            writer.write(data)
            records.append({"path": rel, "frames": int(stored.shape[1]), "bytes": len(data)})
            acc.add(stored)  # the statistics of the values as stored
    return records, skipped, acc


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
    rel = [fs.relpath(fs.absolute(p), root) for p in list_audio_files(source)]
    fs.makedirs(out)
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
        # Workers ignore Ctrl-C (the terminal sends it to all of them): the parent alone
        # stops, ends them and reports it in one line; finished shards stay, the next run
        # resumes.
        ctx = multiprocessing.get_context("spawn")
        pool = ctx.Pool(
            workers, initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN)
        )
        results = pool.imap_unordered(_write_shard, jobs)
    done = False
    try:
        for marker in results:
            markers[marker["name"]] = marker
            bar.update(len(marker["files"]))
        done = True
    finally:
        bar.close()
        if pool is not None:
            if done:
                pool.close()
            else:  # interrupted or failed: the unfinished shards are not waited for
                pool.terminate()
            pool.join()

    manifest = _manifest(src, root, dtype, shard_size, plan, markers)
    outputs.write_text(fs.join(out, MANIFEST), json.dumps(manifest, indent=1), "OUT")
    if manifest["skipped"]:
        log.warning(
            "%d file(s) skipped; reasons in %s",
            len(manifest["skipped"]),
            fs.join(out, MANIFEST),
        )
    if not manifest["shards"]:
        raise DataError(
            f"{src}: none of the {len(rel)} audio file(s) is usable; "
            f"reasons in {fs.join(out, MANIFEST)}"
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
                "bytes": m["bytes"],
            }
        )
        files += [dict(r, shard=name) for r in m["records"]]
        acc.merge(NormAccumulator.from_dict(m))
    stats = acc.stats().to_dict() if acc.count else None
    return {
        "version": MANIFEST_VERSION,
        "source": fs.absolute(src) if not src.startswith("files:") else src,
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
