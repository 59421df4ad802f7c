"""Linear evaluation of a frozen encoder (EVAR protocol): embeddings, probes, results.

`evaluate` = clip embeddings of the task (`embeddings.extract`: clips read once and fitted to
`unit_sec` as EVAR, task or checkpoint normalisation, final output or chosen blocks,
baselines, the cache; clips that cannot be decoded are skipped, left out of every split and
reported), then `probe.linear_probe` per fold and seed (EVAR's 2-pass runs: seeds 42, 43, 44;
the embeddings once, their random crops drawn with the first seed); mean ± std over seeds
(single split) or over folds (fold tasks, each fold's score the mean of its seeds).

Shape letters: N clips, D width.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from msm_mae_jax.evaluation import probe
from msm_mae_jax.evaluation.embeddings import DEFAULT_CACHE_DIR, extract
from msm_mae_jax.evaluation.protocol import EVAR_SEEDS, Model, Protocol
from msm_mae_jax.tasks.task import Task, report_leaks

MAX_NAMED_SKIPS = 5  # skipped clips named in the printed table (all are in the results)


def _fold_arrays(task: Task, fold, x_ND, x_train_ND):
    return (
        x_train_ND[fold.train],
        task.y[fold.train],
        x_train_ND[fold.valid],
        task.y[fold.valid],
        x_ND[fold.test],
        task.y[fold.test],
    )


def probe_features(
    task: Task,
    x_ND: np.ndarray,
    seeds: Sequence[int] = EVAR_SEEDS,
    x_train_ND: np.ndarray | None = None,
    **probe_kw,
) -> dict:
    """EVAR linear probe on every fold and seed -> {mean, std, per_seed, per_fold, ...}.

    `x_ND`: the clips' test fits; `x_train_ND` (default `x_ND`): their training fits."""
    x_train_ND = x_ND if x_train_ND is None else x_train_ND
    per_fold, epochs = [], []
    for fold in task.folds:
        r = probe.linear_probe_seeds(
            *_fold_arrays(task, fold, x_ND, x_train_ND),
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
    model: Model,
    protocol: Protocol,
    *,
    unit_sec: float | None = None,
    batch_size: int = 32,
    cache_dir: str | None = DEFAULT_CACHE_DIR,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Embeddings (cached) + linear probes of `model` on `task` under `protocol` -> the
    results dict that `eval` writes.

    `unit_sec`: the clip length (None: the longest clip, <= 10 s). The random crops of
    training clips are drawn with the first seed. Clips that could not be decoded are left
    out of every split; the results name them (`skipped`: count and clips)."""
    seeds = tuple(protocol.seeds)
    feats, info = extract(
        task,
        checkpoint=model.checkpoint,
        baseline=model.baseline,
        config=model.config,
        layers=protocol.layers,
        layer_mode=protocol.layer_mode,
        norm=protocol.norm,
        unit_sec=unit_sec,
        batch_size=batch_size,
        cache_dir=cache_dir,
        crop_seed=int(seeds[0]),
        progress=progress,
        log=log,
    )
    skipped = info.get("skipped") or []
    if skipped:
        log(f"skipped {len(skipped)} clip(s) that could not be decoded")
        task = task.without([s["index"] for s in skipped])
    checks = report_leaks(task, log)  # repeated clips, test clips also trained on
    probe_kw = dict(protocol.probe_kw)
    t0 = time.time()
    metric = "mAP" if task.multilabel else "accuracy"
    train_rows = getattr(feats, "train_rows", lambda name: feats[name])
    results = {
        name: probe_features(task, x, seeds, train_rows(name), **probe_kw)
        for name, x in feats.items()
    }
    probe_s = time.time() - t0
    main = list(results)[-1]
    out = {
        "task": task.summary(),
        "model": model.checkpoint or f"baseline:{model.baseline}",
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
            "run_name_prefix": info.get("model"),  # the encoder's input and patch size
            "fit": "evar",  # end padding; random crop (train/valid), start crop (test)
            "crop_seed": info.get("crop_seed"),
            "layers": protocol.layers,
            "cache_file": info["cache_file"],
            **probe_kw,
        },
    }
    out["skipped"] = {"count": len(skipped), "clips": skipped}
    out["task_checks"] = checks
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
    skipped = result.get("skipped") or {"count": 0, "clips": []}
    if skipped["count"]:
        named = [f"{c['name']} ({c['reason']})" for c in skipped["clips"][:MAX_NAMED_SKIPS]]
        more = skipped["count"] - len(named)
        lines.append(
            f"skipped {skipped['count']} clip(s) that could not be decoded (in no split): "
            + "; ".join(named)
            + (f"; +{more} more in the results file" if more > 0 else "")
        )
    tm = result["timing"]
    lines.append(
        f"extraction {tm['extraction_s']:.1f} s"
        f"{' (cached)' if tm['cache_hit'] else ''}, probe {tm['probe_s']:.1f} s"
    )
    return "\n".join(lines)
