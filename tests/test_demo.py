"""`make demo` end to end, shortened: pre-train, export, probe the three models."""

import json

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
                "4",
                "--task",
                "synthetic:60",
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
    assert summary["pretraining"]["steps"] == 4
    for r in summary["results"].values():
        assert 0.0 <= r["accuracy"]["mean"] <= 1.0
    assert (work / "export" / "msm_mae.json").is_file()
    assert list((work / "train" / "figures").glob("*.png"))
    assert (work / "train" / "metrics.jsonl").read_text().strip()
