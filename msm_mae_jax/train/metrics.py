"""Training logs (process 0): console lines, metrics.jsonl and TensorBoard event files."""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import time
from typing import Any, TextIO

import numpy as np


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


class MetricWriter:
    """Writes scalars to the console, WORKDIR/metrics.jsonl and WORKDIR/tb (and PNG images
    to WORKDIR/tb).

    Disabled writers (processes other than 0) accept calls and do nothing. Console output
    is one plain line per call, so it reads the same in a terminal, a pipe or a log file.
    """

    def __init__(
        self,
        workdir: str,
        enabled: bool = True,
        tensorboard: bool = True,
        stream: TextIO | None = None,
    ):
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self._tb = None
        self._jsonl = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
        if tensorboard:
            from msm_mae_jax.data.tf_setup import tensorflow  # noqa: PLC0415 (heavy)

            tf = tensorflow()
            self._tf = tf
            from tensorflow.core.framework import summary_pb2  # noqa: PLC0415

            # tf.summary.scalar/image live in the tensorboard package; writing the summaries
            # with the plugins' metadata directly needs only TF core.
            md = summary_pb2.SummaryMetadata()
            md.plugin_data.plugin_name = "scalars"  # what TensorBoard's scalar dashboard reads
            self._scalar_md = md.SerializeToString()
            md = summary_pb2.SummaryMetadata()
            md.plugin_data.plugin_name = "images"  # content: ImagePluginData v0 = empty bytes
            md.data_class = summary_pb2.DATA_CLASS_BLOB_SEQUENCE
            self._image_md = md.SerializeToString()
            self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tb"))

    def write_scalars(self, step: int, scalars: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _scalar(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            tf = self._tf
            with self._tb.as_default():
                for k, v in row.items():
                    if k != "step":
                        tf.summary.write(
                            k, tf.constant(v, tf.float32), step=int(step), metadata=self._scalar_md
                        )
            self._tb.flush()

    def write_png(self, step: int, tag: str, png: bytes) -> None:
        """One PNG image under `tag` in TensorBoard's image dashboard."""
        if not self.enabled or self._tb is None:
            return
        tf = self._tf
        width, height = png_size(png)
        # The image plugin's layout: [width, height, png, ...] as one string tensor.
        tensor = tf.constant([str(width).encode(), str(height).encode(), png], tf.string)
        with self._tb.as_default():
            tf.summary.write(tag, tensor, step=int(step), metadata=self._image_md)
        self._tb.flush()

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
