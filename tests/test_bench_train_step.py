"""bench/train_step.py: its arms do the same work (checked before timing) and its figures add up."""

from __future__ import annotations

import json

import pytest

from bench.train_step import LOSS_RTOL, check_same_loss
from tests.bench_utils import assert_refused, run_main

pytest.importorskip("torch", reason="bench/train_step.py's PyTorch arm needs torch")

ARGS = ["--variant", "tiny", "--batch", "8", "--torch", "--repeats", "2", "--steps", "1"]


def _run(tmp_path, prelude: str = ""):
    return run_main("bench.train_step", ARGS, tmp_path / "r.json", prelude)


def test_check_same_loss():
    assert check_same_loss(1.0, 1.0 + 1e-7, "float32") < LOSS_RTOL["float32"]
    with pytest.raises(SystemExit, match="different work"):
        check_same_loss(1.0, 1.001, "float32")
    assert check_same_loss(1.0, 1.001, "bfloat16") < LOSS_RTOL["bfloat16"]
    with pytest.raises(SystemExit, match="different work"):
        check_same_loss(float("nan"), 1.0, "float32")


def test_end_to_end_figures_add_up(tmp_path):
    p = _run(tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["first_loss_rel_diff"] <= LOSS_RTOL["float32"]
    assert r["jax_over_torch"] == pytest.approx(r["torch_step_s"] / r["step_s"])
    assert r["samples_per_s"] == pytest.approx(8 / r["step_s"])
    assert len(r["torch_step_s_all"]) == 2
    assert "first-step loss equal to JAX's within" in p.stdout


@pytest.mark.parametrize(
    "plant",
    [
        # the PyTorch arm on other weights than the JAX arm's
        "from msm_mae_jax.model import convert as C\no = C.params_to_state_dict\n"
        "C.params_to_state_dict = lambda p, c: {k: v * 1.01 for k, v in o(p, c).items()}",
        # the PyTorch arm's first step on its own random masks
        "o = B.TorchStep._step\nB.TorchStep._step = lambda self, noise=None: o(self)",
        # the PyTorch arm on another batch
        "o = B.TorchStep.__init__\n"
        "B.TorchStep.__init__ = lambda self, c, t, p, lms, n: o(self, c, t, p, -lms, n)",
    ],
    ids=["weights", "masks", "batch"],
)
def test_arms_doing_different_work_fail(tmp_path, plant):
    p = _run(tmp_path, plant)
    assert_refused(p, tmp_path / "r.json")
