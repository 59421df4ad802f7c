"""The `lms:` corpus format (written by prepare.py) and its training source.

A corpus directory holds TFRecord shards `lms-KKKKK-of-NNNNN.tfrecord` and `manifest.json`
(files, frames, shards, skipped files and the exact log-mel mean/std of the corpus).

Manifest version 2 (written today): a record is the raw little-endian bytes of one clip's
log-mel, float16/float32 [frames, 80] (time-major, no protobuf), and every file entry of the
manifest holds its shard, frames and `offset`, the byte offset of its record's data in the
shard; every shard entry its size in `bytes` (checked when the corpus is opened). Every crop
read is checked for NaN/Inf values (bytes overwritten inside a shard): the shard and the clip
are named in one line instead of a non-finite loss steps later. A time crop
is then one contiguous byte range: training reads only the crops (`os.preadv`, one numpy
call per batch; a corpus in a bucket: one set of concurrent ranged reads per batch), in the
process-independent global order of
`IndexedSource`s (every epoch a permutation of all clips; exact resume; hosts' batches
concatenate to the one-process batch). The files stay valid TFRecords for sequential readers.

Version 1 (older corpora, still read by `lms_legacy`): `tf.train.Example` records holding
[80, frames] bytes, read sequentially per host.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from typing import Any

import numpy as np

from msm_mae_jax.core import fs
from msm_mae_jax.core.errors import DataError
from msm_mae_jax.data import audio, crops
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.data.source_base import BatchLoader, IndexedSource, SkipReport, SourceSpec
from msm_mae_jax.data.tf_setup import tensorflow

MANIFEST = "manifest.json"
MANIFEST_VERSION = 2
DTYPES = ("float16", "float32")
# A TFRecord: uint64 length, uint32 CRC of the length, the data, uint32 CRC of the data.
RECORD_HEADER_BYTES = 12
RECORD_OVERHEAD_BYTES = 16


def shard_name(k: int, n: int) -> str:
    return f"lms-{k:05d}-of-{n:05d}.tfrecord"


def read_manifest(path: str) -> dict[str, Any]:
    """The manifest.json of an `lms:` directory (written by prepare.py)."""
    mpath = fs.join(path, MANIFEST)
    if not fs.isfile(mpath):
        raise DataError(f"{path}: no {MANIFEST}; write shards with `python -m msm_mae_jax.prepare`")
    manifest = json.loads(fs.read_text(mpath))
    version = manifest.get("version")
    if version not in (1, MANIFEST_VERSION):
        raise DataError(
            f"{mpath}: manifest version {version!r} is not one this code reads (1, 2); "
            "re-run `python -m msm_mae_jax.prepare` to rewrite the corpus"
        )
    if not manifest.get("shards"):
        raise DataError(f"{mpath}: no shards listed (no usable audio in the prepared corpus)")
    # A bucket: the sizes of all shards from one listing (not a request per shard).
    listed = {fs.relpath(p, path): n for p, n, _ in fs.stamps(path)} if fs.is_remote(path) else None
    for sh in manifest["shards"]:
        spath = fs.join(path, sh["name"])
        if listed is not None:
            size = listed.get(sh["name"])
        else:
            size = os.path.getsize(spath) if os.path.isfile(spath) else None
        if size is None:
            raise DataError(f"{mpath}: shard {sh['name']} is missing; re-run prepare to rebuild it")
        _check_shard_size(spath, size, sh.get("bytes"))
    return manifest


def _check_shard_size(spath: str, size: int, expected: int | None) -> None:
    """A shard of another size than the manifest records (manifests since shard sizes were
    recorded) is cut or rewritten: refused by name before any crop is read from it."""
    if expected is None:
        return
    if size < expected:
        raise DataError(
            f"{spath}: {size} of {expected} bytes; the shard is shorter than its manifest says "
            "(cut by a failed copy or a full disk? re-run prepare to rebuild it)"
        )
    if size > expected:
        raise DataError(
            f"{spath}: {size} bytes, the manifest says {expected}; the shard is not the one its "
            "manifest lists (re-run prepare to rebuild it)"
        )


def record_bytes(lms_FT: np.ndarray) -> bytes:
    """A version-2 record: the log-mel as stored, time-major little-endian bytes."""
    return np.ascontiguousarray(lms_FT.T).astype(lms_FT.dtype.newbyteorder("<")).tobytes()


def data_offsets(sizes: list[int]) -> list[int]:
    """Byte offsets of the data of consecutive TFRecords of the given data sizes in a file."""
    offsets, pos = [], 0
    for size in sizes:
        offsets.append(pos + RECORD_HEADER_BYTES)
        pos += size + RECORD_OVERHEAD_BYTES
    return offsets


class LmsSource(IndexedSource):
    """Log-mel shards of a prepared corpus (`lms:/dir`), read by crop (manifest version 2)."""

    yields = "lms"

    def __init__(self, path: str, manifest: dict[str, Any] | None = None, spec: str = ""):
        self.path = path
        self.spec = spec or f"lms:{path}"
        self.manifest = manifest or read_manifest(path)
        self.report = SkipReport(self.spec)

    @classmethod
    def from_spec(cls, spec: SourceSpec, data_config: Any) -> Any:
        """A version-2 corpus as `LmsSource`, a version-1 one as `lms_legacy.LegacyLmsSource`."""
        manifest = read_manifest(spec.path)
        if manifest["version"] == 1:
            from msm_mae_jax.data.lms_legacy import LegacyLmsSource

            return LegacyLmsSource(
                spec.path, manifest, int(data_config.shuffle_buffer), spec=spec.spec
            )
        return cls(spec.path, manifest, spec=spec.spec)

    @property
    def total_examples(self) -> int:
        return int(len(self.manifest["files"]))

    def known_norm_stats(self) -> NormStats:
        return NormStats.from_dict(self.manifest["norm_stats"])

    def batch_loader(self, seed: int, frames: int) -> BatchLoader:
        reader = _CropReader(self.path, self.manifest, seed, frames)
        tf = tensorflow()

        def finish(x_BTF):  # noqa: ANN001, ANN202
            return tf.transpose(tf.cast(x_BTF, tf.float32), [0, 2, 1])

        return BatchLoader(reader, "lms", reader.dtype, (frames, audio.N_MELS), finish)


class _CropReader:
    """(global positions [B], clip indices [B]) -> (log-mel crops [B, T, 80] as stored, zero
    after the valid frames; valid frames [B]): one positioned read per crop."""

    def __init__(self, root: str, manifest: dict[str, Any], seed: int, frames: int):
        names = [s["name"] for s in manifest["shards"]]
        shard_of = {n: k for k, n in enumerate(names)}
        files = manifest["files"]
        self.shard = np.array([shard_of[f["shard"]] for f in files], np.int64)
        self.offset = np.array([f["offset"] for f in files], np.int64)
        self.clip_frames = np.array([f["frames"] for f in files], np.int64)
        self.names = [f["path"] for f in files]
        self.paths = [fs.join(root, n) for n in names]
        self.remote = fs.is_remote(root)
        self.dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
        self.row_bytes = audio.N_MELS * self.dtype.itemsize
        # The bit patterns of |x| (sign masked) reach the exponent mask only for NaN/Inf.
        self._uint = np.dtype(f"<u{self.dtype.itemsize}")
        self._abs_mask = self._uint.type(0x7FFF if self.dtype.itemsize == 2 else 0x7FFFFFFF)
        self._exp_mask = self._uint.type(0x7C00 if self.dtype.itemsize == 2 else 0x7F800000)
        self.seed, self.frames = int(seed), int(frames)
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()
        self._max_fds = _fd_budget()
        weakref.finalize(self, _close_all, self._fds)

    def _open(self, k: int) -> tuple[int, bool]:
        """(fd of shard k, whether the caller must close it)."""
        fd = self._fds.get(k)
        if fd is not None:
            return fd, False
        try:
            fd = os.open(self.paths[k], os.O_RDONLY)
        except OSError as e:
            raise DataError(f"{self.paths[k]}: cannot open lms shard ({e})") from e
        with self._lock:
            if k not in self._fds and len(self._fds) < self._max_fds:
                self._fds[k] = fd
                return fd, False
        return fd, True

    def __call__(self, pos_B: np.ndarray, idx_B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames = self.frames
        clip_B = self.clip_frames[idx_B]
        t0_B = crops.crop_start(crops.uniform(self.seed, pos_B), clip_B, frames)
        n_B = np.minimum(clip_B - t0_B, frames)
        out = np.zeros((len(idx_B), frames * self.row_bytes), np.uint8)
        read = self._read_remote if self.remote else self._read_local
        read(out, idx_B, t0_B, n_B)
        self._check_finite(out, idx_B, t0_B)
        x = out.view(self.dtype).reshape(len(out), frames, audio.N_MELS)
        return x, n_B.astype(np.int32)

    def _check_finite(self, out: np.ndarray, idx_B, t0_B) -> None:  # noqa: ANN001
        """Every value read is finite, as `prepare` wrote it (its log-mels are finite):
        anything else means the shard's bytes changed (overwritten, damaged on disk), and the
        shard is named before a NaN reaches the model. One vectorised test of the exponent
        bits per batch (a NaN or Inf has all of them set)."""
        bits = out.view(self._uint)
        if np.max(np.bitwise_and(bits, self._abs_mask)) < self._exp_mask:
            return
        bad = np.flatnonzero((np.bitwise_and(bits, self._abs_mask) >= self._exp_mask).any(axis=1))
        b = int(bad[0])
        i, k = int(idx_B[b]), int(self.shard[idx_B[b]])
        raise DataError(
            f"{self.paths[k]}: non-finite log-mel values in the record of {self.names[i]} "
            f"(frames from {int(t0_B[b])}), which prepare wrote finite: the shard's bytes "
            "changed since. Delete the shard and its .json marker and re-run prepare to "
            "rebuild it"
        )

    def _read_local(self, out: np.ndarray, idx_B, t0_B, n_B) -> None:  # noqa: ANN001
        """One positioned read per crop, straight into its row of `out`."""
        for b, i in enumerate(idx_B):
            k = int(self.shard[i])
            want = int(n_B[b]) * self.row_bytes
            start = int(self.offset[i]) + int(t0_B[b]) * self.row_bytes
            fd, owned = self._open(k)
            try:
                got = os.preadv(fd, [out[b, :want]], start)
            except OSError as e:
                raise DataError(f"{self.paths[k]}: cannot read lms shard ({e})") from e
            finally:
                if owned:
                    os.close(fd)
            if got != want:
                raise DataError(
                    f"{self.paths[k]}: {got} of {want} bytes at offset {start}; the shard is "
                    "shorter than its manifest says (re-run prepare to rebuild it)"
                )

    def _read_remote(self, out: np.ndarray, idx_B, t0_B, n_B) -> None:  # noqa: ANN001
        """Every crop of the batch in one set of concurrent ranged reads (object stores)."""
        starts = self.offset[idx_B] + t0_B * self.row_bytes
        ends = starts + n_B * self.row_bytes
        paths = [self.paths[int(k)] for k in self.shard[idx_B]]
        try:
            got = fs.read_many(paths, starts.tolist(), ends.tolist())
        except OSError as e:
            raise DataError(f"{paths[0]}: cannot read lms shard ({e})") from e
        for b, data in enumerate(got):
            want = int(ends[b] - starts[b])
            if len(data) != want:
                raise DataError(
                    f"{paths[b]}: {len(data)} of {want} bytes at offset {int(starts[b])}; the "
                    "shard is shorter than its manifest says (re-run prepare to rebuild it)"
                )
            out[b, :want] = np.frombuffer(data, np.uint8)


def _fd_budget() -> int:
    """Shard files a reader keeps open: a quarter of the soft limit on open files."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, ValueError, OSError):
        soft = 256
    return max(8, (soft if soft > 0 else 1024) // 4)


def _close_all(fds: dict[int, int]) -> None:
    for fd in fds.values():
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()
