"""Linear evaluation of a frozen encoder (EVAR protocol): embeddings, baselines, results.

Pipeline of `evaluate`:
1. Clips are read once (`audio_io.load_audio`), fitted to `unit_sec` as EVAR does (shorter clips
   zero-padded equally on both sides, longer ones cropped from the start). Default `unit_sec`:
   the longest clip of the task, capped at 10 s.
2. Normalisation of the log-mels ('task', EVAR's choice): one mean/std over the log-mel values
   of the task's training clips (for fold tasks: all clips, since every clip trains some fold;
   two scalars of label-free audio, so extraction runs once instead of once per fold);
   'checkpoint': the statistics stored with the model.
3. Clip embedding = the runtime's frame features averaged over time (`Runtime.encode`);
   with `layers`, every requested block's output averaged over time, each probed separately
   (`layer_mode='separate'`) or concatenated into one feature (`'concat'`).
   Baselines: 'logmel' = per-band mean and std over time of the (unnormalised) log-mel, 160-d;
   'random' = the encoder of a model config with random initial weights and task statistics.
4. Embeddings are cached as .npz under `cache_dir`, keyed by (model identity, clips, settings).
5. `probe.linear_probe` per fold and seed; mean ± std over seeds (single split) or over folds
   (fold tasks, each fold's score the mean of its seeds).

Shape letters: N clips, S samples, F mel bins, T frames, D width, L layers.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from msm_mae_jax.core.config_files import load_config
from msm_mae_jax.data import audio
from msm_mae_jax.data.normalization import NormAccumulator, NormStats
from msm_mae_jax.evaluation import probe
from msm_mae_jax.evaluation.tasks import Task
from msm_mae_jax.model.config import ModelConfig

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "msm_mae_jax", "embeddings")
MAX_DEFAULT_UNIT_SEC = 10.0
IN_MEMORY_BYTES = 2 << 30  # clips are kept in memory (one decode) below this size
CACHE_VERSION = 1
BASELINES = ("logmel", "random")
NORMS = ("task", "checkpoint")


# ---------------------------------------------------------------------------------------------
# Clips.


def fit_length(wav_S: np.ndarray, samples: int) -> np.ndarray:
    """EVAR's unit length: zero-pad both sides (extra sample at the end), crop from start."""
    n = len(wav_S)
    if n < samples:
        left = (samples - n) // 2
        return np.pad(wav_S, (left, samples - n - left)).astype(np.float32)
    return np.asarray(wav_S[:samples], np.float32)


def default_unit_sec(task: Task) -> float:
    durations = task.source.durations()
    if durations is None:
        raise ValueError(
            f"{task.spec}: give unit_sec (--unit_sec) for this task; the clip "
            "durations are not known without decoding the whole dataset"
        )
    return float(min(MAX_DEFAULT_UNIT_SEC, np.max(durations)))


