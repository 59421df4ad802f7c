"""Host input rate: samples per CPU-second of the real training iterator, per source.

Times `data/pipeline.train_iterator` (ViT-B 80x208 crops, `configs/msm_mae.py:base_208`,
global batch 64) in its steady state: after `--warmup` batches, `--batches` batches are
pulled and the process's CPU time (user + sys of all its threads, `getrusage`) over that
window gives samples per CPU-second, i.e. per core; wall-clock samples/s is printed too
(other processes share the cores, so the wall rate says less). Arms, each in a fresh process:

- files:        10 s 16 kHz mono FLAC clips (`common.write_synthetic_corpus`), host log-mel;
- files_device: the same with `data.logmel_on_device` (the host only decodes the crops);
- lms:          `lms:` shards that `prepare` writes from those clips (float16).

Per-stage figures of the current code: the source alone (decoding/reading the crops, no
front end) and the host front end alone (log-mel, mask, normalise of a fixed batch).
`--baseline-ref REF` measures the same arms with the code of git ref REF (exported with
`git archive`; its own `prepare` writes its shards) in the same run, for the ratios.

Usage: python bench/input_rate.py [--json out.json] [--baseline-ref main] [--clips 512]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARMS = ("files", "files_device", "lms")
TARGETS = {"files": 1500.0, "lms": 8000.0}  # samples per CPU-second


def _cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rate(next_batch, warmup: int, batches: int) -> dict:  # noqa: ANN001
    """Samples per CPU-second and per wall second of `batches` calls after `warmup`."""
    first = None
    for _ in range(warmup):
        first = next_batch()
    t0, c0 = time.perf_counter(), _cpu_seconds()
    n = 0
    for _ in range(batches):
        n += len(next_batch()["frames"])
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    return {
        "samples": n,
        "wall_s": wall,
        "cpu_s": cpu,
        "samples_per_cpu_s": n / cpu,
        "samples_per_s": n / wall,
        "cores_busy": cpu / wall,
        "keys": sorted(first) if first else [],
    }


def _config(source: str, batch: int, device: bool):  # noqa: ANN202
    from configs.msm_mae import get_config

    c = get_config("base_208")
    c.batch_size = batch
    c.data.source = source
    if device:
        c.data.logmel_on_device = True
    return c


def _stages(config, warmup: int, batches: int) -> dict:  # noqa: ANN001
    """The source alone, then the host front end alone (current code only)."""
    from msm_mae_jax.data import pipeline
    from msm_mae_jax.data.normalization import NormStats
    from msm_mae_jax.data.sources import open_source
    from msm_mae_jax.data.tf_setup import tensorflow

    tf = tensorflow()
    source = open_source(config.data.source, config.data)
    ds = source.batches(
        seed=0, process_index=0, process_count=1, local_batch=int(config.batch_size),
        start_step=0, frames=int(config.model.input_size[1]),
    )  # fmt: skip
    opts = pipeline._options()
    it = iter(ds.prefetch(2).with_options(opts).as_numpy_iterator())
    out = {"source": _rate(lambda: next(it), warmup, batches)}
    fixed = tf.data.Dataset.from_tensors(next(it)).repeat()
    front = pipeline._frontend_map(fixed, NormStats(-10.0, 4.0))  # as train_iterator maps it
    it2 = iter(front.prefetch(2).with_options(opts).as_numpy_iterator())
    out["frontend"] = _rate(lambda: next(it2), 2, max(4, batches // 2))
    return out


def run_arm(arm: str, corpus: str, batch: int, warmup: int, batches: int, stages: bool) -> dict:
    """One arm in this process: prepares what it needs, then times the iterator."""
    from msm_mae_jax.data import pipeline, prepare
    from msm_mae_jax.data.normalization import NormStats

    audio_dir = os.path.join(corpus, "audio")
    if arm == "lms":
        tag = os.environ.get("INPUT_RATE_TAG", "current")
        lms_dir = os.path.join(corpus, f"lms-{tag}")
        if not os.path.isfile(os.path.join(lms_dir, "manifest.json")):
            prepare.prepare(audio_dir, lms_dir, shard_size=256, workers=2, progress=False)
        source = f"lms:{lms_dir}"
    else:
        source = f"files:{audio_dir}"
    config = _config(source, batch, arm == "files_device")
    it = pipeline.train_iterator(config, NormStats(-10.0, 4.0))
    result = {"arm": arm, **_rate(it.__next__, warmup, batches)}
    if stages:
        result["stages"] = _stages(config, warmup, batches)
    return result


def _arm_in_subprocess(arm: str, args: argparse.Namespace, code: str, tag: str) -> dict:
    cmd = [sys.executable, __file__, "--_arm", arm, "--_code", code, "--corpus", args.corpus]
    cmd += ["--batch", str(args.batch), "--warmup", str(args.warmup)]
    cmd += ["--batches", str(args.batches)] + (["--_stages"] if tag == "current" else [])
    env = dict(os.environ, INPUT_RATE_TAG=tag, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError(f"arm {arm} ({tag}) failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


def _export(ref: str, dest: str) -> None:
    """The package and configs of git ref `ref`, as files under `dest`."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "msm_mae_jax", "configs"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)


