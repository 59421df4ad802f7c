"""The small training set-up shared by the trainer tests (in-process and multi-process)."""

import glob
import json
import os
import subprocess

from msm_mae_jax.core.config_files import load_config
from msm_mae_jax.train import checkpoints


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for a test's subprocess: `devices` CPU devices, compiled as the session's
    programs are (conftest: optimisation level 0)."""
    return f"--xla_backend_optimization_level=0 --xla_force_host_platform_device_count={devices}"


def subprocess_env(devices: int = 1) -> dict[str, str]:
    """The environment of a test's command-line run: this checkout first on the path, the CPU
    with `devices` devices, and the session's compilation cache inherited (tests/conftest.py):
    runs of the same settings share their compiled programs."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {
        **os.environ,
        "PYTHONPATH": root,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": xla_flags(devices),
    }


def run(cmd: list[str], env: dict[str, str], timeout: float = 300, **kw):  # noqa: ANN201
    """`cmd` to its end (text output captured), killed at `timeout` seconds."""
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kw)


# configs/msm_mae.py:tiny shrunk to seconds per run (dotted keys, as --config.key=value).
TINY_OVERRIDES = {
    "batch_size": 8,
    "warmup_steps": 1,
    "log_every_steps": 1,
    "ckpt_every_steps": 2,
    "figure_every_steps": 0,
    "probe.every_steps": 0,
    "data.synthetic_clips": 64,
    "data.synthetic_seconds": 2.5,
    "data.norm_stats_crops": 16,
}


# What the runs of the real command use (test_trainer, test_reliability_*, test_gcs): with the
# same batch, model, mesh and schedule length they run the same compiled programs, which the
# session's compilation cache (tests/conftest.py) hands from one process to the next. Fixed
# normalisation statistics skip their estimation.
RUN_FLAGS = {
    "batch_size": 4,
    "warmup_steps": 1,
    "log_every_steps": 1,
    "ckpt_every_steps": 2,
    "figure_every_steps": 0,
    "probe.every_steps": 0,
    "data.synthetic_clips": 16,
    "data.synthetic_seconds": 2.5,
    "data.norm_mean": -9.0,
    "data.norm_std": 4.0,
    "mesh": "(('data',1),('fsdp',1),('tensor',1))",
}
# Runs that must be stopped (by a signal, an error) run "forever": they share their programs.
FOREVER = {"total_steps": 100000, "ckpt_every_steps": 100000}


def run_flags(**overrides) -> list[str]:
    """RUN_FLAGS with overrides as `--config.KEY=VALUE` arguments."""
    return [f"--config.{k}={v}" for k, v in {**RUN_FLAGS, **overrides}.items()]


def tiny_config(steps: int = 3, **overrides):
    """The tiny config with TINY_OVERRIDES, `steps` total steps and further dotted overrides."""
    return load_config("tiny", {**TINY_OVERRIDES, "total_steps": steps, **overrides})


def read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def final_params(workdir: str, step: int):
    return checkpoints.load_state_numpy(workdir, step)[0]["params"]


def read_tensorboard(workdir: str) -> tuple[dict, dict]:
    """(scalars {tag: {step: value}}, images {tag: {step: (plugin, [width, height, png])}}) of
    the event files in WORKDIR/tb, read back with TF core only, as TensorBoard shows them: a
    SessionLog START event after the first drops the events read so far from its step on."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    scalars, images, plugins = {}, {}, {}
    started = False
    for path in sorted(glob.glob(os.path.join(workdir, "tb", "events.out.tfevents.*"))):
        for rec in tf.data.TFRecordDataset(path).as_numpy_iterator():
            ev = event_pb2.Event.FromString(rec)
            if ev.session_log.status == event_pb2.SessionLog.START:
                if started:  # a restart: later steps of the earlier run are orphaned
                    for by_step in (*scalars.values(), *images.values()):
                        for s in [s for s in by_step if s >= ev.step]:
                            del by_step[s]
                started = True
            for v in ev.summary.value:
                if v.metadata.plugin_data.plugin_name:  # sent with a tag's first event
                    plugins[v.tag] = v.metadata.plugin_data.plugin_name
                value = tf.make_ndarray(v.tensor)
                if value.dtype == object:  # string tensors: images
                    images.setdefault(v.tag, {})[ev.step] = (plugins[v.tag], list(value))
                else:
                    scalars.setdefault(v.tag, {})[ev.step] = float(value)
    return scalars, images
