"""Training logs (process 0): console lines, metrics.jsonl and TensorBoard event files."""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import sys
import time
from typing import Any, TextIO

import numpy as np

from msm_mae_jax.core import fs, staging

SYNC_SECONDS = 5.0  # remote workdirs: GCS allows about one update per second of an object


def _scalar(v: Any) -> float | int:
    v = np.asarray(v)
    return int(v) if np.issubdtype(v.dtype, np.integer) else float(v)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of PNG bytes, read from the IHDR chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not PNG data")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def drop_rows_after(path: str, step: int) -> int:
    """Rewrites a metrics.jsonl without the rows past `step` (and any unreadable line left by
    a crash mid-write); returns how many rows were dropped. Atomic (temporary file + rename)."""
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        lines = f.readlines()
    keep = []
    for line in lines:
        try:
            if int(json.loads(line)["step"]) <= step:
                keep.append(line if line.endswith("\n") else line + "\n")
        except (ValueError, KeyError, TypeError):
            pass
    if len(keep) == len(lines) and all(line.endswith("\n") for line in lines):
        return 0
    with fs.atomic_write(path) as f:
        f.writelines(keep)
    return len(lines) - len(keep)


class _EventFile:
    """A TensorBoard event file written record by record (the TFRecord framing of TF core).

    It opens with a SessionLog START event at the run's first step: TensorBoard then drops the
    events of an earlier run in the same folder from that step on (the steps a resumed run
    replays), as it does for any restarted TensorFlow job."""

    def __init__(self, directory: str, first_step: int):
        from msm_mae_jax.data.tf_setup import tensorflow  # noqa: PLC0415 (heavy)

        self._tf = tensorflow()  # set up (no GPUs for TF) before anything else of TF loads
        from tensorflow.core.framework import summary_pb2  # noqa: PLC0415
        from tensorflow.core.util import event_pb2  # noqa: PLC0415

        self._summary_pb2, self._event_pb2 = summary_pb2, event_pb2
        os.makedirs(directory, exist_ok=True)
        host, pid = socket.gethostname(), os.getpid()
        name = f"events.out.tfevents.{int(time.time()):010d}.{host}.{pid}.v2"
        self._writer = self._tf.io.TFRecordWriter(os.path.join(directory, name))
        self._tags_seen: set[str] = set()
        self._write(self._event_pb2.Event(file_version="brain.Event:2"))
        start = self._event_pb2.SessionLog(status=self._event_pb2.SessionLog.START)
        self._write(self._event_pb2.Event(step=int(first_step), session_log=start))
        self._writer.flush()

    def _write(self, event) -> None:  # noqa: ANN001
        event.wall_time = time.time()
        self._writer.write(event.SerializeToString())

    def write(self, step: int, values: dict[str, tuple[Any, str]]) -> None:
        """values: {tag: (numpy value, plugin name)}; the plugin goes with a tag's first value."""
        summary = self._summary_pb2.Summary()
        for tag, (value, plugin) in values.items():
            v = summary.value.add(tag=tag)
            v.tensor.CopyFrom(self._tf.make_tensor_proto(value))
            if tag not in self._tags_seen:
                self._tags_seen.add(tag)
                v.metadata.plugin_data.plugin_name = plugin
                if plugin == "images":  # content: ImagePluginData v0 = empty bytes
                    v.metadata.data_class = self._summary_pb2.DATA_CLASS_BLOB_SEQUENCE
        self._write(self._event_pb2.Event(step=int(step), summary=summary))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MetricWriter:
    """Writes scalars to the console, WORKDIR/metrics.jsonl and WORKDIR/tb (and PNG images
    to WORKDIR/tb).

    A remote workdir (gs://...) has no appends: both files are written in a local staging
    folder and uploaded whole by `flush()` (at most every `SYNC_SECONDS` on its own, and at
    each checkpoint and on close), each upload replacing the object atomically.

    A run that resumes at `start_step` first drops the rows of metrics.jsonl past that step
    (`dropped_rows` of them: logged by the interrupted run after its last checkpoint, and
    logged again now), and tells TensorBoard to do the same. Disabled writers (processes
    other than 0) accept calls and do nothing. Console output is one plain line per call, so
    it reads the same in a terminal, a pipe or a log file.
    """

    def __init__(
        self,
        workdir: str,
        enabled: bool = True,
        tensorboard: bool = True,
        stream: TextIO | None = None,
        start_step: int = 0,
    ):
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self._tb: _EventFile | None = None
        self._jsonl = None
        self._staged: staging.StagedDir | None = None
        self._synced_at = 0.0
        self.dropped_rows = 0
        if not enabled:
            return
        self._staged = staging.StagedDir(workdir)
        self._staged.fetch("metrics.jsonl")
        path = os.path.join(self._staged.path, "metrics.jsonl")
        self.dropped_rows = drop_rows_after(path, int(start_step))
        self._jsonl = open(path, "a")  # noqa: SIM115
        if tensorboard:
            self._tb = _EventFile(os.path.join(self._staged.path, "tb"), int(start_step) + 1)
        self.flush()

    def write_scalars(self, step: int, scalars: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _scalar(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            values = {k: (np.float32(v), "scalars") for k, v in row.items() if k != "step"}
            self._tb.write(step, values)
        self._maybe_flush()

    def write_png(self, step: int, tag: str, png: bytes) -> None:
        """One PNG image under `tag` in TensorBoard's image dashboard."""
        if not self.enabled or self._tb is None:
            return
        width, height = png_size(png)
        # The image plugin's layout: [width, height, png, ...] as one string tensor.
        value = np.array([str(width).encode(), str(height).encode(), png], dtype=object)
        self._tb.write(step, {tag: (value, "images")})
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if self._staged is not None and self._staged.remote:
            if time.monotonic() - self._synced_at >= SYNC_SECONDS:
                self.flush()

    def flush(self) -> None:
        """Uploads what changed (remote workdirs; local files are written through)."""
        if self._staged is None or not self._staged.remote:
            return
        self._staged.sync()
        self._synced_at = time.monotonic()

    def console(self, line: str) -> None:
        if self.enabled:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._staged is not None:
            staged, self._staged = self._staged, None
            staged.close()


class Throughput:
    """Steps/s, examples/s, data-wait fraction and ETA over the last logging interval."""

    def __init__(self, total_steps: int, batch_size: int, start_step: int):
        self.total_steps, self.batch_size = total_steps, batch_size
        self._t0 = time.perf_counter()
        self._step0 = start_step
        self._wait = 0.0

    def add_data_wait(self, seconds: float) -> None:
        self._wait += seconds

    def measure(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        dt, n = now - self._t0, step - self._step0
        sps = n / dt if dt > 0 and n > 0 else float("nan")
        out = {
            "steps_per_sec": sps,
            "examples_per_sec": sps * self.batch_size,
            "data_wait_fraction": self._wait / dt if dt > 0 else 0.0,
            "eta_sec": (self.total_steps - step) / sps if sps > 0 else float("nan"),
        }
        self._t0, self._step0, self._wait = now, step, 0.0
        return out


def console_line(step: int, total_steps: int, m: dict[str, Any]) -> str:
    """'[  120/1000  12.0%] loss 0.8123  lr 1.2e-04  3.1 steps/s  99 ex/s  wait 2%  ETA 4:43'"""
    width = len(str(total_steps))
    parts = [f"[{step:>{width}d}/{total_steps} {100.0 * step / max(total_steps, 1):5.1f}%]"]
    if "loss" in m:
        parts.append(f"loss {float(m['loss']):.4f}")
    if "lr" in m:
        parts.append(f"lr {float(m['lr']):.2e}")
    if "steps_per_sec" in m and math.isfinite(m["steps_per_sec"]):
        parts.append(f"{m['steps_per_sec']:.2f} steps/s")
        parts.append(f"{m['examples_per_sec']:.0f} ex/s")
    if "data_wait_fraction" in m:
        parts.append(f"data-wait {100 * m['data_wait_fraction']:.0f}%")
    if "eta_sec" in m:
        parts.append(f"ETA {format_duration(m['eta_sec'])}")
    for k, v in m.items():
        if k.startswith("probe/"):
            parts.append(f"{k} {float(v):.3f}")
    return "  ".join(parts)
