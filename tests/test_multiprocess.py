"""A real 2-process run (jax.distributed on localhost, gloo CPU collectives) equals a plain
1-process run of the same config: same losses and parameters (the input order of the
synthetic source does not depend on the process count)."""

import os
import socket
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
from train_utils import TINY_OVERRIDES, final_params, read_metrics, tiny_config, xla_flags

from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.train import distributed, loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_cluster_detection():
    assert distributed.detect_cluster({}) is None
    assert distributed.detect_cluster({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4"}) == "slurm"
    assert distributed.detect_cluster({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1"}) is None
    assert distributed.detect_cluster({"OMPI_COMM_WORLD_SIZE": "2"}) == "ompi"
    assert distributed.detect_cluster({"TPU_WORKER_HOSTNAMES": "a,b"}) == "tpu"
    assert distributed.detect_cluster({"TPU_WORKER_HOSTNAMES": "a"}) is None
    c = tiny_config(STEPS)
    assert distributed.initialize(c) == (0, 1)  # single process: no-op
    c.num_processes, c.coordinator_address, c.process_id = 2, "", 0
    with pytest.raises(ConfigError, match="multi-process run needs config.coordinator_address"):
        distributed.initialize(c)


def test_describe_devices():
    def dev(platform, kind):
        return types.SimpleNamespace(platform=platform, device_kind=kind)

    assert distributed.describe_devices([dev("cpu", "cpu")] * 8) == "cpu backend, 8 devices"
    assert distributed.describe_devices([dev("cpu", "cpu")]) == "cpu backend, 1 device"
    h100 = [dev("gpu", "NVIDIA H100 80GB HBM3")] * 8
    assert distributed.describe_devices(h100) == "gpu backend, 8 x NVIDIA H100 80GB HBM3"
    mixed = [dev("gpu", "A")] * 2 + [dev("gpu", "B")]
    assert distributed.describe_devices(mixed) == "gpu backend, 2 x A, 1 x B"
    assert distributed.describe_devices() == f"cpu backend, {jax.device_count()} devices"


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    wd2 = str(tmp_path / "two")
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": ROOT,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": xla_flags(2),
    }
    c = tiny_config(STEPS)
    flags = [f"--config.{k}={v}" for k, v in TINY_OVERRIDES.items()] + [
        f"--config.total_steps={STEPS}",
        f"--config.coordinator_address=localhost:{port}",
        "--config.num_processes=2",
    ]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                os.path.join(ROOT, "train.py"),
                "--config",
                os.path.join(ROOT, "configs/msm_mae.py:tiny"),
                "--workdir",
                wd2,
                *flags,
                f"--config.process_id={i}",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "2 process(es)" in outs[0][0] and f"[1/{STEPS}" not in outs[1][0]  # only 0 logs

    # Reference: a plain one-process run of the same config on one device (its own data
    # pipeline; the programs of test_trainer's runs): the data order does not depend on the
    # process count.
    wd1 = str(tmp_path / "one")
    c.mesh = (("data", 1), ("fsdp", 1), ("tensor", 1))
    loop.train_and_evaluate(c, wd1)
    l2 = [r["loss"] for r in read_metrics(wd2)]
    l1 = [r["loss"] for r in read_metrics(wd1)]
    assert len(l2) == STEPS
    np.testing.assert_allclose(l2, l1, atol=1e-5, rtol=0)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
        final_params(wd2, STEPS),
        final_params(wd1, STEPS),
    )
