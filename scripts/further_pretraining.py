"""README "Results": further pre-training on real audio at a 2-core CPU's scale.

    python scripts/further_pretraining.py [--out runs/further] [--source-steps 600]
        [--steps 300] [--seeds 0,1] [--root ../shared/data/fsdd/recordings]

FSDD's six speakers split in two: the `fsdd_small` encoder is pre-trained on every recording
of george, jackson and lucas (the "source" corpus, 1,500 clips), then pre-trained further on
takes 5-49 of nicolas, theo and yweweler (the "target", 1,350 clips) with `--init-from`.
Compared with the same encoder pre-trained from scratch on the target for the same number of
steps, with the source encoder as it is, and with random weights, by the EVAR linear probe
on the target speakers' digits (train: takes 5-49, test: takes 0-4, 150 clips; 1 s clips;
3 classifier seeds). Every arm runs with each pre-training seed (the random weights drawn
with it): mean ± std over the seeds. Training labels are never used before the probe.
Writes OUT/results.json and prints the table; run again to reuse what is done.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = ("george", "jackson", "lucas")
TARGET = ("nicolas", "theo", "yweweler")
TRAIN_TAKES = ("[5-9]", "[1-4][0-9]")  # takes 5-49: the probe's test takes 0-4 stay unseen


def _pattern(speakers, takes=("*",)) -> str:
    return ",".join(f"*_{s}_{t}.wav" for s in speakers for t in takes)


def _run(cmd: list[str], log: str) -> float:
    """Runs `cmd` (output to `log`); its wall time. Exits with its output's tail on failure."""
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    with open(log, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if r.returncode:
        sys.exit(f"failed ({r.returncode}); see {log}:\n" + open(log).read()[-3000:])
    return time.time() - t0


def _train(out: str, name: str, seed: int, steps: int, pattern: str, root: str, init="") -> dict:
    wd = os.path.join(out, name)
    flags = {
        "seed": seed,
        "data.source": f"files:{root}",
        "data.file_pattern": pattern,
        "total_steps": steps,
        "warmup_steps": steps // 10,
        "ckpt_every_steps": steps,
        "log_every_steps": 50,
        "figure_every_steps": 0,
        "init_from": init,
    }
    done = os.path.join(wd, "export")
    if not os.path.isdir(done):
        cmd = [sys.executable, "-m", "msm_mae_jax", "train", "--config", "fsdd_small"]
        cmd += ["--workdir", wd, *[f"--config.{k}={v}" for k, v in flags.items()]]
        wall = _run(cmd, os.path.join(out, f"{name}.log"))
        _run([sys.executable, "-m", "msm_mae_jax", "export", "--workdir", wd, "--out", done],
             os.path.join(out, f"{name}_export.log"))  # fmt: skip
        with open(os.path.join(wd, "wall.json"), "w") as f:
            json.dump({"train_s": wall}, f)
    with open(os.path.join(wd, "wall.json")) as f:
        wall = json.load(f)["train_s"]
    stats = json.load(open(os.path.join(wd, "norm_stats.json")))
    loss = [json.loads(x)["loss"] for x in open(os.path.join(wd, "metrics.jsonl"))][-1]
    return {"model": done, "train_s": wall, "norm_stats": stats, "final_loss": loss}


def _random(out: str, seed: int) -> dict:
    """The fsdd_small encoder with the random weights of seed `seed`, as an export."""
    path = os.path.join(out, f"random_s{seed}")
    if not os.path.isdir(path):
        import jax

        from msm_mae_jax.core.config_files import load_config
        from msm_mae_jax.data.normalization import NormStats
        from msm_mae_jax.model import artifact, mae
        from msm_mae_jax.model.config import ModelConfig

        mc = ModelConfig.from_dict(load_config("fsdd_small").model)
        enc = mae.init_params(mc, jax.random.key(seed))["encoder"]
        # The probe normalises with the task's statistics (EVAR): these are not used.
        artifact.save_model_dir(path, mc, enc, NormStats(0.0, 1.0), f"random init {seed}")
    return {"model": path}


def _probe(out: str, name: str, model: str, csv: str) -> dict:
    res = os.path.join(out, "eval", f"{name}.json")
    if not os.path.isfile(res):
        cmd = [sys.executable, "-m", "msm_mae_jax", "eval", "--checkpoint", model]
        cmd += ["--task", f"csv:{csv}", "--label", "digit", "--unit-sec", "1.0"]
        cmd += ["--out", res, "--no-progress"]
        _run(cmd, os.path.join(out, "eval", f"{name}.log"))
    acc = json.load(open(res))["accuracy"]
    return {"accuracy": acc["mean"], "classifier_std": acc["std"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/further")
    p.add_argument("--source-steps", type=int, default=600)
    p.add_argument("--steps", type=int, default=300, help="target steps (further and scratch)")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--root", default="../shared/data/fsdd/recordings")
    a = p.parse_args(argv)
    out, root = os.path.abspath(a.out), os.path.abspath(a.root)
    seeds = [int(s) for s in a.seeds.split(",")]
    os.makedirs(os.path.join(out, "eval"), exist_ok=True)
    csv = os.path.join(out, "eval", "target_digits.csv")
    _run([sys.executable, "scripts/make_fsdd_csv.py", csv, "--root", root, "--speakers",
          ",".join(TARGET)], os.path.join(out, "eval", "csv.log"))  # fmt: skip
    target = _pattern(TARGET, TRAIN_TAKES)
    rows: dict[str, list[dict]] = {}
    for seed in seeds:
        src = _train(out, f"source_s{seed}", seed, a.source_steps, _pattern(SOURCE), root)
        wd = os.path.join(out, f"source_s{seed}")
        arms = {
            "source only (no further pre-training)": src,
            "further pre-trained (source, then target)": _train(
                out, f"further_s{seed}", seed, a.steps, target, root, init=wd
            ),
            "from scratch on the target": _train(
                out, f"scratch_s{seed}", seed, a.steps, target, root
            ),  # fmt: skip
            "random weights": _random(out, seed),
        }
        for arm, info in arms.items():
            name = os.path.basename(os.path.dirname(info["model"])) if "train_s" in info else (
                os.path.basename(info["model"]))  # fmt: skip
            rows.setdefault(arm, []).append(
                {"seed": seed, **info, **_probe(out, name, info["model"], csv)}
            )
    table = []
    for arm, runs in rows.items():
        accs = [r["accuracy"] for r in runs]
        table.append({
            "arm": arm,
            "accuracy_mean": statistics.mean(accs),
            "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "runs": runs,
        })  # fmt: skip
    settings = {"source_steps": a.source_steps, "target_steps": a.steps, "seeds": seeds,
                "source_speakers": SOURCE, "target_speakers": TARGET}  # fmt: skip
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"settings": settings, "table": table}, f, indent=2)
    print(f"\n| encoder (probe: target speakers' digits, accuracy %, mean ± std over seeds "
          f"{seeds}) | accuracy | per seed |\n| --- | --- | --- |")  # fmt: skip
    for row in table:
        per = " / ".join(f"{100 * r['accuracy']:.2f}" for r in row["runs"])
        print(f"| {row['arm']} | {100 * row['accuracy_mean']:.2f} ± "
              f"{100 * row['accuracy_std']:.2f} | {per} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
