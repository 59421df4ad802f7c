"""tf.data input pipelines: training crops and evaluation clips from four kinds of source.

Sources (`config.data.source`):
- `synthetic`: the built-in labelled generator (`synthetic.py`), no files needed;
- `files:/dir[,glob,...]` or `files:/a/glob/**/*.flac`: audio files soundfile reads (recursive
  directory scan filtered by `config.data.file_pattern` / the globs after the comma), any rate
  and channel count -> mono 16 kHz (soxr); the log-mel runs in the tf.data graph;
- `tfds:name[:version]:split`: any TensorFlow Datasets audio dataset (audio key, sample rate,
  label key and data_dir configurable);
- `lms:/dir`: log-mel shards written by `python -m msm_mae_jax.prepare`.

Training order of `synthetic` and `files` (independent of the number of processes): epoch
`e` is one permutation of all N clips drawn from `(seed, e)`; global position `g = step * B + j`
(B = config.batch_size) holds clip `perm_e[g - e * N]` with `e = g // N`; host p of P reads the
contiguous slice `j in [p * B_local, (p + 1) * B_local)` of every global batch and decodes only
those elements. The random crop of an element is drawn from `(seed, g)`, never from the process
index, so the hosts' local batches concatenated in process order are exactly the one-process
batch, for any P dividing B. The batch for a step depends only on the seed and the step, and
`start_step` resumes by computing the positions (no skip over decoded audio).

Record sources (tfds, lms) cannot seek, so each host reads its own shard of the records
(`tfds.even_splits`, or every P-th shard / record of an lms corpus) in a seeded shuffle per
epoch (shard order permuted per epoch for lms), with crops keyed by `(seed, process_index,
host-local position)`; `start_step` skips records of the current epoch without cropping them.
Their batch order therefore DEPENDS ON THE PROCESS COUNT: a run on P hosts sees different
batches than a run on one host (same distribution, different order).

Bad input: files are validated up front from their headers (`audio_io.audio_info`); a file that
passes but fails to decode (or holds NaN/Inf) is replaced by the next file of the global sorted
list that decodes (deterministic and the same on every host), and reported once. Skips are
logged as warnings naming the file and collected in a `SkipReport` (`iterator.skip_report`).
No usable file left -> `DataError` naming the source.
Shape letters: B batch, F mel bins, T frames, S samples.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import fnmatch
import glob
import json
import logging
import math
import os
import re
import threading
from typing import Any

import numpy as np

from msm_mae_jax.core.errors import DataError
from msm_mae_jax.data import audio, audio_io, synthetic
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.data.tf_setup import tensorflow

log = logging.getLogger(__name__)

SOURCE_KINDS = ("synthetic", "files", "tfds", "lms")
MANIFEST = "manifest.json"
_BIG = 2**62  # "forever" for Dataset.range
_MAX_SUBSTITUTES = 16  # decode failures in a row before the pipeline gives up


# ---- sources ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Source:
    """A parsed `config.data.source` spec."""

    kind: str  # one of SOURCE_KINDS
    spec: str
    path: str = ""  # files: dir, file or glob; lms: dir
    patterns: tuple[str, ...] = ()  # files under a dir: globs matched against relative paths
    name: str = ""  # tfds: 'name', 'name/config' or 'name:1.0.0'
    split: str = ""  # tfds split, slicing allowed ('train[:80%]')


_TFDS_SPEC = re.compile(r"^(?P<name>[^:\[\]]+?(?::\d+(?:\.\d+)*)?)(?::(?P<split>.+))?$")


def parse_source(spec: str, file_pattern: str = "*") -> Source:
    """'synthetic' | 'files:/dir[,glob...]' | 'tfds:name[:version]:split' | 'lms:/dir'."""
    spec = str(spec).strip()
    kind, _, rest = spec.partition(":")
    if kind == "synthetic" and not rest:
        return Source("synthetic", spec)
    if kind == "files" and rest:
        path, *globs = [p.strip() for p in rest.split(",")]
        if not globs:
            globs = [g.strip() for g in file_pattern.split(",") if g.strip()] or ["*"]
        return Source("files", spec, path=os.path.expanduser(path), patterns=tuple(globs))
    if kind == "lms" and rest:
        return Source("lms", spec, path=os.path.expanduser(rest))
    if kind == "tfds" and rest:
        m = _TFDS_SPEC.match(rest)
        if m:
            return Source("tfds", spec, name=m["name"], split=m["split"] or "train")
    raise DataError(
        f"config.data.source={spec!r} is not a data source; expected 'synthetic', "
        "'files:/dir/or/glob', 'tfds:name:split' or 'lms:/dir'"
    )


class SkipReport:
    """Thread-safe record of skipped inputs (each warned about once)."""

    def __init__(self, source: str):
        self.source = source
        self.skipped: dict[str, str] = {}  # path -> reason
        self._lock = threading.Lock()

    def add(self, path: str, reason: str) -> None:
        with self._lock:
            if path in self.skipped:
                return
            self.skipped[path] = reason
        msg = reason if reason.startswith(path) else f"{path}: {reason}"
        log.warning("skipping %s", msg)

    @property
    def count(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        if not self.skipped:
            return f"{self.source}: no input skipped"
        head = "; ".join(list(self.skipped.values())[:5])
        more = f" (+{self.count - 5} more)" if self.count > 5 else ""
        return f"{self.source}: {self.count} input(s) skipped: {head}{more}"


# ---- files -----------------------------------------------------------------------------------


@dataclasses.dataclass
class FileList:
    """Usable files of a `files:` source (sorted) and what was skipped while checking them."""

    paths: list[str]
    seconds: list[float]
    report: SkipReport


_INFO_CACHE: dict[tuple[str, int, int], tuple[float, str]] = {}  # (path, size, mtime) -> info
_INFO_LOCK = threading.Lock()


def list_audio_files(source: Source) -> list[str]:
    """Candidate audio files of a `files:` source (audio extensions only), sorted."""
    path = source.path
    if glob.has_magic(path):
        found = [p for p in glob.glob(path, recursive=True) if os.path.isfile(p)]
        where = f"glob {path!r}"
    elif os.path.isfile(path):
        found, where = [path], path
    elif os.path.isdir(path):
        found, where = [], f"{path} (patterns {list(source.patterns)})"
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for fn in filenames:
                full = os.path.join(dirpath, fn)
                rel = os.path.relpath(full, path)
                if any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(fn, g) for g in source.patterns):
                    found.append(full)
    else:
        raise DataError(f"data source {source.spec!r}: {path} does not exist")
    files = sorted(p for p in found if audio_io.is_audio_file(p))
    if not files:
        raise DataError(
            f"data source {source.spec!r}: no audio files found in {where} "
            f"(extensions: {', '.join(sorted(audio_io.AUDIO_EXTENSIONS))})"
        )
    return files


def _checked_info(path: str) -> tuple[float, str]:
    """(seconds, '') for a usable header, (0, reason) otherwise; cached by size and mtime."""
    try:
        st = os.stat(path)
        key = (path, st.st_size, st.st_mtime_ns)
    except OSError as e:
        return 0.0, f"{path}: {type(e).__name__}: {e}"
    with _INFO_LOCK:
        if key in _INFO_CACHE:
            return _INFO_CACHE[key]
    try:
        if not os.access(path, os.R_OK):
            raise audio_io.AudioError(f"{path}: not readable (permission denied)")
        info = audio_io.audio_info(path)
        out = (info.seconds, "")
        if info.seconds < audio_io.MIN_SECONDS:
            out = (0.0, f"{path}: too short ({info.frames} samples at {info.samplerate} Hz)")
    except audio_io.AudioError as e:
        out = (0.0, str(e))
    with _INFO_LOCK:
        _INFO_CACHE[key] = out
    return out


def scan_files(source: Source) -> FileList:
    """Lists and header-checks the files of a `files:` source; DataError if none is usable."""
    files = list_audio_files(source)
    report = SkipReport(source.spec)
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        infos = list(ex.map(_checked_info, files))
    paths, seconds = [], []
    for path, (sec, reason) in zip(files, infos, strict=True):
        if reason:
            report.add(path, reason)
        else:
            paths.append(path)
            seconds.append(sec)
    if report.count:
        log.warning("%s", report.summary())
    if not paths:
        raise DataError(
            f"data source {source.spec!r}: none of the {len(files)} audio file(s) is usable; "
            + report.summary()
        )
    return FileList(paths, seconds, report)


# ---- lms shards --------------------------------------------------------------------------------


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


def parse_lms_record(record, dtype: str):  # noqa: ANN001, ANN201 (tf in, tf out)
    """A serialized prepare.py example -> (lms float32 [80, frames], path string)."""
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


# ---- tensorflow helpers ------------------------------------------------------------------------


def _options():  # noqa: ANN202
    tf = tensorflow()
    opts = tf.data.Options()
    opts.deterministic = True
    opts.threading.max_intra_op_parallelism = 1  # parallelism comes from parallel maps
    return opts


def _mix(*xs: int) -> int:
    """A 62-bit seed from integers (stable across runs and processes)."""
    h = np.random.SeedSequence([int(x) & 0xFFFFFFFF for x in xs]).generate_state(2, np.uint32)
    return int((int(h[0]) << 30) ^ int(h[1])) & (2**62 - 1)


def _local_batch(config, process_count: int) -> int:  # noqa: ANN001
    if config.batch_size % process_count:
        raise DataError(
            f"batch_size={config.batch_size} is not divisible by process_count={process_count}"
        )
    return config.batch_size // process_count


def _check_input_size(config) -> tuple[int, int]:  # noqa: ANN001
    f, t = (int(v) for v in config.model.input_size)
    if f != audio.N_MELS:
        raise DataError(f"model.input_size[0]={f}: the log-mel front end has {audio.N_MELS} bins")
    return f, t


def _global_index_stream(n: int, seed: int, start_q: int, p: int, b_local: int, b: int):  # noqa: ANN202
    """(g, index) at host p's local positions q >= start_q of the process-independent order.

    Local position q (step q // b_local, row q % b_local) is global position
    g = (q // b_local) * b + p * b_local + q % b_local; epoch e = g // n is the permutation of
    the n clips seeded by (seed, e). Each epoch's permutation is drawn once and gathered at the
    host's positions in it (a contiguous range of q), so resuming costs nothing per element.
    """
    tf = tensorflow()

    def g_of(q):  # noqa: ANN001, ANN202
        return (q // b_local) * b + p * b_local + q % b_local

    def count_below(x):  # noqa: ANN001, ANN202
        """Host positions q with g(q) < x (x >= 0)."""
        return (x // b) * b_local + tf.clip_by_value(x % b - p * b_local, 0, b_local)

    def epoch(e):  # noqa: ANN001, ANN202
        lo = tf.maximum(count_below(e * n), start_q)
        q = tf.range(lo, count_below((e + 1) * n), dtype=tf.int64)
        g = g_of(q)
        noise = tf.random.stateless_uniform([n], seed=tf.stack([tf.constant(seed, tf.int64), e]))
        perm = tf.argsort(noise, stable=True)
        return tf.data.Dataset.from_tensor_slices((g, tf.gather(perm, g - e * n)))

    return tf.data.Dataset.range(g_of(start_q) // n, _BIG).flat_map(epoch)


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


# ---- per-source element datasets ---------------------------------------------------------------


@dataclasses.dataclass
class _Plan:
    """What a training/statistics pipeline reads on this host."""

    source: Source
    # Elements of one epoch this host reads: exact for record sources; for the global order
    # (synthetic, files) the N positions of an epoch split N / P per host, rounded up here.
    num_local: int
    report: SkipReport
    elements: Any  # (start_q: host-local position) -> Dataset of (pos, lms_FT)
    # True: pos is the global position and the order does not depend on the process count
    # (synthetic, files); False: pos is host-local (record sources, sharded per host).
    global_order: bool


def _window_seconds(config, frames: int) -> float:  # noqa: ANN001
    """Audio read per training element: the crop plus two frames, capped by max_clip_seconds."""
    need = (frames + 2) * audio.HOP_LENGTH / audio.SAMPLE_RATE
    cap = float(config.data.max_clip_seconds)
    return min(need, cap) if cap > 0 else need


def _plan(config, seed: int, process_index: int, process_count: int, b_local: int) -> _Plan:  # noqa: ANN001
    """Elements of host `process_index` for local batches of `b_local` (global b_local * P)."""
    tf = tensorflow()
    src = parse_source(config.data.source, config.data.file_pattern)
    _, frames = _check_input_size(config)
    if not 0 <= process_index < process_count:
        raise DataError(f"process_index={process_index} not in [0, {process_count})")
    host_seed = _mix(seed, process_index, 1)  # record sources: per-host shuffles
    order_seed = _mix(seed, 1)  # synthetic / files: one order for every process count
    par = tf.data.AUTOTUNE

    def global_elements(n: int, load_np):  # noqa: ANN001, ANN202
        def elements(start_q: int):  # noqa: ANN202
            def load(pos, i):  # noqa: ANN001, ANN202
                wav = tf.numpy_function(load_np, [pos, i], tf.float32, stateful=False)
                wav.set_shape([None])
                return pos, audio.log_mel(wav)

            stream = _global_index_stream(
                n, order_seed, start_q, process_index, b_local, b_local * process_count
            )
            return stream.map(load, par)

        return elements

    if src.kind == "synthetic":
        n_total = int(config.data.synthetic_clips)
        if n_total <= 0:
            raise DataError(f"data.synthetic_clips={n_total} must be positive")
        data_seed, seconds = int(config.data.synthetic_seed), float(config.data.synthetic_seconds)

        def gen(pos, i):  # noqa: ANN001, ANN202
            return synthetic.make_clip_cached(int(i), data_seed, seconds)[0]

        n_local = math.ceil(n_total / process_count)
        return _Plan(src, n_local, SkipReport(src.spec), global_elements(n_total, gen), True)

    if src.kind == "files":
        fl = scan_files(src)
        window = _window_seconds(config, frames)
        loader = _SubstitutingLoader(fl.paths, window, seed, fl.report, src.spec)
        n_local = math.ceil(len(fl.paths) / process_count)
        return _Plan(src, n_local, fl.report, global_elements(len(fl.paths), loader), True)

    if src.kind == "lms":
        manifest = read_manifest(src.path)
        shards, counts, record_shard = _lms_host_shards(manifest, process_index, process_count)
        files = [os.path.join(src.path, s) for s in shards]
        dtype, buf = manifest["dtype"], int(config.data.shuffle_buffer)
        report = SkipReport(src.spec)

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
            return ds.shuffle(buf, seed=_seed_of(host_seed, e), reshuffle_each_iteration=False)

        def elements(start_pos: int):  # noqa: ANN202
            epoch0, offset = divmod(start_pos, counts)
            recs = tf.data.Dataset.range(epoch0, _BIG).flat_map(epoch).skip(offset)
            pos = tf.data.Dataset.range(start_pos, _BIG)
            return tf.data.Dataset.zip(pos, recs).map(
                lambda p, r: (p, parse_lms_record(r, dtype)[0]), par
            )

        return _Plan(src, counts, report, elements, False)

    # tfds
    base, n_local, to_wav, report = _tfds_reader(config, src, process_index, process_count)
    buf = int(config.data.shuffle_buffer)

    def tfds_epoch(e):  # noqa: ANN001, ANN202
        return base.shuffle(buf, seed=_seed_of(host_seed, e), reshuffle_each_iteration=False)

    def elements(start_pos: int):  # noqa: ANN202
        epoch0, offset = divmod(start_pos, n_local)
        recs = tf.data.Dataset.range(epoch0, _BIG).flat_map(tfds_epoch).skip(offset)
        pos = tf.data.Dataset.range(start_pos, _BIG)

        def load(p, ex):  # noqa: ANN001, ANN202
            wav, ok = to_wav(ex, p)
            return p, wav, ok

        ds = tf.data.Dataset.zip(pos, recs).map(load, par).filter(lambda p, w, ok: ok)
        return ds.map(lambda p, w, ok: (p, audio.log_mel(w)), par)

    return _Plan(src, n_local, report, elements, False)


def _seed_of(host_seed: int, e):  # noqa: ANN001, ANN202
    """An int64 shuffle seed for epoch `e` (a tensor inside flat_map)."""
    tf = tensorflow()
    return tf.bitwise.bitwise_xor(tf.constant(host_seed, tf.int64), e * 1_000_003 + 17)


def _lms_host_shards(manifest: dict, p: int, n: int) -> tuple[list[str], int, bool]:
    """Shards this host reads, its records per epoch, and whether records are split instead."""
    shards = manifest["shards"]
    if len(shards) >= n:
        mine = shards[p::n]
        return [s["name"] for s in mine], sum(int(s["num_records"]) for s in mine), False
    total = sum(int(s["num_records"]) for s in shards)
    count = len(range(p, total, n))
    if count == 0:
        raise DataError(f"lms corpus has {total} records, fewer than {n} processes")
    return [s["name"] for s in shards], count, True


class _SubstitutingLoader:
    """numpy side of the files pipeline: (global pos, index) -> wav of the window for that pos.

    A file that fails to decode is replaced by the next files of the global sorted list (the
    same replacement on every host and every run, so resumption and the process-independent
    order stay exact) and reported once. The window is drawn from (seed, pos, attempt).
    """

    def __init__(self, paths, seconds, seed, report, spec):  # noqa: ANN001
        self.paths, self.seconds, self.report, self.spec = paths, seconds, report, spec
        self.seed = int(seed)

    def __call__(self, pos, i) -> np.ndarray:  # noqa: ANN001
        n = len(self.paths)
        for k in range(min(n, _MAX_SUBSTITUTES)):
            path = self.paths[(int(i) + k) % n]
            rng = np.random.default_rng((self.seed, int(pos), k))
            try:
                return audio_io.load_audio(path, max_seconds=self.seconds, rng=rng)
            except audio_io.AudioError as e:
                self.report.add(path, str(e))
        raise DataError(
            f"data source {self.spec!r}: {_MAX_SUBSTITUTES} files in a row failed to decode; "
            + self.report.summary()
        )


def _tfds_reader(config, src: Source, p: int, n: int):  # noqa: ANN001, ANN202
    """(dataset of examples for host p, its size, example -> (wav, ok) fn, report)."""
    tf = tensorflow()
    import tensorflow_datasets as tfds

    from msm_mae_jax.data import tfds_audio_folder  # noqa: F401 (registers 'audio_folder')

    data_dir = config.data.tfds_data_dir or None
    try:
        builder = tfds.builder(src.name, data_dir=data_dir)
    except Exception as e:  # tfds raises several types for unknown or unprepared datasets
        raise DataError(f"data source {src.spec!r}: cannot open TFDS dataset ({e})") from e
    key = config.data.tfds_audio_key
    features = builder.info.features
    if key not in features:
        raise DataError(
            f"data source {src.spec!r}: no audio key {key!r} (config.data.tfds_audio_key); "
            f"features: {sorted(features.keys())}"
        )
    sr = int(config.data.tfds_sample_rate) or int(getattr(features[key], "sample_rate", 0) or 0)
    if sr <= 0:
        raise DataError(
            f"data source {src.spec!r}: the sample rate of {key!r} is unknown; "
            "set config.data.tfds_sample_rate"
        )
    split = tfds.even_splits(src.split, n=n)[p] if n > 1 else src.split
    try:
        n_local = int(builder.info.splits[split].num_examples)
        base = builder.as_dataset(split=split, shuffle_files=False)
    except Exception as e:
        raise DataError(f"data source {src.spec!r}: cannot read split {src.split!r} ({e})") from e
    if n_local == 0:
        raise DataError(f"data source {src.spec!r}: split {src.split!r} is empty on host {p}")
    in_dtype = features[key].np_dtype
    scale = {np.int16: 1 / 32768, np.int32: 1 / 2**31, np.int64: 1 / 2**31}.get(
        np.dtype(in_dtype).type, 1.0
    )
    report = SkipReport(src.spec)

    def check(wav, pos) -> tuple[np.ndarray, bool]:  # noqa: ANN001
        wav = np.asarray(wav, np.float32)
        where = f"{src.spec} example at position {int(pos)}"
        if wav.size < audio.HOP_LENGTH * sr // audio.SAMPLE_RATE:
            report.add(where, f"{where}: too short ({wav.size} samples)")
            return np.zeros(1, np.float32), False
        if not np.isfinite(wav).all():
            report.add(where, f"{where}: NaN/Inf sample values")
            return np.zeros(1, np.float32), False
        return audio_io.resample(wav, sr, audio.SAMPLE_RATE), True

    def to_wav(ex, pos):  # noqa: ANN001, ANN202
        wav = tf.cast(ex[key], tf.float32) * scale
        if wav.shape.rank == 2:  # [S, C] -> mono
            wav = tf.reduce_mean(wav, axis=-1)
        wav, ok = tf.numpy_function(check, [wav, pos], (tf.float32, tf.bool), stateful=False)
        wav.set_shape([None])
        ok.set_shape([])
        return wav, ok

    return base, n_local, to_wav, report


# ---- public API ------------------------------------------------------------------------------


class BatchIterator:
    """Iterator of numpy batches; `skip_report` lists inputs skipped so far."""

    def __init__(self, ds, report: SkipReport, num_local: int, post=None):  # noqa: ANN001
        self._it = iter(ds.as_numpy_iterator())
        self._post = post
        self.skip_report = report
        self.num_local = num_local

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._it)
        return self._post(batch) if self._post else batch


def count_clips(config) -> int:  # noqa: ANN001
    """Training clips of the whole source (all hosts): steps per epoch = this // batch_size."""
    src = parse_source(config.data.source, config.data.file_pattern)
    if src.kind == "synthetic":
        return int(config.data.synthetic_clips)
    if src.kind == "files":
        return len(scan_files(src).paths)
    if src.kind == "lms":
        return sum(int(s["num_records"]) for s in read_manifest(src.path)["shards"])
    return _tfds_reader(config, src, 0, 1)[1]


def train_iterator(
    config,  # noqa: ANN001
    norm_stats: NormStats,
    *,
    process_index: int = 0,
    process_count: int = 1,
    start_step: int = 0,
) -> BatchIterator:
    """Endless normalised training batches {"lms": float32 [B_local, 1, 80, T]} for this host.

    B_local = config.batch_size // process_count, T = config.model.input_size[1]. Batch s is
    the same whether iteration started at 0 or at `start_step=s`. For `synthetic` and `files`
    host p's batch s is rows [p * B_local, (p + 1) * B_local) of the one-process batch s; for
    `tfds` and `lms` each host reads its own shard, so the order depends on process_count.
    """
    tf = tensorflow()
    _, frames = _check_input_size(config)
    b_local = _local_batch(config, process_count)
    plan = _plan(config, int(config.seed), process_index, process_count, b_local)
    # Global order: crops keyed by the global position only, as the element order is.
    crop_seed = _mix(config.seed, 2) if plan.global_order else _mix(config.seed, process_index, 2)
    mean, std = float(norm_stats.mean), float(norm_stats.std)

    def finish(pos, lms_FT):  # noqa: ANN001, ANN202
        lms, _ = _crop(lms_FT, pos, crop_seed, frames)
        return (lms - mean) / std

    ds = plan.elements(int(start_step) * b_local).map(finish, tf.data.AUTOTUNE)
    ds = ds.batch(b_local, drop_remainder=True)
    ds = ds.map(lambda x: {"lms": x[:, None]}).prefetch(int(config.data.prefetch))
    return BatchIterator(ds.with_options(_options()), plan.report, plan.num_local)


def compute_norm_stats(config, seed: int = 0) -> NormStats:  # noqa: ANN001
    """Mean/std of log-mel values over `config.data.norm_stats_crops` random training crops.

    Explicit `config.data.norm_std > 0` wins; `lms:` sources use the exact corpus statistics
    of their manifest. Zero padding of short clips is excluded from the statistics.
    """
    if float(config.data.norm_std) > 0:
        return NormStats(float(config.data.norm_mean), float(config.data.norm_std))
    src = parse_source(config.data.source, config.data.file_pattern)
    if src.kind == "lms":
        return NormStats.from_dict(read_manifest(src.path)["norm_stats"])
    tf = tensorflow()
    _, frames = _check_input_size(config)
    n = int(config.data.norm_stats_crops)
    if n <= 0:
        raise DataError(f"data.norm_stats_crops={n} must be positive (or set data.norm_std)")
    plan = _plan(config, _mix(seed, 7), 0, 1, 1)
    crop_seed = _mix(seed, 8)

    def crop(pos, lms_FT):  # noqa: ANN001, ANN202
        lms, valid = _crop(lms_FT, pos, crop_seed, frames)
        return lms, valid

    ds = plan.elements(0).map(crop, tf.data.AUTOTUNE).take(n).batch(64).prefetch(2)
    total, total_sq, count = 0.0, 0.0, 0
    for lms_BFT, valid_B in ds.with_options(_options()).as_numpy_iterator():
        mask_BT = np.arange(frames)[None, :] < valid_B[:, None]
        x = lms_BFT.astype(np.float64).transpose(0, 2, 1)[mask_BT]
        total += x.sum()
        total_sq += np.square(x).sum()
        count += x.size
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean * mean, 0.0))
    log.info("normalisation statistics over %d crops: mean %.4f std %.4f", n, mean, std)
    return NormStats(float(mean), float(std))


