"""What every data source is: the spec syntax, the `DataSource` interface, skipped-input reports.

Spec syntax (`config.data.source`, `open_source`):
- `synthetic`: the built-in labelled generator (`synthetic.py`), no files needed;
- `files:/dir[,glob,...]` or `files:/a/glob/**/*.flac`: audio files (recursive directory scan
  filtered by `config.data.file_pattern` / the globs after the comma);
- `tfds:name[:version]:split`: a TensorFlow Datasets audio dataset;
- `lms:/dir`: log-mel shards written by `python -m msm_mae_jax.prepare`.

A `DataSource` knows its example count, what each process reads, and gives the training
pipeline one process's batches of random crops: waveform windows (`crops.py`) of audio
sources, log-mels of `lms:` shards. `AudioSource`s (synthetic, files, tfds) also give
evaluation ordered access to their clips as 16 kHz waveforms.

Training order of `IndexedSource`s (synthetic, files, lms), independent of the number of processes:
epoch `e` is one permutation of all N clips drawn from `(seed, e)`; global position
`g = step * B + j` (B the global batch) holds clip `perm_e[g - e * N]` with `e = g // N`; host p
of P reads the contiguous slice `j in [p * B_local, (p + 1) * B_local)` of every global batch
and reads only those elements, one numpy call per batch. `start_step` resumes by computing
positions (no skip over audio).
Record sources (tfds; lms corpora of manifest version 1) cannot seek: each host reads its own
shard of the records, so their order depends on the process count (`global_order` False).
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from msm_mae_jax.core import fs
from msm_mae_jax.core.errors import ConfigError, DataError
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.data.tf_setup import plain, tensorflow

log = logging.getLogger(__name__)

SOURCE_KINDS = ("synthetic", "files", "tfds", "lms")
BIG = 2**62  # "forever" for Dataset.range


# ---- specs -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """A parsed data source spec."""

    kind: str  # one of SOURCE_KINDS
    spec: str
    path: str = ""  # files: dir, file or glob; lms: dir
    patterns: tuple[str, ...] = ()  # files under a dir: globs matched against relative paths
    name: str = ""  # tfds: 'name', 'name/config' or 'name:1.0.0'
    split: str = ""  # tfds split, slicing allowed ('train[:80%]')


_TFDS_SPEC = re.compile(r"^(?P<name>[^:\[\]]+?(?::\d+(?:\.\d+)*)?)(?::(?P<split>.+))?$")


def parse_spec(spec: str, file_pattern: str = "*") -> SourceSpec:
    """'synthetic' | 'files:/dir[,glob...]' | 'tfds:name[:version]:split' | 'lms:/dir'."""
    spec = str(spec).strip()
    kind, _, rest = spec.partition(":")
    if kind == "synthetic" and not rest:
        return SourceSpec("synthetic", spec)
    if kind == "files" and rest:
        path, *globs = [p.strip() for p in rest.split(",")]
        if not globs:
            globs = [g.strip() for g in file_pattern.split(",") if g.strip()] or ["*"]
        return SourceSpec("files", spec, path=os.path.expanduser(path), patterns=tuple(globs))
    if kind == "lms" and rest:
        return SourceSpec("lms", spec, path=os.path.expanduser(rest))
    if kind == "tfds" and rest:
        m = _TFDS_SPEC.match(rest)
        if m:
            return SourceSpec("tfds", spec, name=m["name"], split=m["split"] or "train")
    raise DataError(
        f"config.data.source={spec!r} is not a data source; expected 'synthetic', "
        "'files:/dir/or/glob', 'tfds:name:split' or 'lms:/dir'"
    )


def check_sources(data: Any) -> None:
    """`config.data`'s sources (`source`, `eval_source`): their kind and that their paths
    exist, without importing jax or TF; DataError naming the key otherwise (ConfigError: the
    log-mel on the device asked of log-mel shards)."""
    for key in ("source", "eval_source"):
        spec = str(data.get(key, "") or "")
        if not spec:
            continue
        try:
            source = parse_spec(spec, data.file_pattern)
        except DataError as e:
            kind = spec.partition(":")[0]
            close = difflib.get_close_matches(kind, SOURCE_KINDS, n=1)
            hint = f" (did you mean {close[0]}:?)" if close and close[0] != kind else ""
            raise DataError(f"{str(e).replace('data.source', f'data.{key}')}{hint}") from None
        if key == "source" and source.kind == "lms" and data.get("logmel_on_device"):
            raise ConfigError(
                f"config.data.logmel_on_device needs an audio source (files, synthetic, tfds); "
                f"{spec!r} holds log-mels already (set data.logmel_on_device=False)"
            )
        if source.kind in ("files", "lms"):
            root = source.path
            if glob.has_magic(root):  # the folder the glob starts from
                root = root.split("*")[0].split("?")[0].split("[")[0]
                root = fs.dirname(root) if not root.endswith(("/", os.sep)) else root
            if not fs.exists(root or "."):
                raise DataError(
                    f"config.data.{key}={spec!r}: {root} does not exist (relative paths "
                    f"start at {os.getcwd()})"
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


# ---- the interface -----------------------------------------------------------------------------


class DataSource:
    """A source of training clips. Subclasses set `spec` and `report` in their constructor."""

    spec: str
    report: SkipReport
    # True: element positions are global and the order does not depend on the process count.
    global_order: bool = False
    # What `batches` yields: "wav" (waveform windows of crops, `crops.py`) or "lms" (log-mels).
    yields: str = "wav"

    @classmethod
    def from_spec(cls, spec: SourceSpec, data_config: Any) -> DataSource:
        """The source of a parsed spec, set up from the `config.data` keys of its kind."""
        raise NotImplementedError

    @property
    def total_examples(self) -> int:
        """Examples of the whole source (all processes)."""
        raise NotImplementedError

    def num_examples_per_process(self, process_count: int) -> list[int]:
        """Elements of one epoch each process reads (global-order sources: rounded up)."""
        raise NotImplementedError

    def known_norm_stats(self) -> NormStats | None:
        """Exact log-mel statistics the source holds without reading its clips, else None."""
        return None

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
        """Endless tf.data Dataset of one process's batches of random `frames`-frame crops.

        Each is {"frames": int32 [B] valid frames of each crop, and "wav": float32 [B, L]
        (`yields` "wav": crop windows, L = crops.window_samples(frames)) or "lms": float32
        [B, 80, frames] (`yields` "lms": log-mels, zero after the valid frames)}, B =
        local_batch. The first batch is batch `start_step`; batch s depends only on (seed, s,
        process_index, process_count) (global-order sources: on (seed, s) and the row range).
        """
        raise NotImplementedError


class AudioSource(DataSource):
    """A source of audio clips with ordered access for evaluation (clip i = index i)."""

    def __len__(self) -> int:
        return self.total_examples

    def name(self, i: int) -> str:
        """A human-readable name of clip i (path, dataset and index)."""
        raise NotImplementedError

    def iterate(
        self, indices: Sequence[int], max_seconds: float | None = None
    ) -> Iterator[np.ndarray]:
        """16 kHz mono float32 waveforms of the given clips, each cropped to its first
        `max_seconds`; raises `audio_io.AudioError` naming a clip that cannot be used."""
        raise NotImplementedError

    def durations(self) -> np.ndarray | None:
        """Seconds of every clip, or None when only decoding everything would tell."""
        return None

    def identity(self) -> str:
        """A string that changes when the clips change (a key for caches of embeddings)."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class BatchLoader:
    """The numpy side of an `IndexedSource`: `load(positions [B], clip indices [B])` ->
    (x [B, *row_shape] of `dtype`, valid frames int32 [B]); `finish` (tf, optional) turns x
    into the batch's `key` entry ("wav" or "lms")."""

    load: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
    key: str
    dtype: Any  # numpy dtype of x
    row_shape: tuple[int, ...]
    finish: Callable[[Any], Any] | None = None


