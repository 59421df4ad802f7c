"""`make demo` end to end, shortened: pre-train, export, probe the three models."""

import json
import math

import pytest

from msm_mae_jax.cli import demo


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    work = tmp_path / "demo"
    assert (
        demo.main(
            [
                "--workdir",
                str(work),
                "--config",
                "tiny",
                "--steps",
                "2",
                "--task",
                "synthetic:240",  # 48 test clips: enough to tell the rows from guessing
                "--seeds",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    for row in ("msm_mae (pre-trained)", "random init (same encoder)", "logmel baseline"):
        assert row in out
    summary = json.loads((work / "results.json").read_text())
    assert summary["pretraining"]["steps"] == 2
    # Guessing among 6 classes on 48 clips: 1/6, standard deviation 0.054. The encoders (random,
    # or after 2-4 steps nearly so) give 0.35-0.44, the log-mel statistics 0.54.
    chance, sd = 1 / 6, math.sqrt(1 / 6 * 5 / 6 / 48)
    results = summary["results"]
    assert all(r["clips"]["test"] == 48 for r in results.values())
    for name, r in results.items():
        assert r["accuracy"]["mean"] >= chance + 2 * sd, (name, r["accuracy"])
    assert results["logmel baseline"]["accuracy"]["mean"] >= chance + 3 * sd
    assert (work / "export" / "msm_mae.json").is_file()
    assert list((work / "train" / "figures").glob("*.png"))
    assert (work / "train" / "metrics.jsonl").read_text().strip()