def eval_iterator(
    config,  # noqa: ANN001
    norm_stats: NormStats,
    *,
    batch_size: int | None = None,
    source: str | None = None,
    whole: bool = False,
    process_index: int = 0,
    process_count: int = 1,
) -> BatchIterator:
    """Evaluation batches in source order, the same number of batches on every host.

    Yields {"lms": float32 [B, 1, 80, T], "label": int32 [B], "mask": bool [B],
    "frames": int32 [B] (valid frames), "index": int64 [B]} where B = batch_size (default
    config.batch_size // process_count), host p holds clips p, p + P, ... and padding entries
    have mask False (zeros, label -1). Fixed crops: the first T = model.input_size[1] frames.
    `whole`: clips up to data.max_clip_seconds, T rounded up per batch to a multiple of
    input_size[1] (clip padding is zeros before normalisation, as in training).
    `source` defaults to data.eval_source, then data.source; the synthetic eval set is
    `data.synthetic_eval_clips` clips held out from the training clips.
    """
    tf = tensorflow()
    _, frames = _check_input_size(config)
    spec = source or config.data.eval_source or config.data.source
    src = parse_source(spec, config.data.file_pattern)
    b = int(batch_size or _local_batch(config, process_count))
    mean, std = float(norm_stats.mean), float(norm_stats.std)
    max_seconds = float(config.data.max_clip_seconds) if whole else None
    crop_seconds = audio.samples_for_frames(frames) / audio.SAMPLE_RATE
    read_seconds = max_seconds if whole else crop_seconds
    report = SkipReport(spec)
    par = tf.data.AUTOTUNE

    def load_indexed(n_total: int, load_np, name_of):  # noqa: ANN001, ANN202
        ids = list(range(process_index, n_total, process_count))
        per_host = math.ceil(n_total / process_count)
        n_pad = math.ceil(per_host / b) * b
        ids = np.asarray(ids + [-1] * (n_pad - len(ids)), np.int64)

        def fn(i):  # noqa: ANN001, ANN202
            i = int(i)
            if i < 0:
                return np.zeros(1, np.float32), np.int32(-1), False
            try:
                wav, label = load_np(i)
                return wav, np.int32(label), True
            except audio_io.AudioError as e:
                report.add(name_of(i), str(e))
                return np.zeros(1, np.float32), np.int32(-1), False

        def load(i):  # noqa: ANN001, ANN202
            wav, label, ok = tf.numpy_function(fn, [i], (tf.float32, tf.int32, tf.bool))
            wav.set_shape([None])
            return i, wav, label, ok

        return tf.data.Dataset.from_tensor_slices(ids).map(load, par)

    if src.kind == "synthetic":
        n0, n_eval = int(config.data.synthetic_clips), int(config.data.synthetic_eval_clips)
        data_seed, seconds = int(config.data.synthetic_seed), float(config.data.synthetic_seconds)
        ds = load_indexed(n_eval, lambda i: synthetic.make_clip(n0 + i, data_seed, seconds), str)
    elif src.kind == "files":
        fl = scan_files(src)
        report = fl.report
        ds = load_indexed(
            len(fl.paths),
            lambda i: (audio_io.load_audio(fl.paths[i], max_seconds=read_seconds), -1),
            lambda i: fl.paths[i],
        )
    else:
        ds, report = _record_eval(config, src, process_index, process_count, b)

    def finish(i, wav, label, ok):  # noqa: ANN001, ANN202
        lms = audio.log_mel(wav) if wav.dtype == tf.float32 and wav.shape.rank == 1 else wav
        if not whole:
            lms = lms[:, :frames]
        valid = tf.where(ok, tf.shape(lms)[1], 0)
        if not whole:
            lms = tf.pad(lms, [[0, 0], [0, frames - tf.shape(lms)[1]]])
            lms.set_shape([audio.N_MELS, frames])
        lms = tf.where(ok, (lms - mean) / std, tf.zeros_like(lms))
        return {"lms": lms, "label": label, "mask": ok, "frames": valid, "index": i}

    ds = ds.map(finish, par)
    if whole:
        ds = ds.padded_batch(
            b,
            padded_shapes={
                "lms": [audio.N_MELS, None],
                "label": [],
                "mask": [],
                "frames": [],
                "index": [],
            },
            padding_values={
                "lms": -mean / std,
                "label": -1,
                "mask": False,
                "frames": 0,
                "index": np.int64(-1),
            },
        )
    else:
        ds = ds.batch(b)
    ds = ds.prefetch(int(config.data.prefetch)).with_options(_options())

    def post(batch):  # noqa: ANN001, ANN202
        lms = batch["lms"]
        if whole:  # round T up to a multiple of the model's input frames
            t = max(frames, math.ceil(lms.shape[-1] / frames) * frames)
            lms = np.pad(lms, [(0, 0), (0, 0), (0, t - lms.shape[-1])], constant_values=-mean / std)
            lms = np.where(batch["mask"][:, None, None], lms, 0.0).astype(np.float32)
        batch["lms"] = lms[:, None]
        return batch

    n_local = 0
    return BatchIterator(ds, report, n_local, post)


