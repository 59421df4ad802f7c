"""Export of a training checkpoint to the encoder artifact, and loading it back."""

import os

import jax
import numpy as np
import optax
import pytest
from model_utils import small_model

from msm_mae_jax.cli import export as export_cli
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.features.runtime import Runtime
from msm_mae_jax.model import artifact, mae
from msm_mae_jax.train import checkpoints, export

CFG = small_model()
STATS = NormStats(-5.5, 3.0)


def _dir_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A training workdir with checkpoints at steps 1 and 2 (different params), as the trainer
    writes them: full train state (params, AdamW state, step, rng) + meta."""
    wd = str(tmp_path_factory.mktemp("run"))
    ckpt = checkpoints.Checkpointer(wd, keep=3, async_save=False)
    params = {}
    for step in (1, 2):
        p = mae.init_params(CFG, jax.random.key(step))
        state = {
            "params": p,
            "opt_state": optax.adamw(1e-3).init(p),
            "step": np.int32(step),
            "rng": jax.random.key_data(jax.random.key(0)),
        }
        ckpt.save(
            step, state, {"model": CFG.to_dict(), "norm_stats": STATS.to_dict(), "step": step}
        )
        params[step] = p["encoder"]
    ckpt.close()
    return wd, params


def test_export_load_gives_the_checkpoint_features(workdir, tmp_path):
    wd, params = workdir
    out = export.export(wd, str(tmp_path / "latest"))
    cfg, enc, stats, meta = artifact.load_model_dir(out)
    assert cfg == CFG and stats == STATS
    assert meta["step"] == 2 and meta["source"] == os.path.abspath(wd) and meta["version"]
    assert set(enc) == set(params[2])  # encoder only: no decoder, no optimizer state
    # The checkpoint holds encoder + decoder params and two AdamW moments of each.
    assert _dir_bytes(out) < _dir_bytes(os.path.join(wd, "checkpoints", "2")) / 1.5

    wav = (0.1 * np.random.default_rng(0).standard_normal((2, 24_000))).astype(np.float32)
    from_export = Runtime.load(out).encode(wav)
    np.testing.assert_array_equal(from_export, Runtime.load(wd).encode(wav))
    np.testing.assert_array_equal(from_export, Runtime(CFG, params[2], STATS).encode(wav))
    step1 = Runtime(CFG, params[1], STATS).encode(wav)
    assert np.abs(from_export - step1).max() > 1e-3
    np.testing.assert_array_equal(Runtime.load(wd, step=1).encode(wav), step1)


def test_cli_with_step(workdir, tmp_path, capsys):
    wd, params = workdir
    out = str(tmp_path / "step1")
    assert export_cli.main(["--workdir", wd, "--out", out, "--step", "1"]) == 0
    _, enc, _, meta = artifact.load_model_dir(out)
    assert meta["step"] == 1
    jax.tree.map(np.testing.assert_array_equal, enc, jax.tree.map(np.asarray, params[1]))
    assert export_cli.main(["--workdir", wd, "--out", str(tmp_path / "x"), "--step", "7"]) == 2
    assert "step 7" in capsys.readouterr().err


def test_cli_errors_name_the_path(tmp_path, capsys):
    missing = str(tmp_path / "no_run")
    assert export_cli.main(["--workdir", missing, "--out", str(tmp_path / "o")]) == 2
    assert missing in capsys.readouterr().err
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert export_cli.main(["--workdir", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "checkpoints" in capsys.readouterr().err