def _summary(result: dict) -> str:
    lines = [
        f"{result['cores']} cores, batch {result['batch']}, {result['clips']} clips of 10 s "
        f"(samples per CPU-second = per core; wall = samples/s on this shared machine)"
    ]
    for arm in result["arms"]:
        for tag in ("current", "baseline"):
            r = result.get(tag, {}).get(arm)
            if r:
                lines.append(
                    f"  {arm:13s} {tag:8s}: {r['samples_per_cpu_s']:8.0f} /core-s "
                    f"{r['samples_per_s']:8.0f} /s wall ({r['cores_busy']:.2f} cores busy)"
                )
        ratio = result.get("ratio_vs_baseline", {}).get(arm)
        target = TARGETS.get(arm.split("_")[0])
        if ratio:
            lines.append(f"  {arm:13s} current / baseline: {ratio:.2f}x")
        if target and arm in result.get("current", {}):
            rate = result["current"][arm]["samples_per_cpu_s"]
            lines.append(f"  {arm:13s} current / target {target:.0f}: {rate / target:.2f}x")
        stages = result.get("current", {}).get(arm, {}).get("stages")
        if stages:
            lines.append(
                f"  {arm:13s} stages: source alone {stages['source']['samples_per_cpu_s']:.0f}"
                f" /core-s, host front end alone {stages['frontend']['samples_per_cpu_s']:.0f}"
                " /core-s"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--corpus", default=os.path.join(tempfile.gettempdir(), "msm_mae_input_rate"))
    p.add_argument("--clips", type=int, default=512, help="10 s FLAC clips in the corpus")
    p.add_argument("--batch", type=int, default=64, help="global batch")
    p.add_argument("--warmup", type=int, default=10, help="batches before the clock starts")
    p.add_argument("--batches", type=int, default=40, help="timed batches per arm")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--baseline-ref", default="", help="git ref of the baseline code (e.g. main)")
    p.add_argument("--json", default="", help="write the numbers to this file")
    p.add_argument("--_arm", default="", help=argparse.SUPPRESS)
    p.add_argument("--_code", default=str(ROOT), help=argparse.SUPPRESS)
    p.add_argument("--_stages", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._arm:  # a child: measure one arm with the code in --_code, print JSON, exit
        sys.path.insert(0, args._code)
        res = run_arm(args._arm, args.corpus, args.batch, args.warmup, args.batches, args._stages)
        print(json.dumps(res), flush=True)
        os._exit(0)  # tf.data threads can outlive the iterator; nothing is left to clean up

    sys.path.insert(0, str(ROOT))
    from bench.common import write_synthetic_corpus

    write_synthetic_corpus(os.path.join(args.corpus, "audio"), args.clips)
    arms = [a for a in args.arms.split(",") if a]
    result: dict = {"cores": os.cpu_count(), "batch": args.batch, "clips": args.clips}
    result.update(arms=arms, variant="base_208", warmup=args.warmup, batches=args.batches)
    result["current"] = {a: _arm_in_subprocess(a, args, str(ROOT), "current") for a in arms}
    if args.baseline_ref:
        with tempfile.TemporaryDirectory(prefix="input_rate_base_") as code:
            _export(args.baseline_ref, code)
            tag = "baseline-" + args.baseline_ref.replace("/", "_")
            base_arms = [a for a in arms if a != "files_device"]  # the option is new
            result["baseline"] = {a: _arm_in_subprocess(a, args, code, tag) for a in base_arms}
        result["baseline_ref"] = args.baseline_ref
        result["ratio_vs_baseline"] = {
            a: result["current"][a]["samples_per_cpu_s"] / r["samples_per_cpu_s"]
            for a, r in result["baseline"].items()
        }
    cur = result["current"]
    for arm, key in (("files", "files"), ("lms", "lms"), ("files_device", "files_device")):
        if arm in cur:
            result[f"{key}_samples_per_s_per_core"] = cur[arm]["samples_per_cpu_s"]
            result[f"{key}_samples_per_s_wall"] = cur[arm]["samples_per_s"]
    result["load_avg"] = os.getloadavg()[0]
    print(_summary(result))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
