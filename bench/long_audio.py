"""Memory and speed of `msm-mae embed` on long recordings against a short one.

Writes 16 kHz mono FLAC recordings (tones in noise) of `--minutes` (default 1, 10 and 180)
into a temporary folder, one at a time, each deleted after use, and a randomly initialised
encoder of `--variant` (default tiny) as an export. Each recording is embedded by the real
command in a process of its own; its peak resident memory (`ru_maxrss` of that one child) and
wall time are reported. The baseline is the first (shortest) recording in the same run: the
ratio of the peaks says whether memory grows with the length. A recording of a few chunks
(33 s each) runs smaller calls than a long one, whose calls have their full size (8 chunks on
one CPU device) from about 5 minutes on; from there on the peak stays flat.

Usage: python bench/long_audio.py [--minutes 1,10,180] [--variant tiny] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_CHILD = """
import resource, subprocess, sys, time
t0 = time.perf_counter()
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
wall = time.perf_counter() - t0
if r.returncode:
    sys.exit(r.stderr[-3000:])
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB; the one child
print(peak, wall)
"""


def write_recording(path: str, minutes: float, seed: int = 0) -> None:
    """Tones in noise, written a minute at a time (never the whole recording in memory)."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(seed)
    sr, left = 16000, int(minutes * 60 * 16000)
    with sf.SoundFile(path, "w", sr, 1, subtype="PCM_16") as f:
        k = 0
        while left > 0:
            n = min(left, 60 * sr)
            t = np.arange(n) / sr
            y = 0.1 * rng.standard_normal(n) + 0.2 * np.sin(2 * np.pi * (200 + 10 * k) * t)
            f.write(y.astype(np.float32))
            left, k = left - n, k + 1


def write_model(path: str, variant: str) -> None:
    import jax

    from bench.common import model_config_for
    from msm_mae_jax.data.normalization import NormStats
    from msm_mae_jax.model import artifact, mae

    cfg = model_config_for(variant)
    params = mae.init_params(cfg, jax.random.key(0))["encoder"]
    artifact.save_model_dir(path, cfg, params, NormStats(-7.0, 4.0), source="random init")


def embed(model: str, audio: str, out: str) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of `msm-mae embed` on one file."""
    cmd = [sys.executable, "-m", "msm_mae_jax", "embed", "--checkpoint", model, "--out", out]
    cmd += ["--no-progress", audio]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        [sys.executable, "-c", _CHILD, *cmd], capture_output=True, text=True, env=env
    )
    if p.returncode:
        raise SystemExit(f"msm-mae embed {audio} failed: {p.stderr[-3000:]}")
    peak_kib, wall = p.stdout.split()
    return int(peak_kib) / 1024, float(wall)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", default="1,10,180", help="comma-separated lengths")
    ap.add_argument("--variant", default="tiny")
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)
    lengths = [float(m) for m in a.minutes.split(",")]
    res: dict = {"variant": a.variant, "runs": []}
    with tempfile.TemporaryDirectory(prefix="msm_mae_long_audio_") as tmp:
        model = os.path.join(tmp, "model")
        write_model(model, a.variant)
        for minutes in lengths:
            audio = os.path.join(tmp, "recording.flac")
            write_recording(audio, minutes)
            peak, wall = embed(model, audio, os.path.join(tmp, "out.npz"))
            os.remove(audio)
            run = {"minutes": minutes, "peak_rss_mb": round(peak, 1), "wall_s": round(wall, 1)}
            run["audio_s_per_s"] = round(minutes * 60 / wall, 1)
            run["peak_ratio"] = (
                round(peak / res["runs"][0]["peak_rss_mb"], 3) if res["runs"] else 1.0
            )
            res["runs"].append(run)
            print(
                f"msm-mae embed, {a.variant}, {minutes:g} min: peak RSS {peak:.0f} MB "
                f"({run['peak_ratio']:.2f}x the {lengths[0]:g}-min run), {wall:.1f} s wall, "
                f"{run['audio_s_per_s']:.0f} audio s/s",
                flush=True,
            )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
