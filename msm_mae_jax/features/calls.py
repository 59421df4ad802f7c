"""Pieces of clips through the jitted feature function, in calls of a bounded size.

A piece (`Row`) is a waveform window of whole encoder units (`chunking`) or a slice of a
log-mel, with the number of its real frames and the time step where its features go in its
clip. Rows are packed in calls of at most `rows_per_call` rows; a call runs the log-mel (for
waveforms), the normalisation, the encoder and the frame layout on the device, and hands
each row's features to a sink. The units of a call are its longest row's, rounded up to a
bucket (`bucket_size`), the rows to a bucket too, so any stream of lengths compiles a bounded
number of functions; memory is that of one call, whatever the clips' lengths.

'batch' normalisation (the statistics of all real frames of the call's clips): when every
row fits in one call the statistics are computed inside it (the official HEAR wrapper's
semantics, unchanged); otherwise a first pass computes each call's log-mel count, mean and
squared deviations, merged exactly in float64 (`NormAccumulator`), and the second pass
normalises with the result: the same statistics, computed in pieces.

Shape letters: B rows, S samples, F mel bins, T frames or time steps, D width, L layers.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from msm_mae_jax.data import audio
from msm_mae_jax.data.normalization import NormAccumulator
from msm_mae_jax.features.chunking import window_samples
from msm_mae_jax.model.config import ModelConfig
from msm_mae_jax.model.frames import encode_frames, encode_frames_grouped
from msm_mae_jax.model.mae import Encoder

MIN_BATCH_STD = 1e-5  # a silent batch has std 0: keep the normalised values finite (zeros)
UNITS_PER_DEVICE = 128  # encoder units per call and local device (rows x units)
# On a CPU the encoder runs on this many units at a time, real units only
# (`frames.encode_frames_grouped`): ViT-B's activations for 8 units (528 tokens) stay in the
# caches, those of a whole call do not (one core: 0.143 CPU-s per unit in groups of 8 or 16,
# 0.158 in calls of 32 units, 0.193 in calls of 96).
CPU_UNITS_PER_GROUP = 8


def bucket_size(n: int) -> int:
    """Smallest bucket >= n among 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (2^k and 3 * 2^k).

    Two buckets per octave: at most 2 compilations per doubling of the length, and at most
    ~1.5x (on average ~1.2x) padded work, where powers of two alone cost up to 2x (a 10 s
    clip is 5 units: 8 with powers of two, 6 here).
    """
    if n < 1:
        raise ValueError(f"bucket_size needs n >= 1, got {n}")
    p = 1 << (int(n) - 1).bit_length()  # power of two >= n
    return 3 * p // 4 if p >= 4 and 3 * p // 4 >= n else p


def bucket_at_most(n: int) -> int:
    """Largest bucket (see `bucket_size`) <= n, for n >= 1."""
    best, p = 1, 1
    while p <= n:
        best = max(p, 3 * p // 2) if p >= 2 and 3 * p // 2 <= n else p
        p *= 2
    return best


@dataclasses.dataclass
class Row:
    """A piece of clip `clip`: x is a waveform window [W] (of whole units) or a log-mel
    [F, T]; `frames` of its frames are real; its features start at time step `step0`."""

    clip: int
    step0: int
    x: np.ndarray
    frames: int


def pack(rows: Iterable[Row], rows_per_call: int) -> Iterator[list[Row]]:
    group: list[Row] = []
    for row in rows:
        group.append(row)
        if len(group) == rows_per_call:
            yield group
            group = []
    if group:
        yield group


def stack(group: list[Row], from_wav: bool, unit_frames: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(x [B, ...] zero-padded to the call's units, real frames [B], units) of a call."""
    units = bucket_size(max(-(-r.frames // unit_frames) for r in group))
    if from_wav:
        x = np.zeros((len(group), window_samples(units * unit_frames)), np.float32)
        for b, r in enumerate(group):
            x[b, : r.x.shape[0]] = r.x
    else:
        x = np.zeros((len(group), group[0].x.shape[0], units * unit_frames), np.float32)
        for b, r in enumerate(group):
            x[b, :, : r.x.shape[1]] = r.x
    return x, np.array([r.frames for r in group], np.int32), units


def check_params(config: ModelConfig, params: Any) -> None:
    """Parameter names and shapes must be the ones `config` builds; ValueError otherwise."""
    lms_B1FT = jnp.zeros((1, 1, *config.input_size), jnp.float32)
    init = lambda: nn.unbox(Encoder(config).init(jax.random.key(0), lms_B1FT))  # noqa: E731
    shapes = lambda tree: {  # noqa: E731
        jax.tree_util.keystr(k): tuple(np.shape(v))
        for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    }
    want, got = shapes(jax.eval_shape(init)["params"]), shapes(params)
    bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    if bad:
        k = bad[0]
        raise ValueError(
            f"encoder parameters do not match the model config ({config.run_name_prefix}, "
            f"embed_dim={config.embed_dim}, depth={config.depth}): {len(bad)} mismatch(es), "
            f"e.g. {k}: expected {want.get(k, 'absent')}, got {got.get(k, 'absent')}"
        )


class Executor:
    """The encoder parameters on the local devices, and the calls that run rows on them."""

    def __init__(self, config: ModelConfig, params: Any):
        self.config, self.params = config, params
        self.devices = list(jax.local_devices())
        self.mesh = Mesh(np.array(self.devices), ("batch",))
        self.params_sharded = None  # replicated over the mesh on the first sharded call
        # Unsharded calls on a CPU encode groups of real units (`CPU_UNITS_PER_GROUP`).
        self.group = CPU_UNITS_PER_GROUP if self.devices[0].platform == "cpu" else None

    def run(
        self,
        sources: Sequence[Callable[[], Iterable[tuple[np.ndarray, int]]]],
        frames_B: Sequence[int] | None,
        *,
        from_wav: bool,
        stats: tuple[bool, float, float],
        return_layers: bool,
        sink: Callable[[int, int, np.ndarray], None],
        chunk_units: int,
        units_per_call: int,
    ) -> None:
        """Every piece of every source (`source()` -> (x, real frames) of `chunk_units`
        units each) through the device; `sink(clip, step0, feats [(L,) T, F'*D])` gets each
        piece's features of its real time steps. frames_B: each clip's frames when known
        (None: streams). stats: (batch statistics, mean, std). Sources are read twice for
        'batch' statistics over more than one call."""
        batch, mean, std = stats
        fu, pw = self.config.input_size[1], self.config.patch_size[1]
        n = chunk_units * fu
        cap = chunk_units
        if frames_B is not None:
            cap = bucket_size(min(cap, -(-max(frames_B) // fu)))
        rows_per_call = bucket_at_most(max(1, units_per_call // cap))
        one_call = frames_B is not None and sum(-(-f // n) for f in frames_B) <= rows_per_call

        def rows() -> Iterator[Row]:
            for i, source in enumerate(sources):
                for k, (x, real) in enumerate(source()):
                    yield Row(i, k * (n // pw), x, real)

        if batch and not one_call:
            acc = NormAccumulator()
            for group in pack(rows(), rows_per_call):
                x, frames, units = stack(group, from_wav, fu)
                _, x, frames, _ = self._on_devices(x, frames)
                out = stats_jit(x, frames, fu=fu, units=units, from_wav=from_wav)
                acc.merge(NormAccumulator(*(float(v) for v in out)))
            mean = acc.mean
            std = max(math.sqrt(max(acc.m2, 0.0) / max(acc.count - 1, 1)), MIN_BATCH_STD)
            batch = False
        for group in pack(rows(), rows_per_call):
            x, frames, units = stack(group, from_wav, fu)
            params, x, frames, sharded = self._on_devices(x, frames)
            out = features_jit(
                params,
                x,
                frames,
                np.float32(mean),
                np.float32(std),
                config=self.config,
                units=units,
                from_wav=from_wav,
                batch_stats=batch,
                return_layers=return_layers,
                group=self.group if not sharded else None,
            )
            out = np.asarray(out)
            for i, r in enumerate(group):
                sink(r.clip, r.step0, out[..., i, : -(-r.frames // pw), :])

    def _on_devices(self, x: np.ndarray, frames_B: np.ndarray) -> tuple[Any, Any, np.ndarray, bool]:
        """(params, x, frames, sharded) with the rows padded to a bucket (padding rows: 0
        frames), sharded over the local devices when there are at least as many rows."""
        B = x.shape[0]
        n_dev = len(self.devices)
        b_bucket = bucket_size(B)
        sharded = n_dev > 1 and B >= n_dev
        if sharded:
            b_bucket = -(-b_bucket // n_dev) * n_dev
        x = np.pad(x, ((0, b_bucket - B),) + ((0, 0),) * (x.ndim - 1))
        frames_B = np.pad(np.asarray(frames_B, np.int32), (0, b_bucket - B))
        if not sharded:
            return self.params, x, frames_B, False
        if self.params_sharded is None:
            self.params_sharded = jax.device_put(self.params, NamedSharding(self.mesh, P()))
        x = jax.device_put(x, NamedSharding(self.mesh, P("batch")))
        return self.params_sharded, x, frames_B, True


# ---- device side (module level: compiled code is shared by every Runtime of one config) ----
TRACE_COUNTS: collections.Counter = collections.Counter()  # ModelConfig -> traces so far


def _log_mel(x, frames_B, units: int, fu: int, from_wav: bool):
    """Log-mel [B, F, units * fu] and the mask of real frames [B, 1, T]."""
    lms_BFT = audio.log_mel_jax(x, center=False) if from_wav else x
    T = units * fu
    valid_B1T = jnp.arange(T)[None, None, :] < frames_B[:, None, None]
    return lms_BFT[..., :T], valid_B1T


def _moments(lms_BFT, valid_B1T, frames_B):
    """(count, mean, sum of squared deviations) of the real log-mel values."""
    count = jnp.sum(frames_B.astype(jnp.float32)) * lms_BFT.shape[1]
    mean = jnp.sum(jnp.where(valid_B1T, lms_BFT, 0.0)) / jnp.maximum(count, 1.0)
    m2 = jnp.sum(jnp.where(valid_B1T, jnp.square(lms_BFT - mean), 0.0))
    return count, mean, m2


def _features(
    params,
    x,
    frames_B,
    mean,
    std,
    *,
    config: ModelConfig,
    units: int,
    from_wav: bool,
    batch_stats: bool,
    return_layers: bool,
    group: int | None = None,
):
    """x: waveform windows [B, W] (from_wav) or raw log-mels [B, F, units*fu]; frames_B: the
    real frames of each row (0 for padding rows); mean/std: used unless batch_stats; group:
    encode the real units that many at a time (`encode_frames_grouped`), else all at once."""
    TRACE_COUNTS[config] += 1  # Python side effect: runs once per trace, not per call
    lms_BFT, valid_B1T = _log_mel(x, frames_B, units, config.input_size[1], from_wav)
    if batch_stats:  # statistics of the real rows and frames only
        count, mean, m2 = _moments(lms_BFT, valid_B1T, frames_B)
        std = jnp.sqrt(m2 / jnp.maximum(count - 1.0, 1.0))  # unbiased, as torch
        std = jnp.maximum(std, MIN_BATCH_STD)
    # Normalise, then zero the padding: the official code pads the normalised log-mel.
    x_BFT = jnp.where(valid_B1T, (lms_BFT - mean) / std, 0.0)
    if group:
        return encode_frames_grouped(params, x_BFT, frames_B, config, group, return_layers)
    return encode_frames(params, x_BFT, config, return_layers)


features_jit = jax.jit(
    _features,
    static_argnames=("config", "units", "from_wav", "batch_stats", "return_layers", "group"),
)


def _stats(x, frames_B, *, fu: int, units: int, from_wav: bool):
    return _moments(*_log_mel(x, frames_B, units, fu, from_wav), frames_B)


stats_jit = jax.jit(_stats, static_argnames=("fu", "units", "from_wav"))
