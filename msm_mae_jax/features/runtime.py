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

Long clips: a clip runs in chunks of `chunk_units` encoder units (16: 33 s at 80x208), each a
waveform window of exactly the samples its log-mel frames see (`chunking`), packed in calls of
at most `units_per_call` units (`calls`); the features equal those of the whole clip in one
piece, and the memory beyond the input and the returned features does not grow with the
clip's length (`scene_embeddings` keeps none per frame). Other sample rates are resampled
chunk by chunk with soxr's streaming resampler (equal to resampling the whole clip).
`stream_features` does the same for a clip read block by block (`msm-mae embed` of long files).

Speed: one compiled function per (row bucket, unit bucket, options): the units of a call are
rounded up to 1, 2, 3, 4, 6, 8, 12, 16 and the rows to a bucket of the same family (a
multiple of the number of local devices when at least that many, then sharded along a 1-D
device mesh), so a stream of clips of varying length compiles O(log) functions instead of one
per length.

Shape letters: B batch, S samples, F mel bins, T frames or time steps, U units, D width,
L layers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from msm_mae_jax.core import fs
from msm_mae_jax.data import audio
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.features import calls, chunking
from msm_mae_jax.features.calls import TRACE_COUNTS, bucket_size  # noqa: F401 (public here)
from msm_mae_jax.features.clips import (  # noqa: F401 (MIN/MAX_SAMPLE_RATE: public here too)
    LIST,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    SINGLE,
    input_lengths,
    is_clip_list,
    patch_timestamps_ms,
    prepare_clips,
    to_numpy,
)
from msm_mae_jax.model.config import ModelConfig

Normalization = str | tuple[float, float] | NormStats | None


