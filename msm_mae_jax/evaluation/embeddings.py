"""Clip embeddings of a task for the linear evaluation: extractors, models, the cache.

1. Clips are read once (`task_audio.Clips`), fitted to `unit_sec` as EVAR does. Default
   `unit_sec`: the longest clip of the task, capped at 10 s. Clips that cannot be decoded are
   skipped and reported (`info["skipped"]`).
2. Normalisation of the log-mels ('task', EVAR's choice): one mean/std over the log-mel values
   of the task's training clips (for fold tasks: all clips, since every clip trains some fold;
   two scalars of label-free audio, so extraction runs once instead of once per fold);
   'checkpoint': the statistics stored with the model.
3. Clip embedding = the runtime's frame features averaged over time (`Runtime.encode`);
   with `layers`, every requested block's output averaged over time, each probed separately
   (`layer_mode='separate'`) or concatenated into one feature (`'concat'`).
   Baselines: 'logmel' = per-band mean and std over time of the (unnormalised) log-mel, 160-d;
   'random' = the encoder of a model config with random initial weights and task statistics.
4. Embeddings are cached as .npz under `cache_dir`, keyed by (model identity, clips, settings);
   an unreadable entry (a truncated or corrupt file) is a miss: recomputed and replaced
   atomically.

Shape letters: N clips, B batch, S samples, F mel bins, T frames, D width, L layers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import zipfile
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from msm_mae_jax.core.config_files import load_config
from msm_mae_jax.data import audio
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.evaluation.task_audio import Clips, default_unit_sec, log_mel, task_norm_stats
from msm_mae_jax.evaluation.tasks import Task
from msm_mae_jax.model.config import ModelConfig

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "msm_mae_jax", "embeddings")
CACHE_VERSION = 2  # 2: the skipped clips are part of an entry
BASELINES = ("logmel", "random")
NORMS = ("task", "checkpoint")


# ---- feature extractors: name -> features [N, D] per feature set --------------------------------
def logmel_features(
    clips: Clips, indices: Sequence[int], batch_size: int = 64
) -> dict[str, np.ndarray]:
    """Per-band mean and std over time of the log-mel: [N, 2F].

    Statistics of the clip's own frames (those centred inside the audio), not of the zero
    padding that fits a short clip to unit length: silence padding would make the feature
    mostly a function of the clip's duration.
    """
    out = np.zeros((len(indices), 2 * audio.N_MELS), np.float32)
    for pos, wav_BS, len_B in clips.batches(indices, batch_size, "logmel features"):
        lms_BFT = np.asarray(log_mel(jnp.asarray(wav_BS)), np.float64)[: len(pos)]
        left_B = (clips.samples - len_B) // 2  # fit_length's left padding
        centre_T = np.arange(lms_BFT.shape[-1]) * audio.HOP_LENGTH
        real_BT = (centre_T >= left_B[:, None]) & (centre_T < (left_B + len_B)[:, None])
        real_BT[~real_BT.any(1), 0] = True  # a clip shorter than one hop: its first frame
        w_B1T = real_BT[:, None, :] / real_BT.sum(1)[:, None, None]
        mean_BF = np.sum(lms_BFT * w_B1T, -1)
        std_BF = np.sqrt(np.sum(np.square(lms_BFT - mean_BF[..., None]) * w_B1T, -1))
        out[pos] = np.concatenate([mean_BF, std_BF], axis=1)
    return {"logmel": out}


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
    indices: Sequence[int],
    normalization,
    layers: list[int] | None = None,
    layer_mode: str = "separate",
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """Runtime frame features averaged over time, for the final output or chosen blocks."""
    feats: dict[str, np.ndarray] = {}
    for pos, wav_BS, _ in clips.batches(indices, batch_size, "embeddings"):
        out = runtime.encode(wav_BS, normalization=normalization, return_layers=layers is not None)
        out = np.asarray(out).mean(axis=-2)  # mean over time
        if layers is None:
            parts = {"final": out[: len(pos)]}
        elif layer_mode == "concat":
            parts = {
                "layers_" + "+".join(str(k + 1) for k in layers): np.concatenate(
                    [out[k, : len(pos)] for k in layers], axis=-1
                )
            }
        else:
            parts = {f"layer{k + 1}": out[k, : len(pos)] for k in layers}
        for name, v in parts.items():
            if name not in feats:
                feats[name] = np.zeros((len(indices), v.shape[-1]), np.float32)
            feats[name][pos] = v
    return feats


# ---- models and their identities (for the cache) ----------------------------------------------
def load_model_config(spec: str | None) -> ModelConfig:
    """None -> the default ViT-B 80x208; 'configs/msm_mae.py:tiny' -> that config's model."""
    if not spec:
        return ModelConfig()
    return ModelConfig.from_dict(load_config(spec).model)


def random_runtime(model_config: ModelConfig, norm_stats: NormStats, seed: int = 0):
    from msm_mae_jax.features.runtime import Runtime
    from msm_mae_jax.model.mae import Encoder

    lms = jnp.zeros((1, 1, *model_config.input_size), jnp.float32)
    params = jax.jit(Encoder(model_config).init)(jax.random.key(seed), lms)["params"]
    return Runtime(model_config, params, norm_stats, {"source": f"random init (seed {seed})"})


