"""Orbax round trips, sharded restore, interrupted saves, encoder-only loading."""

import logging
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from configs.msm_mae import get_config
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.model.config import ModelConfig
from msm_mae_jax.train import checkpoints, optim
from msm_mae_jax.train.state import Setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup(mesh):
    c = get_config("tiny")
    c.mesh = mesh
    c.batch_size = 8
    c.total_steps = 4
    return c, Setup(c, optim.resolve_schedule(c))


def _equal(a, b) -> bool:
    return all(
        jax.tree.leaves(
            jax.tree.map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b)
        )
    )


def test_round_trip_into_other_shardings(tmp_path):
    """Saved from a data x fsdp mesh, restored straight into a 1-device layout: same tree."""
    c, s8 = _setup([("data", 4), ("fsdp", 2), ("tensor", 1)])
    state = s8.init_state(3)
    meta = {
        "model": ModelConfig.from_dict(c.model).to_dict(),
        "norm_stats": {"mean": -6.0, "std": 4.0},
        "step": 0,
    }
    ck = checkpoints.Checkpointer(str(tmp_path), keep=2)
    ck.save(0, state, meta)
    ck.wait()
    _, s1 = _setup([("data", 1), ("fsdp", 1), ("tensor", 1)])
    with s1.activate():
        restored, meta2 = ck.restore(0, s1.abstract_state)
    ck.close()
    assert meta2 == meta
    assert _equal(restored, state)
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    leaf = restored.params["encoder"]["blocks_0"]["mlp"]["fc1"]["kernel"]
    assert len(leaf.sharding.device_set) == 1
    # Restoring into the fsdp layout shards the leaf again.
    with s8.activate():
        ck = checkpoints.Checkpointer(str(tmp_path))
        again, _ = ck.restore(0, s8.abstract_state)
        ck.close()
    leaf8 = again.params["encoder"]["blocks_0"]["mlp"]["fc1"]["kernel"]
    assert (
        leaf8.sharding.spec
        == state.params["encoder"]["blocks_0"]["mlp"]["fc1"]["kernel"].sharding.spec
    )
    # The runtime's loader returns only the encoder, as numpy.
    mc, enc, ns = checkpoints.load_encoder_from_workdir(str(tmp_path))
    assert mc == ModelConfig.from_dict(c.model) and ns == NormStats(-6.0, 4.0)
    assert set(enc) == set(state.params["encoder"]) and _equal(enc, state.params["encoder"])
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(enc))


def test_keep_and_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no training checkpoints"):
        checkpoints.load_encoder_from_workdir(str(tmp_path))
    ck = checkpoints.Checkpointer(str(tmp_path), keep=2)
    for s in (1, 2, 3):
        ck.save(s, {"w": np.full(3, s, np.float32)}, {"step": s})
    ck.close()
    assert checkpoints.Checkpointer(str(tmp_path)).all_steps() == [2, 3]


def test_reading_a_checkpoint_logs_no_orbax_notices(tmp_path, caplog):
    """Read-only loads (export, Runtime.load, evaluation) drop orbax's two notices, and only
    those, and only while reading."""
    ck = checkpoints.Checkpointer(str(tmp_path))
    ck.save(1, {"w": np.arange(3, dtype=np.float32)}, {"step": 1})
    ck.close()
    with caplog.at_level(logging.WARNING):
        state, meta = checkpoints.load_state_numpy(str(tmp_path))
        checkpoints.Checkpointer(str(tmp_path), read_only=True).close()
        logging.getLogger("absl").warning("Given directory is read only=%s", "elsewhere")
        logging.getLogger("absl").warning("Metadata file does not exist: %s", "x")
    np.testing.assert_array_equal(state["w"], np.arange(3, dtype=np.float32))
    assert meta == {"step": 1}
    assert [r.getMessage() for r in caplog.records] == [
        "Given directory is read only=elsewhere",
        "Metadata file does not exist: x",
    ]


_KILL_DURING_SAVE = textwrap.dedent("""
    import os, signal, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    import numpy as np
    from msm_mae_jax.train import checkpoints
    ck = checkpoints.Checkpointer(sys.argv[1], keep=3)
    ck.save(1, {"w": np.arange(1000, dtype=np.float32)}, {"step": 1})
    ck.wait()
    big = {"w": np.ones((64, 1024, 1024), np.float32)}  # 256 MB: the write takes a while
    ck.save(2, big, {"step": 2})
    os.kill(os.getpid(), signal.SIGKILL)  # dies while step 2 is being written
""")


def test_killed_save_keeps_latest_good(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    r = subprocess.run(
        [sys.executable, "-c", _KILL_DURING_SAVE, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == -9, r.stderr[-2000:]
    d = tmp_path / "checkpoints"
    leftovers = [p for p in os.listdir(d) if p not in ("1",)]
    assert leftovers and "2" not in leftovers, leftovers  # killed mid-write: a temporary dir
    ck = checkpoints.Checkpointer(str(tmp_path))  # cleans up the half-written step
    assert ck.latest_step() == 1, (os.listdir(d), leftovers)
    out, meta = ck.restore(1, {"w": jax.ShapeDtypeStruct((1000,), np.float32)})
    np.testing.assert_array_equal(np.asarray(out["w"]), np.arange(1000, dtype=np.float32))
    assert meta == {"step": 1}
    ck.save(2, {"w": np.zeros(1000, np.float32)}, {"step": 2})  # saving works again
    ck.close()
    assert checkpoints.Checkpointer(str(tmp_path)).all_steps() == [1, 2]