class Clips:
    """The task's clips fitted to unit length, batch by batch; decoded once when they fit."""

    def __init__(self, task: Task, unit_sec: float, progress: bool = True):
        self.task, self.samples, self.progress = (
            task,
            int(round(unit_sec * audio.SAMPLE_RATE)),
            progress,
        )
        self.unit_sec = float(unit_sec)
        self._all: np.ndarray | None = None
        self._lengths: np.ndarray | None = None
        if len(task) * self.samples * 4 <= IN_MEMORY_BYTES:
            self._all = np.zeros((len(task), self.samples), np.float32)
            self._lengths = np.zeros(len(task), np.int64)
            for i, wav in enumerate(self._stream(range(len(task)), "reading audio")):
                self._all[i] = fit_length(wav, self.samples)
                self._lengths[i] = min(len(wav), self.samples)

    def _stream(self, indices: Sequence[int], desc: str) -> Iterator[np.ndarray]:
        from tqdm import tqdm

        it = self.task.source.iterate(list(indices), max_seconds=self.unit_sec)
        yield from tqdm(
            it,
            total=len(indices),
            desc=desc,
            disable=not self.progress,
            file=sys.stderr,
            leave=False,
        )

    def batches(
        self, indices: Sequence[int], batch_size: int, desc: str
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(positions into `indices` [b], wavs [batch_size, S], audio lengths [b]); the last
        batch is zero-padded to batch_size rows."""
        indices = np.asarray(indices)
        if self._all is not None:
            from tqdm import tqdm

            for start in tqdm(
                range(0, len(indices), batch_size),
                desc=desc,
                file=sys.stderr,
                disable=not self.progress,
                leave=False,
            ):
                pos = np.arange(start, min(start + batch_size, len(indices)))
                yield (
                    pos,
                    _pad_rows(self._all[indices[pos]], batch_size),
                    self._lengths[indices[pos]],
                )
            return
        buf, pos, lens = [], [], []
        for k, wav in enumerate(self._stream(indices, desc)):
            buf.append(fit_length(wav, self.samples))
            pos.append(k)
            lens.append(min(len(wav), self.samples))
            if len(buf) == batch_size:
                yield np.array(pos), np.stack(buf), np.array(lens)
                buf, pos, lens = [], [], []
        if buf:
            yield np.array(pos), _pad_rows(np.stack(buf), batch_size), np.array(lens)


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    # A fixed batch shape: one compiled function for the whole extraction.
    return np.pad(x, ((0, rows - len(x)),) + ((0, 0),) * (x.ndim - 1))


_log_mel = jax.jit(audio.log_mel_jax)


def task_norm_stats(clips: Clips, indices: Sequence[int], batch_size: int = 64) -> NormStats:
    """Mean and std of the log-mel values of the given (unit-length) clips."""
    acc = NormAccumulator()
    for pos, wav_BS, _ in clips.batches(indices, batch_size, "norm stats"):
        acc.add(np.asarray(_log_mel(jnp.asarray(wav_BS)))[: len(pos)])
    return acc.stats()


# ---------------------------------------------------------------------------------------------
# Feature extractors: name -> features [N, D] per feature set.


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
        lms_BFT = np.asarray(_log_mel(jnp.asarray(wav_BS)), np.float64)[: len(pos)]
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


# ---------------------------------------------------------------------------------------------
# Models and their identities (for the cache).


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


def _cache_path(cache_dir: str, key: dict) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return os.path.join(cache_dir, f"{digest}.npz")


def _save_cache(path: str, feats: dict[str, np.ndarray], meta: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + f".{os.getpid()}.tmp.npz"
    np.savez(tmp, __meta__=np.array(json.dumps(meta)), **feats)
    os.replace(tmp, path)  # atomic: a reader never sees a partial file


def _load_cache(path: str) -> tuple[dict[str, np.ndarray], dict] | None:
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path) as z:
            meta = json.loads(str(z["__meta__"]))
            return {k: z[k] for k in z.files if k != "__meta__"}, meta
    except (OSError, ValueError, KeyError):
        return None  # unreadable cache entry: recompute and overwrite


# ---------------------------------------------------------------------------------------------
# Evaluation.


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
    """Clip embeddings of every clip of the task -> ({feature set: [N, D]}, info)."""
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
    unit_sec = float(unit_sec) if unit_sec else default_unit_sec(task)
    if baseline == "logmel":
        model_id, layers = "logmel", None
    elif baseline == "random":
        model_id = {"random": load_model_config(config).to_dict(), "seed": seed}
    else:
        model_id = {"checkpoint": checkpoint_identity(checkpoint)}
    key = {
        "version": CACHE_VERSION,
        "model": model_id,
        "clips": task.fingerprint(),
        "unit_sec": unit_sec,
        "norm": norm if baseline != "logmel" else None,
        "layers": layers,
        "layer_mode": layer_mode if layers else None,
    }
    info = {"unit_sec": unit_sec, "norm": key["norm"], "cache_hit": False, "cache_file": None}
    if cache_dir:
        path = _cache_path(cache_dir, key)
        info["cache_file"] = path
        cached = _load_cache(path)
        if cached is not None:
            feats, meta = cached
            log(f"embeddings from cache {path}")
            return feats, {**info, **meta, "cache_hit": True, "extraction_s": 0.0}
    t0 = time.time()
    clips = Clips(task, unit_sec, progress)
    everything = np.arange(len(task))
    meta: dict = {}
    if baseline == "logmel":
        feats = logmel_features(clips, everything)
    else:
        stats = None
        if norm == "task" or baseline == "random":
            stats = task_norm_stats(clips, task.train_union)
            meta["norm_stats"] = stats.to_dict()
        if baseline == "random":
            runtime = random_runtime(load_model_config(config), stats, seed)
        else:
            from msm_mae_jax.features.runtime import Runtime

            runtime = Runtime.load(checkpoint)
            if stats is None:
                stats = runtime.norm_stats
                meta["norm_stats"] = stats.to_dict()
        meta["model"] = runtime.model_config.run_name_prefix
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
    meta["extraction_s"] = time.time() - t0
    if cache_dir:
        _save_cache(info["cache_file"], feats, meta)
    return feats, {**info, **meta}


def _fold_arrays(task: Task, fold, x_ND):
    return (
        x_ND[fold.train],
        task.y[fold.train],
        x_ND[fold.valid],
        task.y[fold.valid],
        x_ND[fold.test],
        task.y[fold.test],
    )


def probe_features(
    task: Task, x_ND: np.ndarray, seeds: Sequence[int] = (0, 1, 2), **probe_kw
) -> dict:
    """EVAR linear probe on every fold and seed -> {mean, std, per_seed, per_fold, ...}."""
    per_fold, epochs = [], []
    for fold in task.folds:
        r = probe.linear_probe_seeds(
            *_fold_arrays(task, fold, x_ND),
            seeds=tuple(seeds),
            multilabel=task.multilabel,
            num_classes=None if task.multilabel else task.num_classes,
            **probe_kw,
        )
        per_fold.append(r["per_seed"])
        epochs.append(r["best_epochs"])
    scores_FS = np.array(per_fold)  # [folds, seeds]
    multi_fold = len(task.folds) > 1
    out = {
        "mean": float(scores_FS.mean()),
        # fold tasks: spread over folds of the per-fold (seed-averaged) score; else over seeds
        "std": float(scores_FS.mean(1).std() if multi_fold else scores_FS[0].std()),
        "per_seed": [float(v) for v in scores_FS.mean(0)],
        "best_epochs": epochs if multi_fold else epochs[0],
    }
    if multi_fold:
        out["per_fold"] = {
            f.name: float(v) for f, v in zip(task.folds, scores_FS.mean(1), strict=True)
        }
    return out


def evaluate(
    task: Task,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    probe_kw: dict | None = None,
    log: Callable[[str], None] = print,
    **extract_kw,
) -> dict:
    """Embeddings (cached) + linear probes -> the results dict written by evaluate.py."""
    feats, info = extract(task, log=log, **extract_kw)
    t0 = time.time()
    metric = "mAP" if task.multilabel else "accuracy"
    results = {
        name: probe_features(task, x, seeds, **(probe_kw or {})) for name, x in feats.items()
    }
    probe_s = time.time() - t0
    main = list(results)[-1]
    out = {
        "task": task.summary(),
        "model": extract_kw.get("checkpoint") or f"baseline:{extract_kw.get('baseline')}",
        "metric": metric,
        metric: results[main],
        "features": main,
        "feature_dim": int(feats[main].shape[1]),
        "clips": task.folds[0].sizes()
        if len(task.folds) == 1
        else {f.name: f.sizes() for f in task.folds},
        "timing": {
            "extraction_s": round(float(info.get("extraction_s", 0.0)), 3),
            "probe_s": round(probe_s, 3),
            "cache_hit": bool(info["cache_hit"]),
        },
        "settings": {
            "unit_sec": info["unit_sec"],
            "norm": info["norm"],
            "norm_stats": info.get("norm_stats"),
            "seeds": list(seeds),
            "layers": extract_kw.get("layers"),
            "cache_file": info["cache_file"],
            **(probe_kw or {}),
        },
    }
    if len(results) > 1:
        out["layers"] = results
    return out


def format_table(result: dict) -> str:
    """A readable summary of `evaluate`'s result."""
    metric = result["metric"]
    rows = result.get("layers") or {result["features"]: result[metric]}
    t = result["task"]
    clips = result["clips"]
    split = (
        ", ".join(f"{k} {v}" for k, v in clips.items())
        if "train" in clips
        else f"{len(clips)} folds"
    )
    lines = [
        f"task {t['spec']}: {t['clips']} clips, {t['classes']} classes ({split})",
        f"model {result['model']}  features {result['features']} "
        f"({result['feature_dim']}-d)  unit_sec {result['settings']['unit_sec']:g}  "
        f"norm {result['settings']['norm']}",
    ]
    w = max(12, *(len(k) for k in rows))
    lines.append(f"{'features':<{w}}  {metric + ' (%)':>16}  per seed")
    for name, r in rows.items():
        per = " ".join(f"{100 * v:.2f}" for v in r["per_seed"])
        lines.append(f"{name:<{w}}  {100 * r['mean']:>7.2f} ± {100 * r['std']:5.2f}  {per}")
        for fold, v in r.get("per_fold", {}).items():
            lines.append(f"{'  ' + fold:<{w}}  {100 * v:>7.2f}")
    tm = result["timing"]
    lines.append(
        f"extraction {tm['extraction_s']:.1f} s"
        f"{' (cached)' if tm['cache_hit'] else ''}, probe {tm['probe_s']:.1f} s"
    )
    return "\n".join(lines)