def checkpoint_identity(path: str) -> str:
    """Path plus size and mtime of every file that defines the model (not logs or figures)."""
    path = os.path.abspath(path)
    h = hashlib.sha256(path.encode())
    roots = (
        [os.path.join(path, "checkpoints")]
        if os.path.isdir(os.path.join(path, "checkpoints"))
        else [path]
    )
    for root in roots:
        for dp, dns, fns in os.walk(root):
            dns.sort()
            for f in sorted(fns):
                st = os.stat(os.path.join(dp, f))
                h.update(
                    f"{os.path.relpath(os.path.join(dp, f), path)}\0{st.st_size}\0"
                    f"{st.st_mtime_ns}\n".encode()
                )
    return h.hexdigest()


# ---- the cache ---------------------------------------------------------------------------------
def _cache_path(cache_dir: str, key: dict) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return os.path.join(cache_dir, f"{digest}.npz")


def _save_cache(path: str, feats: dict[str, np.ndarray], meta: dict) -> None:
    """Writes an entry atomically (a reader never sees a partial file); a cache that cannot
    be written is reported, not an error: the results do not depend on it."""
    tmp = path + f".{os.getpid()}.tmp.npz"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.savez(tmp, __meta__=np.array(json.dumps(meta)), **feats)
        os.replace(tmp, path)
    except OSError as e:
        logger.warning("could not write the embedding cache entry %s: %s", path, e)
        if os.path.exists(tmp):
            os.unlink(tmp)


# What a damaged entry raises: zip structure (truncated, overwritten), a cut member (EOF), bad
# JSON or a missing member, an unreadable file.
_CACHE_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def _load_cache(path: str) -> tuple[dict[str, np.ndarray], dict] | None:
    """The entry at `path`, or None when there is none or it cannot be read (a miss)."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path) as z:
            meta = json.loads(str(z["__meta__"]))
            return {k: z[k] for k in z.files if k != "__meta__"}, meta
    except _CACHE_READ_ERRORS as e:
        logger.warning("embedding cache entry %s is unreadable (%s); recomputing", path, e)
        return None


# ---- extraction ----------------------------------------------------------------------------------
def _check_arguments(
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
    if checkpoint is not None and not os.path.exists(checkpoint):
        raise FileNotFoundError(f"--checkpoint {checkpoint}: no such file or directory")


def _model_identity(
    checkpoint: str | None, baseline: str | None, config: str | None, seed: int
) -> str | dict:
    if baseline == "logmel":
        return "logmel"
    if baseline == "random":
        return {"random": load_model_config(config).to_dict(), "seed": seed}
    return {"checkpoint": checkpoint_identity(checkpoint)}


def _encoder_runtime(
    clips: Clips,
    task: Task,
    checkpoint: str | None,
    baseline: str | None,
    config: str | None,
    norm: str,
    seed: int,
    meta: dict,
):  # noqa: ANN202 (a features.runtime.Runtime, imported when needed)
    """(runtime, the normalisation statistics to use); both recorded in `meta`."""
    stats = None
    if norm == "task" or baseline == "random":
        stats = task_norm_stats(clips, task.train_union)
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
    config: str | None = None,
    layers: str | None = None,
    layer_mode: str = "separate",
    norm: str = "task",
    unit_sec: float | None = None,
    batch_size: int = 32,
    cache_dir: str | None = DEFAULT_CACHE_DIR,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, np.ndarray], dict]:
    """Clip embeddings of every clip of the task -> ({feature set: [N, D]}, info).

    info["skipped"]: [{index, name, reason}] of clips that could not be decoded (their rows
    are zeros: leave them out of every split)."""
    _check_arguments(checkpoint, baseline, norm, layer_mode)
    unit_sec = float(unit_sec) if unit_sec else default_unit_sec(task)
    if baseline == "logmel":
        layers = None
    key = {
        "version": CACHE_VERSION,
        "model": _model_identity(checkpoint, baseline, config, seed),
        "clips": task.fingerprint(),
        "unit_sec": unit_sec,
        "norm": norm if baseline != "logmel" else None,
        "layers": layers,
        "layer_mode": layer_mode if layers else None,
    }
    info = {"unit_sec": unit_sec, "norm": key["norm"], "cache_hit": False, "cache_file": None}
    if cache_dir:
        info["cache_file"] = _cache_path(cache_dir, key)
        cached = _load_cache(info["cache_file"])
        if cached is not None:
            feats, meta = cached
            log(f"embeddings from cache {info['cache_file']}")
            return feats, {**info, **meta, "cache_hit": True, "extraction_s": 0.0}
    t0 = time.time()
    clips = Clips(task, unit_sec, progress)
    everything = np.arange(len(task))
    meta: dict = {}
    if baseline == "logmel":
        feats = logmel_features(clips, everything)
    else:
        runtime, stats = _encoder_runtime(
            clips, task, checkpoint, baseline, config, norm, seed, meta
        )
        depth = runtime.model_config.depth
        feats = encoder_features(
            runtime,
            clips,
            everything,
            (stats.mean, stats.std),
            parse_layers(layers, depth),
            layer_mode,
            batch_size,
        )
    meta["skipped"] = clips.skipped_report()
    meta["extraction_s"] = time.time() - t0
    if cache_dir:
        _save_cache(info["cache_file"], feats, meta)
    return feats, {**info, **meta}