def _record_eval(config, src: Source, p: int, n: int, b: int):  # noqa: ANN001, ANN202
    """(index, lms or wav, label, ok) of a record source in order, padded to equal batches."""
    tf = tensorflow()
    if src.kind == "lms":
        manifest = read_manifest(src.path)
        files = [os.path.join(src.path, s["name"]) for s in manifest["shards"]]
        total = sum(int(s["num_records"]) for s in manifest["shards"])
        recs = tf.data.TFRecordDataset(files)
        dtype = manifest["dtype"]
        report = SkipReport(src.spec)

        def load(i, r):  # noqa: ANN001, ANN202
            return i, parse_lms_record(r, dtype)[0], tf.constant(-1, tf.int32), tf.constant(True)
    else:
        base, total, to_wav, report = _tfds_reader(config, src, 0, 1)
        label_key = config.data.tfds_label_key
        recs = base

        def load(i, ex):  # noqa: ANN001, ANN202
            wav, ok = to_wav(ex, i)
            label = tf.cast(ex[label_key], tf.int32) if label_key in ex else tf.constant(-1)
            return i, wav, label, ok

    ds = tf.data.Dataset.zip(tf.data.Dataset.range(total), recs).shard(n, p).map(load)
    per_host = math.ceil(total / n)
    n_pad = math.ceil(per_host / b) * b - len(range(p, total, n))
    pad_lms = tf.zeros([audio.N_MELS, 1]) if src.kind == "lms" else tf.zeros([1])
    pad = tf.data.Dataset.range(n_pad).map(
        lambda _: (
            tf.constant(-1, tf.int64),
            pad_lms,
            tf.constant(-1, tf.int32),
            tf.constant(False),
        )
    )
    return ds.concatenate(pad), report
