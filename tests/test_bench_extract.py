"""bench/extract.py: its arms do the same work (checked before timing) and its figures add up."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.extract import FEATURE_RTOL, check_same_features
from tests.bench_utils import assert_refused, run_main

pytest.importorskip("torch", reason="bench/extract.py's PyTorch arm needs torch")

ARGS = ["--variant", "tiny", "--batch", "2", "--seconds", "3.3", "--repeats", "2"]


def _run(tmp_path, prelude: str = ""):
    return run_main("bench.extract", ARGS, tmp_path / "r.json", prelude)


def test_check_same_features():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 5, 8)).astype(np.float32)
    assert check_same_features(a, a + 1e-7) < FEATURE_RTOL
    with pytest.raises(SystemExit, match="differ in shape"):
        check_same_features(a, a[:, :4])
    with pytest.raises(SystemExit, match="different work"):
        check_same_features(a, a + 1e-2)
    b = a.copy()
    b[0, 0, 0] = np.nan
    with pytest.raises(SystemExit, match="different work"):
        check_same_features(b, a)


def test_end_to_end_figures_add_up(tmp_path):
    p = _run(tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["frames_per_clip"] == 331  # 3.3 s at 16 kHz, hop 160, centred
    assert r["units_per_clip_official"] == 331 // 208 + 1
    assert r["feature_shape"] == [2, -(-331 // 16), 5 * 64]  # ceil(frames / 16), F x D (tiny)
    assert r["feature_max_rel_diff"] <= FEATURE_RTOL
    assert r["jax_over_torch"] == pytest.approx(r["torch_s"] / r["jax_s"])
    assert len(r["jax_s_all"]) == len(r["torch_s_all"]) == 2
    assert r["audio_s_per_s"] == pytest.approx(2 * 3.3 / r["jax_s"])
    assert "features equal to JAX's within" in p.stdout


@pytest.mark.parametrize(
    "plant",
    [
        # the PyTorch arm's log-mel off by a constant: a different input to the encoder
        "o = B.TorchArm.log_mel; B.TorchArm.log_mel = lambda self, w: o(self, w) + 0.5",
        # the PyTorch arm on other weights than the JAX arm's
        "from msm_mae_jax.model import convert as C\no = C.params_to_state_dict\n"
        "C.params_to_state_dict = lambda p, c: {k: v * 1.01 for k, v in o(p, c).items()}",
        # the check run on the official's shuffled token order
        "o = B.TorchArm.encode\nB.TorchArm.encode = lambda self, w, shuffle=True: o(self, w, True)",
    ],
    ids=["log_mel", "weights", "shuffled"],
)
def test_arms_doing_different_work_fail(tmp_path, plant):
    p = _run(tmp_path, plant)
    assert_refused(p, tmp_path / "r.json")
