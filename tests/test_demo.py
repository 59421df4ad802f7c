"""`make demo` end to end, shortened: pre-train, export, probe the three models; config
overrides as for `msm-mae train`."""

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
                # what the probe hook and the statistics estimation add is tested elsewhere
                "--config.probe.every_steps=0",
                "--config.data.norm_mean=-9.0",
                "--config.data.norm_std=4.0",
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
    saved = json.loads((work / "train" / "config.json").read_text())
    assert saved["probe"]["every_steps"] == 0 and saved["figure_every_steps"] == 1  # --steps 2
    assert saved["data"]["norm_std"] == 4.0


@pytest.mark.parametrize(
    "args,said",
    [
        (["--steps", "-1"], "--steps -1: pre-training steps are >= 1"),
        (["--seeds", "0"], "--seeds 0: the probe needs at least one seed"),
        (["--config.batchsize=8"], "unknown config key 'batchsize'"),
        (["--config.model.depth=x"], "bad value 'x' for config key model.depth"),
    ],
)
def test_mistakes_are_one_line_before_any_work(args, said, tmp_path, capsys):
    assert demo.main(["--workdir", str(tmp_path / "demo"), "--config", "tiny", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("msm-mae demo: error: ") and said in err[0], err
    assert not (tmp_path / "demo").exists()