class IndexedSource(DataSource):
    """Clips read by index, in the process-independent global order (see the module doc):
    one numpy call per batch (`batch_loader`) reads the crops of all its rows."""

    global_order = True

    def num_examples_per_process(self, process_count: int) -> list[int]:
        return [-(-self.total_examples // process_count)] * process_count

    def batch_loader(self, seed: int, frames: int) -> BatchLoader:
        """The loader of crops drawn with `seed` (crop position = `crops.uniform(seed, g)`)."""
        raise NotImplementedError

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
        stream = global_index_stream(
            self.total_examples,
            mix_seed(seed, 1),
            start_step * local_batch,
            process_index,
            local_batch,
            local_batch * process_count,
        )
        pairs = stream.batch(local_batch, drop_remainder=True)
        return self._load(pairs, mix_seed(seed, 2), frames, local_batch)

    def crops_at(
        self, *, crop_seed: int, frames: int, positions: Any, indices: Any, batch: int
    ) -> Any:
        """Finite tf.data Dataset of the crops of clips `indices[k]` at positions
        `positions[k]`, in order, `batch` at a time (the last batch may be shorter), in the
        format of `batches`; crop k starts at `crops.crop_start(crops.uniform(crop_seed,
        positions[k]), clip frames, frames)`."""
        tf = tensorflow()
        pos = np.asarray(positions, np.int64)
        idx = np.asarray(indices, np.int64)
        pairs = tf.data.Dataset.from_tensor_slices((pos, idx)).batch(int(batch))
        return self._load(pairs, crop_seed, frames, None)

    def _load(self, pairs: Any, crop_seed: int, frames: int, rows: int | None) -> Any:
        """Batches of (positions, clip indices) -> batches of their crops (`batch_loader`)."""
        tf = tensorflow()
        loader = self.batch_loader(crop_seed, frames)
        out_dtype = tf.as_dtype(loader.dtype)

        def load(g, i):  # noqa: ANN001, ANN202
            x, n = tf.numpy_function(loader.load, [g, i], (out_dtype, tf.int32), stateful=False)
            x.set_shape([rows, *loader.row_shape])
            n.set_shape([rows])
            return {loader.key: loader.finish(x) if loader.finish else x, "frames": n}

        return pairs.map(plain(load), tf.data.AUTOTUNE)


# ---- seeds and orders --------------------------------------------------------------------------


def mix_seed(*xs: int) -> int:
    """A 62-bit seed from integers (stable across runs and processes)."""
    h = np.random.SeedSequence([int(x) & 0xFFFFFFFF for x in xs]).generate_state(2, np.uint32)
    return int((int(h[0]) << 30) ^ int(h[1])) & (2**62 - 1)


def epoch_seed(host_seed: int, e: Any) -> Any:
    """An int64 shuffle seed for epoch `e` (a tensor inside flat_map)."""
    tf = tensorflow()
    return tf.bitwise.bitwise_xor(tf.constant(host_seed, tf.int64), e * 1_000_003 + 17)


def global_index_stream(n: int, seed: int, start_q: int, p: int, b_local: int, b: int) -> Any:
    """Dataset of (g, index) at host p's local positions q >= start_q of the global order.

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

    return tf.data.Dataset.range(g_of(start_q) // n, BIG).flat_map(plain(epoch))
