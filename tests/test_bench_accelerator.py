"""bench/accelerator.py runs on CPU with `--variant tiny` and its figures add up."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from train_utils import xla_flags

from bench.train_step import analytic_flops
from msm_mae_jax.core.config_files import load_config
from msm_mae_jax.model.config import ModelConfig
from tests.conftest import ROOT


def test_flop_count_of_the_documented_step():
    # ViT-B 80x208p16x16, mask 0.75, no [CLS], decoder 512 x 8: 748.7 GFLOP per batch of 64
    # (matmuls only, backward = 2 x forward but the patch embedding's input gradient).
    c = ModelConfig(**load_config("base_208").model.to_dict())
    assert analytic_flops(c, 64)["step"] / 1e9 == pytest.approx(748.7, abs=0.05)


@pytest.mark.slow
def test_accelerator_benchmark_tiny_on_cpu(tmp_path):
    out = tmp_path / "acc.json"
    env = dict(os.environ, XLA_FLAGS=xla_flags(2))
    cmd = [sys.executable, "bench/accelerator.py", "--variant", "tiny", "--batches", "8,9"]
    cmd += ["--steps", "2", "--loop-steps", "4", "--loop-clips", "8", "--peak-tflops", "0.5"]
    proc = subprocess.run(
        [*cmd, "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["num_devices"] == 2 and r["peak_bf16_flops_per_device"] == 0.5e12
    timed, skipped = r["steps"]
    assert skipped == {"batch": 9, "skipped": "not divisible by 2 devices"}
    flops = analytic_flops(ModelConfig(**load_config("tiny").model.to_dict()), 8)["step"]
    assert timed["batch"] == 8 and timed["step_s"] > 0 and timed["compile_s"] > 0
    assert math.isclose(timed["samples_per_s"], 8 / timed["step_s"], rel_tol=1e-9)
    assert math.isclose(timed["flops_per_s"], flops / timed["step_s"], rel_tol=1e-9)
    assert math.isclose(timed["mfu"], timed["flops_per_s"] / (2 * 0.5e12), rel_tol=1e-9)
    assert math.isfinite(timed["loss"])
    assert r["best_batch"] == 8
    loop = r["loop"]
    assert (loop["batch"], loop["steps"], loop["clips"]) == (8, 4, 8)
    assert loop["log_rows"] >= 2 and math.isfinite(loop["final_loss"])
    assert loop["samples_per_s"] > 0 and 0.0 <= loop["data_wait_fraction"] < 1.0
    table = proc.stdout
    assert "batch   samples/s   TFLOP/s    MFU" in table
    assert "batch     9: skipped (not divisible by 2 devices)" in table
    assert f"best batch 8: MFU {100 * timed['mfu']:.1f}%" in table