class StreamFeatures(NamedTuple):
    """`Runtime.stream_features` of one clip: scene [F'*D], frames [T, F'*D] (or None) and
    the clip's samples at 16 kHz."""

    scene: np.ndarray
    frames: np.ndarray | None
    samples: int


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
        self._params = jax.tree.map(jnp.asarray, nn.unbox(encoder_params))
        calls.check_params(model_config, self._params)
        self._calls = calls.Executor(model_config, self._params)
        # Long clips: chunks of this many units, calls of at most this many units.
        self.chunk_units = chunking.CHUNK_UNITS
        self.units_per_call = calls.UNITS_PER_DEVICE * len(self._calls.devices)

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, step: int | None = None) -> Runtime:
        """From a training workdir (latest or given checkpoint step), an exported model dir
        (`python -m msm_mae_jax.export`) or converted official weights (`msm_mae_jax.convert`)."""
        from msm_mae_jax.model import artifact

        path = os.fspath(path)  # a local path or a URL (gs://...)
        if not fs.exists(path):
            raise FileNotFoundError(f"{path}: no such model directory or training workdir")
        if artifact.is_model_dir(path):
            cfg, params, stats, meta = artifact.load_model_dir(path)
            return cls(cfg, params, stats, meta)
        if fs.isdir(fs.join(path, "checkpoints")):
            from msm_mae_jax.train import checkpoints

            cfg, params, stats = checkpoints.load_encoder_from_workdir(path, step=step)
            return cls(cfg, params, stats, {"source": fs.absolute(path), "step": step})
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

    @property
    def chunk_frames(self) -> int:
        """Log-mel frames of a chunk: long clips run in pieces of this many frames."""
        return int(self.chunk_units) * self.unit_frames

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
        clips, layout, sr = prepare_clips(audio_BS, sample_rate)
        frames_B = [audio.num_frames(chunking.resampled_length(len(c), sr)) for c in clips]
        lead = (self.model_config.depth,) if return_layers else ()
        if layout == LIST:
            out = [
                np.empty((*lead, self.num_steps(f), self.feature_dim), np.float32) for f in frames_B
            ]
            targets = out
        else:
            shape = (*lead, len(clips), self.num_steps(frames_B[0]), self.feature_dim)
            out = np.empty(shape, np.float32)
            targets = [out[..., i, :, :] for i in range(len(clips))]
        self._run(
            _wav_sources(clips, sr, self.chunk_frames, self.unit_frames),
            frames_B,
            True,
            normalization,
            return_layers,
            _writer(targets),
        )
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
        B, _, T = lms.shape
        lead = (self.model_config.depth,) if return_layers else ()
        out = np.empty((*lead, B, self.num_steps(T), self.feature_dim), np.float32)
        n = self.chunk_frames
        sources = [
            lambda b=b: ((lms[b, :, k : k + n], min(n, T - k)) for k in range(0, T, n))
            for b in range(B)
        ]
        targets = [out[..., b, :, :] for b in range(B)]
        self._run(sources, [T] * B, False, normalization, return_layers, _writer(targets))
        return out[..., 0, :, :] if squeeze else out

    def scene_embeddings(
        self,
        audio_BS: Any,
        sample_rate: float = audio.SAMPLE_RATE,
        normalization: Normalization = "default",
    ) -> np.ndarray:
        """Clip embeddings float32 [B, F'*D] ([F'*D] for one waveform [S], [N, F'*D] for a
        list of N clips): the frame features averaged over time, accumulated chunk by chunk
        (no per-frame features are kept)."""
        clips, layout, sr = prepare_clips(audio_BS, sample_rate)
        frames_B = [audio.num_frames(chunking.resampled_length(len(c), sr)) for c in clips]
        sums = np.zeros((len(clips), self.feature_dim), np.float64)

        def add(i: int, t0: int, f_TD: np.ndarray) -> None:
            sums[i] += f_TD.sum(axis=0, dtype=np.float64)

        sources = _wav_sources(clips, sr, self.chunk_frames, self.unit_frames)
        self._run(sources, frames_B, True, normalization, False, add)
        steps = np.array([self.num_steps(f) for f in frames_B], np.float64)
        scene = (sums / steps[:, None]).astype(np.float32)
        return scene[0] if layout == SINGLE else scene

    def stream_features(
        self,
        blocks: Callable[[], Iterable[np.ndarray]],
        normalization: Normalization = "default",
        frames: bool = False,
    ) -> StreamFeatures:
        """One clip given as 16 kHz blocks -> its scene embedding [F'*D] (and frame features
        [T, F'*D] with frames=True), equal to `scene_embeddings` / `encode` of the whole clip.

        `blocks()` returns an iterator over the clip's samples in pieces of any sizes (a file
        read block by block: `audio_io.iter_blocks`); only a chunk and a block are held at a
        time. 'batch' normalisation reads the clip twice (statistics first).
        """
        seen = [0]
        n = self.chunk_frames

        def pieces() -> Iterator[tuple[np.ndarray, int]]:
            w = chunking.Windower(n, self.unit_frames)
            for block in blocks():
                yield from w.push(block)
            yield from w.finish()
            seen[0] = w.samples

        sums = np.zeros(self.feature_dim, np.float64)
        kept: list[np.ndarray] = []

        def add(i: int, t0: int, f_TD: np.ndarray) -> None:
            sums[:] += f_TD.sum(axis=0, dtype=np.float64)
            if frames:
                kept.append(f_TD.copy())

        self._run([pieces], None, True, normalization, False, add)
        steps = self.num_steps(audio.num_frames(seen[0]))
        return StreamFeatures(
            (sums / steps).astype(np.float32),
            np.concatenate(kept) if frames else None,
            seen[0],
        )

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
        sources: Sequence[Callable[[], Iterable[tuple[np.ndarray, int]]]],
        frames_B: Sequence[int] | None,
        from_wav: bool,
        normalization: Normalization,
        return_layers: bool,
        sink: Callable[[int, int, np.ndarray], None],
    ) -> None:
        """Every clip's pieces (waveform windows or log-mel slices of `chunk_frames` frames,
        with their real frames) through the device in calls (`calls.Executor.run`).
        frames_B: each clip's frames when known (None for streams)."""
        self._calls.run(
            sources,
            frames_B,
            from_wav=from_wav,
            stats=self.resolve_normalization(normalization),
            return_layers=return_layers,
            sink=sink,
            chunk_units=int(self.chunk_units),
            units_per_call=int(self.units_per_call),
        )

    @property
    def _params_sharded(self) -> Any:
        """The parameters replicated over the local devices (None before a sharded call)."""
        return self._calls.params_sharded


def _wav_sources(
    clips: Sequence[np.ndarray], sr: int, chunk_frames: int, unit_frames: int
) -> list[Callable[[], Iterator[tuple[np.ndarray, int]]]]:
    """Each clip (at `sr`) as a source of waveform windows of `chunk_frames` frames."""
    return [
        lambda c=c: chunking.windows(chunking.blocks_16k(c, sr), chunk_frames, unit_frames)
        for c in clips
    ]


def _writer(targets: Sequence[np.ndarray]) -> Callable[[int, int, np.ndarray], None]:
    """A sink writing a piece's features into clip i's output [(L,) T, F'*D] from step t0."""

    def put(i: int, t0: int, f_TD: np.ndarray) -> None:
        targets[i][..., t0 : t0 + f_TD.shape[-2], :] = f_TD

    return put
