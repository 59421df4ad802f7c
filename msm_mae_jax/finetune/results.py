"""The results of a fine-tuning job in evaluate.py's shape, and their printed table.

    {"task": Task.summary(), "model": checkpoint, "metric": "accuracy" | "mAP",
     METRIC: {"mean", "std", "per_seed"[, "per_fold"]},   # test scores of the best models
     "valid": {"mean", "per_seed"}, "clips": sizes, "runs": [one dict per (fold, seed)],
     "timing": {...}, "settings": {...}, "skipped": {"count", "clips"}}

As the linear evaluation: single-split tasks report mean ± std over seeds; fold tasks the mean
over folds and seeds, std over folds of each fold's seed mean.
"""

from __future__ import annotations

import numpy as np

from msm_mae_jax.tasks.task import Task


def summarize(scores_FS: np.ndarray, fold_names: list[str]) -> dict:
    """[folds, seeds] scores -> {mean, std, per_seed[, per_fold]}."""
    multi = scores_FS.shape[0] > 1
    out = {
        "mean": float(scores_FS.mean()),
        "std": float(scores_FS.mean(1).std() if multi else scores_FS[0].std()),
        "per_seed": [float(v) for v in scores_FS.mean(0)],
    }
    if multi:
        out["per_fold"] = {n: float(v) for n, v in zip(fold_names, scores_FS.mean(1), strict=True)}
    return out


def collect(task: Task, checkpoint: str, runs: list[dict], timing: dict, settings: dict) -> dict:
    """Per-run results (fold-major, seeds inner) -> the job's results dict."""
    metric = "mAP" if task.multilabel else "accuracy"
    names = [f.name for f in task.folds]
    seeds = len(runs) // len(names)
    test = np.array([r["test"] for r in runs], np.float64).reshape(len(names), seeds)
    valid = np.array([r["valid"] for r in runs], np.float64).reshape(len(names), seeds)
    return {
        "task": task.summary(),
        "model": checkpoint,
        "metric": metric,
        metric: summarize(test, names),
        "valid": {"mean": float(valid.mean()), "per_seed": [float(v) for v in valid.mean(0)]},
        "clips": task.folds[0].sizes()
        if len(task.folds) == 1
        else {f.name: f.sizes() for f in task.folds},
        "runs": runs,
        "timing": timing,
        "settings": settings,
    }


def format_table(result: dict) -> str:
    """A readable summary of `collect`'s result."""
    metric, t, s = result["metric"], result["task"], result["settings"]
    clips = result["clips"]
    split = (
        ", ".join(f"{k} {v}" for k, v in clips.items())
        if "train" in clips
        else f"{len(clips)} folds"
    )
    unit = f"unit_sec {s['unit_sec']:g}" if s["unit_sec"] else "whole clips"
    mode = "frozen encoder" if s["freeze_encoder"] else "fine-tuned"
    lines = [
        f"task {t['spec']}: {t['clips']} clips, {t['classes']} classes ({split})",
        f"model {result['model']}  {mode} ({s['config']}), {unit}, norm {s['norm']}",
        f"{'':<14}  {metric + ' (%)':>16}  per seed",
    ]
    r = result[metric]
    per = " ".join(f"{100 * v:.2f}" for v in r["per_seed"])
    lines.append(f"{'test':<14}  {100 * r['mean']:>7.2f} ± {100 * r['std']:5.2f}  {per}")
    for fold, v in r.get("per_fold", {}).items():
        lines.append(f"{'  ' + fold:<14}  {100 * v:>7.2f}")
    v = result["valid"]
    per = " ".join(f"{100 * x:.2f}" for x in v["per_seed"])
    lines.append(f"{'valid (best)':<14}  {100 * v['mean']:>7.2f}          {per}")
    skipped = result.get("skipped") or {"count": 0, "clips": []}
    if skipped["count"]:
        names = ", ".join(c["name"] for c in skipped["clips"][:5])
        more = f" +{skipped['count'] - 5} more" if skipped["count"] > 5 else ""
        lines.append(
            f"skipped {skipped['count']} clip(s) that could not be decoded (in no split): "
            f"{names}{more}"
        )
    tm = result["timing"]
    lines.append(
        f"wall {tm['total_s']:.1f} s (reading and log-mels {tm['load_s']:.1f} s, "
        f"{len(result['runs'])} run(s) {tm['runs_s']:.1f} s)"
    )
    return "\n".join(lines)
