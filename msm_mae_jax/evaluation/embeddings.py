"""Clip embeddings of a task for the linear evaluation: extractors, models, the cache.

1. Clips are read once (`task_audio.Clips`) and fitted to `unit_sec` as EVAR does: end
   padding; a longer clip cropped at a seeded random start when it trains or validates, from
   its start when it is tested (a clip in both roles across folds is embedded in both fits).
   Default `unit_sec`: the longest clip of the task, capped at 10 s. Clips that cannot be
   decoded are skipped and reported (`info["skipped"]`).
2. Normalisation of the log-mels ('task', EVAR's choice): one mean/std over the log-mel values
   of up to 5,120 training clips of the first fold (`task_audio.norm_stats_indices`), in their
   training fit; 'checkpoint': the statistics stored with the model.
3. Clip embedding = the runtime's frame features averaged over time (`Runtime.encode`);
   with `layers`, every requested block's output averaged over time, each probed separately
   (`layer_mode='separate'`) or concatenated into one feature (`'concat'`).
   Baselines: 'logmel' = per-band mean and std over time of the (unnormalised) log-mel, 160-d;
   'random' = the encoder of a model config with random initial weights and task statistics.
4. Embeddings are cached as .npz under `cache_dir`, keyed by (model identity, clips, their
   roles, fitting, settings); an entry that is unreadable or does not hold what the key
   promises is a miss: recomputed and replaced atomically (`embedding_cache`).

Shape letters: N clips, B batch, S samples, F mel bins, T frames, D width, L layers.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from msm_mae_jax.core import fs
from msm_mae_jax.data import audio
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.evaluation import embedding_cache
from msm_mae_jax.evaluation.embedding_cache import Features
from msm_mae_jax.model.config import ModelConfig, load_model_config
from msm_mae_jax.model.identity import checkpoint_identity
from msm_mae_jax.tasks.task import Task
from msm_mae_jax.tasks.task_audio import (
    NORM_STATS_CLIPS,
    TEST,
    Clips,
    Plan,
    clip_durations,
    default_unit_sec,
    extraction_plan,
    log_mel,
    roles_digest,
    task_views,
)

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "msm_mae_jax", "embeddings")
# 2: the skipped clips are part of an entry; 3: EVAR's fitting (end padding, random crops of
# training clips), statistics of the first fold's training clips, training rows
CACHE_VERSION = 3
FIT = "evar"  # task_audio's fitting, named in the key
BASELINES = ("logmel", "random")
NORMS = ("task", "checkpoint")


# ---- feature extractors: name -> features [N, D] per feature set --------------------------------
def _as_plan(plan: Plan | Sequence[int] | np.ndarray) -> list:
    """A plan, or clip indices (each in its test fit)."""
    items = list(plan)
    if items and not isinstance(items[0], tuple):
        return [(int(i), (TEST,)) for i in sorted(items)]
    return items


def _embed(
    clips: Clips,
    plan: Plan | Sequence[int],
    batch_size: int,
    desc: str,
    fn: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]],
) -> Features:
    """Features of every clip of the plan: `fn(wav_BS, samples_B)` -> {set: [B, D]} per
    batch; a clip's test fit (or its only fit) goes to the main rows, the training fit of a
    clip that also has a test fit to the training rows."""
    test, _ = task_views(clips.task)
    n = len(clips.task)
    feats: dict[str, np.ndarray] = {}
    alt: dict[int, dict[str, np.ndarray]] = {}
    for keys, wav_BS, len_B in clips.plan_batches(_as_plan(plan), batch_size, desc):
        out = fn(wav_BS, len_B)
        for name, v in out.items():
            if name not in feats:
                feats[name] = np.zeros((n, v.shape[-1]), np.float32)
        for r, (i, views) in enumerate(keys):
            if TEST in views or not test[i]:
                for name, v in out.items():
                    feats[name][i] = v[r]
            else:
                alt[i] = {name: v[r] for name, v in out.items()}
    index = np.array(sorted(alt), np.int64)
    rows = {
        name: np.stack([alt[i][name] for i in index]).astype(np.float32)
        if len(index)
        else np.zeros((0, x.shape[1]), np.float32)
        for name, x in feats.items()
    }
    return Features(feats, index, rows)


def logmel_features(clips: Clips, plan: Plan | Sequence[int], batch_size: int = 64) -> Features:
    """Per-band mean and std over time of the log-mel: [N, 2F].

    Statistics of the clip's own frames (those centred inside the audio), not of the zero
    padding that fits a short clip to unit length: silence padding would make the feature
    mostly a function of the clip's duration.
    """

    def fn(wav_BS: np.ndarray, len_B: np.ndarray) -> dict[str, np.ndarray]:
        lms_BFT = np.asarray(log_mel(jnp.asarray(wav_BS)), np.float64)[: len(len_B)]
        centre_T = np.arange(lms_BFT.shape[-1]) * audio.HOP_LENGTH
        real_BT = centre_T[None] < len_B[:, None]  # the audio starts each row (end padding)
        real_BT[~real_BT.any(1), 0] = True  # a clip shorter than one hop: its first frame
        w_B1T = real_BT[:, None, :] / real_BT.sum(1)[:, None, None]
        mean_BF = np.sum(lms_BFT * w_B1T, -1)
        std_BF = np.sqrt(np.sum(np.square(lms_BFT - mean_BF[..., None]) * w_B1T, -1))
        return {"logmel": np.concatenate([mean_BF, std_BF], axis=1)}

    return _embed(clips, plan, batch_size, "logmel features", fn)


def parse_layers(spec: str | None, depth: int) -> list[int] | None:
    """'all' or '1,6,12' (1-based block indices; negative counts from the end) -> 0-based."""
    if not spec:
        return None
    if spec == "all":
        return list(range(depth))
    out = []
    for tok in spec.split(","):
        try:
            k = int(tok)
        except ValueError:
            raise ValueError(
                f"--layers {spec!r}: expected 'all' or comma-separated block numbers 1..{depth}"
            ) from None
        if not (1 <= k <= depth or -depth <= k <= -1):
            raise ValueError(f"--layers {spec!r}: block {k} outside 1..{depth}")
        out.append(k - 1 if k > 0 else depth + k)
    return out


def encoder_features(
    runtime,
    clips: Clips,
    plan: Plan | Sequence[int],
    normalization,
    layers: list[int] | None = None,
    layer_mode: str = "separate",
    batch_size: int = 32,
) -> Features:
    """Runtime frame features averaged over time, for the final output or chosen blocks."""

    def fn(wav_BS: np.ndarray, len_B: np.ndarray) -> dict[str, np.ndarray]:
        b = len(len_B)
        if layers is None:  # the mean over time, without holding every frame's features
            return {
                "final": np.asarray(runtime.scene_embeddings(wav_BS, normalization=normalization))[
                    :b
                ]
            }
        out = runtime.encode(wav_BS, normalization=normalization, return_layers=True)
        out = np.asarray(out).mean(axis=-2)  # mean over time
        if layer_mode == "concat":
            name = "layers_" + "+".join(str(k + 1) for k in layers)
            return {name: np.concatenate([out[k, :b] for k in layers], axis=-1)}
        return {f"layer{k + 1}": out[k, :b] for k in layers}

    return _embed(clips, plan, batch_size, "embeddings", fn)


# ---- models and their identities (for the cache) ----------------------------------------------
def random_runtime(model_config: ModelConfig, norm_stats: NormStats, seed: int = 0):
    from msm_mae_jax.features.runtime import Runtime
    from msm_mae_jax.model.mae import Encoder

    lms = jnp.zeros((1, 1, *model_config.input_size), jnp.float32)
    params = jax.jit(Encoder(model_config).init)(jax.random.key(seed), lms)["params"]
    return Runtime(model_config, params, norm_stats, {"source": f"random init (seed {seed})"})


# ---- extraction ----------------------------------------------------------------------------------
def check_arguments(
    checkpoint: str | None, baseline: str | None, norm: str, layer_mode: str
) -> None:
    if (checkpoint is None) == (baseline is None):
        raise ValueError("give exactly one of checkpoint (--checkpoint) and baseline (--baseline)")
    if baseline is not None and baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; expected one of {BASELINES}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
    if norm == "checkpoint" and baseline is not None:
        raise ValueError(
            "--norm checkpoint needs a --checkpoint (baselines have no stored "
            "statistics); use --norm task"
        )
    if layer_mode not in ("separate", "concat"):
        raise ValueError(f"layer_mode={layer_mode!r}; expected 'separate' or 'concat'")
    if checkpoint is not None and not fs.exists(checkpoint):
        raise FileNotFoundError(f"--checkpoint {checkpoint}: no such file or directory")


def model_identity(
    checkpoint: str | None, baseline: str | None, config: str | ModelConfig | None, seed: int
) -> str | dict:
    if baseline == "logmel":
        return "logmel"
    if baseline == "random":
        return {"random": load_model_config(config).to_dict(), "seed": seed}
    return {"checkpoint": checkpoint_identity(checkpoint)}


def _encoder_runtime(
    clips: Clips,
    checkpoint: str | None,
    baseline: str | None,
    config: str | ModelConfig | None,
    norm: str,
    seed: int,
    meta: dict,
):  # noqa: ANN202 (a features.runtime.Runtime, imported when needed)
    """(runtime, the normalisation statistics to use); both recorded in `meta`."""
    stats = None
    if norm == "task" or baseline == "random":
        stats = clips.norm_stats()
    if baseline == "random":
        runtime = random_runtime(load_model_config(config), stats, seed)
    else:
        from msm_mae_jax.features.runtime import Runtime  # noqa: PLC0415

        runtime = Runtime.load(checkpoint)
        stats = runtime.norm_stats if stats is None else stats
    meta["norm_stats"] = stats.to_dict()
    meta["model"] = runtime.model_config.run_name_prefix
    return runtime, stats


def extract(
    task: Task,
    *,
    checkpoint: str | None = None,
    baseline: str | None = None,
    config: str | ModelConfig | None = None,
    layers: str | None = None,
    layer_mode: str = "separate",
    norm: str = "task",
    unit_sec: float | None = None,
    batch_size: int = 32,
    cache_dir: str | None = DEFAULT_CACHE_DIR,
    seed: int = 0,
    crop_seed: int = 42,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[Features, dict]:
    """Clip embeddings of every clip of the task -> (Features {feature set: [N, D]}, info).

    `unit_sec`: the clip length (> 0 s); None: the longest clip (`default_unit_sec`).
    `seed`: the random baseline's initialisation; `crop_seed`: the random crops of training
    clips and the sample of the normalisation statistics. info["skipped"]: [{index, name,
    reason}] of clips that could not be decoded (their rows are zeros: leave them out of
    every split)."""
    check_arguments(checkpoint, baseline, norm, layer_mode)
    unreadable: dict[int, str] = {}
    if unit_sec is None:  # only None means "the longest clip": a 0 is a mistake, not a default
        durations, unreadable = clip_durations(task)
        unit_sec = default_unit_sec(task, durations)
    if isinstance(unit_sec, bool) or not (math.isfinite(unit_sec) and unit_sec > 0):
        raise ValueError(f"{task.spec}: unit_sec={unit_sec!r}; expected a clip length > 0 s")
    unit_sec = float(unit_sec)
    roles = roles_digest(task, crop_seed)
    if baseline == "logmel":
        layers = None
    key = {
        "version": CACHE_VERSION,
        "model": model_identity(checkpoint, baseline, config, seed),
        "clips": task.fingerprint(),
        "roles": roles,
        "fit": FIT,
        "crop_seed": int(crop_seed),
        "unit_sec": unit_sec,
        "norm": norm if baseline != "logmel" else None,
        "norm_clips": NORM_STATS_CLIPS,
        "layers": layers,
        "layer_mode": layer_mode if layers else None,
    }
    info = {
        "unit_sec": unit_sec,
        "norm": key["norm"],
        "crop_seed": int(crop_seed),
        "cache_hit": False,
        "cache_file": None,
    }
    if cache_dir:
        info["cache_file"] = embedding_cache.cache_path(cache_dir, key)
        cached = embedding_cache.load(info["cache_file"], len(task))
        if cached is not None:
            feats, meta = cached
            log(f"embeddings from cache {info['cache_file']}")
            return feats, {**info, **meta, "cache_hit": True, "extraction_s": 0.0}
    t0 = time.time()
    clips = Clips(task, unit_sec, progress, crop_seed, skipped=unreadable)
    plan = extraction_plan(task)
    meta: dict = {}
    if baseline == "logmel":
        feats = logmel_features(clips, plan)
    else:
        runtime, stats = _encoder_runtime(clips, checkpoint, baseline, config, norm, seed, meta)
        depth = runtime.model_config.depth
        feats = encoder_features(
            runtime,
            clips,
            plan,
            (stats.mean, stats.std),
            parse_layers(layers, depth),
            layer_mode,
            batch_size,
        )
    if not feats:
        raise ValueError(f"{task.spec}: none of its {len(task)} clips can be read")
    meta["skipped"] = clips.skipped_report()
    meta["extraction_s"] = time.time() - t0
    if cache_dir:
        embedding_cache.save(info["cache_file"], feats, meta)
    return feats, {**info, **meta}
