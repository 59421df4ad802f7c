"""Frame-level and clip-level features from a trained MSM-MAE encoder.

    rt = Runtime.load("runs/base")               # workdir, exported dir or converted weights
    feats_BTD = rt.encode(wav_BS)                 # [B, T, F'*D], T = ceil(frames / pw)
    clip_BD = rt.scene_embeddings(wav_BS)         # mean over time
    feats = rt.encode([wav_a, wav_b])             # clips of any lengths: a list of [T_i, F'*D]

What `encode` computes, as the official feature extractor (nttcslab/msm-mae `runtime.py`):
log-mel of the 16 kHz waveform (`audio.log_mel_jax`, on device) -> normalisation -> the
frames are cut into consecutive units of the model's input width (208 frames for 80x208);
the tail is zero-padded **after** normalisation (the official code normalises the log-mel of
the whole clip and pads the normalised tensor with zeros) -> encoder without masking, final
LayerNorm -> [CLS] dropped -> per unit '(f t) d -> t (f d)' -> units concatenated along time
-> the outputs of padded frames removed, leaving T = ceil(frames / pw) time steps (one per
patch column: 160 ms for 16-frame patches at hop 10 ms).

Speed: one compiled function per (batch bucket, unit bucket, options). The number of units
is padded up to a power of two and the batch up to a power of two (a multiple of the number
of local devices when it is at least that large, then sharded along a 1-D device mesh), so a
stream of clips of varying length compiles O(log) functions instead of one per length. The
waveform is reflect-extended on the host to the bucket's length before the on-device log-mel,
which makes every real frame identical to the log-mel of the unpadded clip.

Shape letters: B batch, S samples, F mel bins, T frames or time steps, U units, D width,
L layers.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from msm_mae_jax.data import audio
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.features.clips import (  # noqa: F401 (MIN/MAX_SAMPLE_RATE: public here too)
    LIST,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    SINGLE,
    input_lengths,
    is_clip_list,
    prepare_clips,
    to_numpy,
)
from msm_mae_jax.model.config import ModelConfig
from msm_mae_jax.model.frames import encode_frames
from msm_mae_jax.model.mae import Encoder

_MIN_BATCH_STD = 1e-5  # a silent batch has std 0: keep the normalised values finite (zeros)

Normalization = str | tuple[float, float] | NormStats | None


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


def patch_timestamps_ms(
    num_samples: int, sample_rate: float, num_steps: int, model_config: ModelConfig
) -> np.ndarray:
    """Timestamps [T] in milliseconds of the T feature time steps of a clip of `num_samples`.

    Step t covers log-mel frames [t*pw, (t+1)*pw), i.e. nominally centred at
    (t + 0.5) * pw * hop / sr. The last column is usually only partly audio (the rest is
    padding), and its nominal centre can pass the clip's end (1.98 s: 2000 ms); HEAR requires
    evenly spaced timestamps that do not pass the end. So the spacing stays exactly the patch
    period (160 ms) and the offset of the first step is the nominal half period, lowered just
    enough to keep the last timestamp inside the clip (an offset in [0, 80] ms).
    """
    period_ms = model_config.patch_size[1] * audio.HOP_LENGTH / audio.SAMPLE_RATE * 1000.0
    duration_ms = num_samples / sample_rate * 1000.0
    offset = min(period_ms / 2, max(0.0, duration_ms - (num_steps - 1) * period_ms))
    return (offset + period_ms * np.arange(num_steps)).astype(np.float32)


class Runtime:
    """An MSM-MAE encoder ready to turn audio (or log-mels) into features."""

    def __init__(
        self,
        model_config: ModelConfig,
        encoder_params: Any,
        norm_stats: NormStats,
        meta: dict | None = None,
    ):
        self.model_config = model_config
        self.norm_stats = norm_stats
        self.meta = dict(meta or {})
        # Official weights converted with --per-batch-norm carry placeholder statistics.
        per_batch = self.meta.get("normalization") == "per_batch"
        self.default_normalization = "batch" if per_batch else "dataset"
        self._encoder = Encoder(model_config)
        self._params = jax.tree.map(jnp.asarray, nn.unbox(encoder_params))
        self._check_params()
        self._devices = list(jax.local_devices())
        self._mesh = Mesh(np.array(self._devices), ("batch",))
        self._params_sharded = None  # replicated over the mesh on first sharded call

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, step: int | None = None) -> Runtime:
        """From a training workdir (latest or given checkpoint step), an exported model dir
        (`python -m msm_mae_jax.export`) or converted official weights (`msm_mae_jax.convert`)."""
        from msm_mae_jax.model import artifact

        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such model directory or training workdir")
        if artifact.is_model_dir(path):
            cfg, params, stats, meta = artifact.load_model_dir(path)
            return cls(cfg, params, stats, meta)
        if os.path.isdir(os.path.join(path, "checkpoints")):
            from msm_mae_jax.train import checkpoints

            cfg, params, stats = checkpoints.load_encoder_from_workdir(path, step=step)
            return cls(cfg, params, stats, {"source": os.path.abspath(path), "step": step})
        hint = (
            (
                " (official PyTorch weights: convert them first with "
                "`python -m msm_mae_jax.convert SRC OUT_DIR`)"
            )
            if path.endswith(".pth")
            else ""
        )
        raise ValueError(
            f"{path}: neither an msm_mae_jax model directory (no {artifact.META_FILE}) nor a "
            f"training workdir (no checkpoints/){hint}"
        )

    def _check_params(self) -> None:
        """Parameter names and shapes must be the ones this model config builds."""
        c = self.model_config
        lms_B1FT = jnp.zeros((1, 1, *c.input_size), jnp.float32)
        want = jax.eval_shape(lambda: nn.unbox(self._encoder.init(jax.random.key(0), lms_B1FT)))
        want = {
            jax.tree_util.keystr(k): tuple(v.shape)
            for k, v in jax.tree_util.tree_flatten_with_path(want["params"])[0]
        }
        got = {
            jax.tree_util.keystr(k): tuple(np.shape(v))
            for k, v in jax.tree_util.tree_flatten_with_path(self._params)[0]
        }
        bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        if bad:
            k = bad[0]
            raise ValueError(
                f"encoder parameters do not match the model config ({c.run_name_prefix}, "
                f"embed_dim={c.embed_dim}, depth={c.depth}): {len(bad)} mismatch(es), e.g. "
                f"{k}: expected {want.get(k, 'absent')}, got {got.get(k, 'absent')}"
            )

    @property
    def num_traces(self) -> int:
        """How often feature functions of this model config were traced (= compiled)."""
        return TRACE_COUNTS[self.model_config]

    # ---- shapes ---------------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        """Width of a frame feature: F' * D (3840 for ViT-B with 80 mels, 16-high patches)."""
        return self.model_config.feature_dim

    @property
    def unit_frames(self) -> int:
        return self.model_config.input_size[1]

    def num_steps(self, frames: int) -> int:
        """Feature time steps for a log-mel of `frames` frames: ceil(frames / pw)."""
        return -(-int(frames) // self.model_config.patch_size[1])

    # ---- public API -----------------------------------------------------------------------
    def encode(
        self,
        audio_BS: Any,
        sample_rate: float = audio.SAMPLE_RATE,
        normalization: Normalization = "default",
        return_layers: bool = False,
    ) -> np.ndarray | list[np.ndarray]:
        """Waveforms [B, S] (or [S]) -> features float32 [B, T, F'*D] (or [T, F'*D]).

        A list (or tuple) of waveforms [S_i] of any lengths -> a list of [T_i, F'*D], each
        equal to encoding that clip alone; the clips run as one batch padded to the longest
        (group clips of similar length to save work: `features.embed` does).
        normalization: 'default' (the model's own choice: 'dataset', or 'batch' for official
        weights converted with per-batch normalisation), 'dataset' (the statistics stored with
        the model), 'batch' (mean and unbiased std of this call's log-mels, real frames only,
        as the official HEAR wrapper), or an explicit (mean, std) / NormStats.
        return_layers=True gives every block's output (the last one normalised) instead:
        [L, B, T, F'*D] (a list of [L, T_i, F'*D] for a list).
        """
        clips, layout = prepare_clips(audio_BS, sample_rate)
        frames_B = [audio.num_frames(len(c)) for c in clips]
        units = bucket_size(-(-max(frames_B) // self.unit_frames))
        # Reflect-extend to the bucket's length: the real frames of a clip then only see what
        # the log-mel of the unpadded clip sees (its own reflect padding of 200 samples).
        s_bucket = units * self.unit_frames * audio.HOP_LENGTH + audio.N_FFT // 2
        if layout == LIST:
            wav_BS = np.stack([np.pad(c, (0, s_bucket - len(c)), mode="reflect") for c in clips])
        else:
            wav_BS = np.stack(clips)
            wav_BS = np.pad(wav_BS, ((0, 0), (0, s_bucket - wav_BS.shape[1])), mode="reflect")
        out = self._run(True, wav_BS, frames_B, units, normalization, return_layers)
        if layout == LIST:  # copies: a view would keep the whole padded batch alive
            return [out[..., i, : self.num_steps(f), :].copy() for i, f in enumerate(frames_B)]
        return out[..., 0, :, :] if layout == SINGLE else out

    def encode_lms(
        self, lms_BFT: Any, normalization: Normalization = "default", return_layers: bool = False
    ) -> np.ndarray:
        """Log-mels [B, F, T] (also [B, 1, F, T] or [F, T]) -> the same features as `encode`.

        normalization as `encode`, plus None for log-mels that are already normalised.
        """
        lms = to_numpy(lms_BFT)
        F = self.model_config.input_size[0]
        squeeze = lms.ndim == 2
        if lms.ndim == 4 and lms.shape[1] == 1:
            lms = lms[:, 0]
        elif squeeze:
            lms = lms[None]
        if lms.ndim != 3 or lms.shape[1] != F or lms.shape[2] == 0 or lms.shape[0] == 0:
            raise ValueError(
                f"log-mel input has shape {tuple(to_numpy(lms_BFT).shape)}; "
                f"expected [B, {F}, T] (or [B, 1, {F}, T] or [{F}, T]), T >= 1"
            )
        lms = np.asarray(lms, np.float32)
        if not np.all(np.isfinite(lms)):
            raise ValueError("log-mel input contains NaN or Inf values")
        frames = lms.shape[2]
        units = bucket_size(-(-frames // self.unit_frames))
        lms = np.pad(lms, ((0, 0), (0, 0), (0, units * self.unit_frames - frames)))
        out = self._run(False, lms, [frames] * len(lms), units, normalization, return_layers)
        return out[..., 0, :, :] if squeeze else out

    def scene_embeddings(
        self,
        audio_BS: Any,
        sample_rate: float = audio.SAMPLE_RATE,
        normalization: Normalization = "default",
    ) -> np.ndarray:
        """Clip embeddings float32 [B, F'*D] ([F'*D] for one waveform [S], [N, F'*D] for a
        list of N clips): the frame features averaged over time."""
        feats = self.encode(audio_BS, sample_rate, normalization)
        if is_clip_list(audio_BS):
            return np.stack([f.mean(axis=0) for f in feats])
        return feats.mean(axis=-2)

    def timestamp_embeddings(
        self,
        audio_BS: Any,
        sample_rate: float = audio.SAMPLE_RATE,
        normalization: Normalization = "default",
    ) -> tuple[np.ndarray, np.ndarray] | tuple[list[np.ndarray], list[np.ndarray]]:
        """(features float32 [B, T, F'*D], timestamps float32 [B, T] in milliseconds); for a
        list of clips, (list of [T_i, F'*D], list of [T_i]).

        Timestamps are evenly spaced by the patch period (160 ms) and lie inside the clip;
        see `patch_timestamps_ms`.
        """
        feats = self.encode(audio_BS, sample_rate, normalization)
        lengths = input_lengths(audio_BS)
        if is_clip_list(audio_BS):
            ts = [
                patch_timestamps_ms(n, sample_rate, f.shape[0], self.model_config)
                for n, f in zip(lengths, feats, strict=True)
            ]
            return feats, ts
        ts_T = patch_timestamps_ms(lengths[0], sample_rate, feats.shape[-2], self.model_config)
        return feats, np.broadcast_to(ts_T, feats.shape[:-1]).copy()

    # ---- host side ------------------------------------------------------------------------
    def resolve_normalization(self, normalization: Normalization) -> tuple[bool, float, float]:
        """Checks a `normalization` argument -> (use the batch's statistics, mean, std)."""
        if isinstance(normalization, str):
            if normalization == "default":
                normalization = self.default_normalization
            if normalization == "dataset":
                if self.default_normalization == "batch":
                    raise ValueError(
                        "normalization='dataset': this model stores no dataset statistics "
                        f"(source: {self.meta.get('source', '?')}, converted for per-batch "
                        "normalisation); use 'batch' or an explicit (mean, std)"
                    )
                return False, self.norm_stats.mean, self.norm_stats.std
            if normalization == "batch":
                return True, 0.0, 1.0
            raise ValueError(
                f"normalization={normalization!r}; expected 'default', 'dataset', 'batch', "
                "(mean, std), a NormStats or None"
            )
        if normalization is None:
            return False, 0.0, 1.0
        if isinstance(normalization, NormStats):
            return False, normalization.mean, normalization.std
        if isinstance(normalization, Sequence) and len(normalization) == 2:
            stats = NormStats(float(normalization[0]), float(normalization[1]))  # validates
            return False, stats.mean, stats.std
        raise ValueError(
            f"normalization={normalization!r}; expected 'default', 'dataset', 'batch', "
            "(mean, std), a NormStats or None"
        )

    def _run(
        self,
        from_wav: bool,
        x: np.ndarray,
        frames_B: Sequence[int],
        units: int,
        normalization: Normalization,
        return_layers: bool,
    ) -> np.ndarray:
        """x: [B, ...] padded to `units`; frames_B: the real frames of each row.
        -> [(L,) B, max T, F'*D] (rows past their own T hold padding outputs)."""
        batch_stats, mean, std = self.resolve_normalization(normalization)
        B = x.shape[0]
        n_dev = len(self._devices)
        b_bucket = bucket_size(B)
        sharded = n_dev > 1 and B >= n_dev
        if sharded:
            b_bucket = -(-b_bucket // n_dev) * n_dev
        x = np.pad(x, ((0, b_bucket - B),) + ((0, 0),) * (x.ndim - 1))
        frames_B = np.pad(np.asarray(frames_B, np.int32), (0, b_bucket - B))  # pad rows: 0
        if sharded:
            if self._params_sharded is None:
                self._params_sharded = jax.device_put(self._params, NamedSharding(self._mesh, P()))
            params = self._params_sharded
            x = jax.device_put(x, NamedSharding(self._mesh, P("batch")))
        else:
            params = self._params
        out = _features_jit(
            params,
            x,
            frames_B,
            np.float32(mean),
            np.float32(std),
            config=self.model_config,
            units=units,
            from_wav=from_wav,
            batch_stats=batch_stats,
            return_layers=return_layers,
        )
        T = self.num_steps(int(frames_B.max()))
        return np.asarray(out)[..., :B, :T, :]


# ---- device side (module level: compiled code is shared by every Runtime of one config) ----
TRACE_COUNTS: collections.Counter = collections.Counter()  # ModelConfig -> traces so far


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
):
    """x: padded waveforms [B, S] (from_wav) or raw log-mels [B, F, U*fu]; frames_B: the real
    frames of each row (0 for padding rows); mean/std: used unless batch_stats."""
    TRACE_COUNTS[config] += 1  # Python side effect: runs once per trace, not per call
    fu = config.input_size[1]
    lms_BFT = audio.log_mel_jax(x)[..., : units * fu] if from_wav else x
    B, F, T = lms_BFT.shape
    valid_B1T = jnp.arange(T)[None, None, :] < frames_B[:, None, None]
    if batch_stats:  # statistics of the real rows and frames only
        count = jnp.sum(frames_B.astype(jnp.float32)) * F
        mean = jnp.sum(jnp.where(valid_B1T, lms_BFT, 0.0)) / count
        sq = jnp.where(valid_B1T, jnp.square(lms_BFT - mean), 0.0)
        std = jnp.sqrt(jnp.sum(sq) / jnp.maximum(count - 1.0, 1.0))  # unbiased, as torch
        std = jnp.maximum(std, _MIN_BATCH_STD)
    # Normalise, then zero the padding: the official code pads the normalised log-mel.
    x_BFT = jnp.where(valid_B1T, (lms_BFT - mean) / std, 0.0)
    return encode_frames(params, x_BFT, config, return_layers)


_features_jit = jax.jit(
    _features,
    static_argnames=("config", "units", "from_wav", "batch_stats", "return_layers"),
)
