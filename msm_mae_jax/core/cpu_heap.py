"""Reused heap memory in CPU runs: no fresh pages for XLA:CPU's per-call buffers.

XLA:CPU allocates the temporaries of each call (2.1 GB for the ViT-B train step at batch 64)
and its GEMM library's scratch with malloc. glibc serves a block larger than its mmap
threshold (at most 32 MB), or one that a worker thread's arena cannot hold (64 MB), with a
fresh mmap and unmaps it when it is freed, so every call faults those pages in again and the
kernel zeroes them: 519k page faults and 1.3 CPU-seconds of system time per ViT-B step, 11% of
its CPU time on one core (PyTorch's tensors stay under the threshold and reuse its heap).

`keep_heap()` sets three glibc malloc parameters (mallopt(3)) for the rest of the process:
one arena for every thread (M_ARENA_MAX 1, so worker threads allocate from the main heap,
which grows past 64 MB), no mmap for large blocks (M_MMAP_MAX 0) and no trimming of freed
heap (M_TRIM_THRESHOLD -1). From a program's second call on, its buffers reuse the same pages:
ViT-B step at batch 64 on 2 cores, 10.8 and 11.4 CPU-s against 12.0, 12.3 and 12.6 without
(alternating processes, loaded machine), the faults and system time gone; in one process of
three the faults came back (cause not found), so the gain is not guaranteed, only likely.
The cost: the process keeps its peak heap until it exits, and threads share one allocator lock.

Applied only where jax computes on this host's CPU (JAX_PLATFORMS is 'cpu', or unset on a host
without GPU or TPU device files), with glibc, and early: threads that allocated before keep
their own arenas, so the entry points call it before jax or TensorFlow start. Setting
MSM_MAE_KEEP_HEAP=0 turns it off.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys

# mallopt(3) parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))
# Device files of the accelerators jax can use: NVIDIA GPUs, AMD GPUs, TPUs (accel, vfio).
ACCELERATOR_FILES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*")


def computes_on_cpu(environ: dict[str, str] | None = None) -> bool:
    """Whether jax will run on the CPU: JAX_PLATFORMS names only 'cpu', or it is unset and no
    accelerator device file exists."""
    platforms = (os.environ if environ is None else environ).get("JAX_PLATFORMS", "")
    names = {p.strip().lower() for p in platforms.split(",") if p.strip()}
    if names:
        return names == {"cpu"}
    return not any(glob.glob(pattern) for pattern in ACCELERATOR_FILES)


def keep_heap() -> bool:
    """Sets the malloc parameters above where they apply; True when they were set."""
    if os.environ.get("MSM_MAE_KEEP_HEAP", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    if not computes_on_cpu():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: other libcs' mallopt differ)
    except (OSError, AttributeError):
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in SETTINGS)
