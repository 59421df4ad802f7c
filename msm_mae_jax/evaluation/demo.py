"""The end-to-end demo behind `make demo` and `msm-mae demo`: pre-train, export, probe, compare
with baselines.

    set_steps(config, 200, given=())
    summary = run(config, "runs/demo", spec="configs/msm_mae.py:demo", task="synthetic:1800")

1. pre-trains the model of `config` (the tiny MSM-MAE on the built-in synthetic audio, used
   unlabelled) in WORKDIR/train,
2. exports the encoder artifact to WORKDIR/export,
3. runs the EVAR linear probe on held-out labelled clips (`task`) for the exported model, the
   `logmel` baseline and the same encoder with random weights,
4. writes WORKDIR/results.json (the task, the pre-training, every probe result) and returns it.
The same code uses a GPU/TPU when jax sees one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection

import ml_collections

from msm_mae_jax.core import fs, outputs
from msm_mae_jax.evaluation import linear
from msm_mae_jax.evaluation.protocol import Model, Protocol
from msm_mae_jax.model.config import ModelConfig
from msm_mae_jax.tasks import specs
from msm_mae_jax.train import export, loop

# The intervals that follow the number of steps (divisor), unless set on their own.
STEP_INTERVALS = {"ckpt_every_steps": 2, "figure_every_steps": 3, "probe.every_steps": 3}
RESULTS_FILE = "results.json"
ROWS = ("msm_mae (pre-trained)", "random init (same encoder)", "logmel baseline")


def set_steps(config: ml_collections.ConfigDict, steps: int, given: Collection[str]) -> None:
    """`steps` pre-training steps; the checkpoint, figure and probe intervals a half, a third
    and a third of them (at least 1), except the dotted keys in `given`."""
    config.total_steps = steps
    for key, divisor in STEP_INTERVALS.items():
        if key not in given:
            group, _, name = key.rpartition(".")
            (config[group] if group else config)[name] = max(1, steps // divisor)


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    spec: str,
    task: str,
    seeds: int = 3,
    log: Callable[[str], None] = print,
) -> dict:
    """Steps 1-4 of the module docstring in `workdir` (`spec` names the config in the logs
    and the results); the summary written to WORKDIR/results.json."""
    t_start = time.time()
    work = fs.absolute(workdir)
    train_dir, export_dir = fs.join(work, "train"), fs.join(work, "export")
    steps = int(config.total_steps)

    log(f"[demo] 1/3 pre-training {spec} for {steps} steps in {train_dir}")
    t0 = time.time()
    final = loop.train_and_evaluate(config, train_dir)
    train_s = time.time() - t0

    log(f"[demo] 2/3 exporting the encoder to {export_dir}")
    export.export(train_dir, export_dir)

    log(f"[demo] 3/3 linear probe on {task}: model vs baselines")
    labelled = specs.parse_task(task)
    protocol = Protocol(seeds=tuple(range(seeds)))
    models = dict(
        zip(
            ROWS,
            (
                Model(checkpoint=export_dir),
                # the encoder as configured here, overrides included
                Model(baseline="random", config=ModelConfig.from_dict(config.model)),
                Model(baseline="logmel"),
            ),
            strict=True,
        )
    )
    probe_log = lambda m: log(f"[demo]   {m}")  # noqa: E731
    results = {
        name: linear.evaluate(
            labelled, model, protocol, progress=False, cache_dir=None, log=probe_log
        )
        for name, model in models.items()
    }
    summary = {
        "task": labelled.summary(),
        "pretraining": {
            "config": spec,
            "steps": steps,
            "seconds": round(train_s, 1),
            "final_metrics": final,
        },
        "results": results,
        "wall_s": round(time.time() - t_start, 1),
    }
    text = json.dumps(summary, indent=2, default=float)
    outputs.write_text(fs.join(work, RESULTS_FILE), text, "--workdir")
    return summary


def table(summary: dict) -> str:
    """The accuracy of each model (mean ± std over seeds) and its feature width."""
    rows = [f"{'model':<28} {'accuracy (%)':>16}  feature dim"]
    for name, r in summary["results"].items():
        acc = r["accuracy"]
        rows.append(
            f"{name:<28} {100 * acc['mean']:>7.2f} ± {100 * acc['std']:5.2f}  "
            f"{r['feature_dim']:>11}"
        )
    return "\n".join(rows)
