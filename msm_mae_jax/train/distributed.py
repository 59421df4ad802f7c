"""Multi-process start-up: `jax.distributed.initialize` when the run spans several processes.

Triggers, in order: explicit `config.coordinator_address` / `config.num_processes > 1`;
a cluster environment jax knows how to read (Cloud TPU pod slices, SLURM with several tasks,
Open MPI with several ranks). A single process is left alone (no-op).
Must run before anything touches a jax device.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Sequence

import jax

from msm_mae_jax.core.errors import ConfigError

log = logging.getLogger(__name__)


def detect_cluster(environ=None) -> str | None:
    """Name of a multi-process cluster environment found in `environ`, or None."""
    env = os.environ if environ is None else environ

    def many(key: str) -> bool:
        try:
            return int(env.get(key, "1")) > 1
        except ValueError:
            return False

    hosts = env.get("TPU_WORKER_HOSTNAMES", "")
    if len([h for h in hosts.split(",") if h.strip()]) > 1 or many("MEGASCALE_NUM_SLICES"):
        return "tpu"
    if "SLURM_JOB_ID" in env and many("SLURM_NTASKS"):
        return "slurm"
    if many("OMPI_COMM_WORLD_SIZE"):
        return "ompi"
    return None


def initialize(config) -> tuple[int, int]:
    """Initialises jax.distributed when needed; returns (process_index, process_count)."""
    addr = str(config.coordinator_address or "")
    nproc, pid = int(config.num_processes), int(config.process_id)
    explicit = bool(addr) or nproc > 1
    cluster = None if explicit else detect_cluster()
    if (explicit or cluster) and not jax.distributed.is_initialized():
        if explicit:
            if not addr or nproc < 1 or not 0 <= pid < max(nproc, 1):
                raise ConfigError(
                    f"multi-process run needs config.coordinator_address ('host:port', got "
                    f"{addr!r}), config.num_processes >= 1 (got {nproc}) and 0 <= "
                    f"config.process_id < num_processes (got {pid})"
                )
            log.info(
                "jax.distributed.initialize(%s, num_processes=%d, process_id=%d)", addr, nproc, pid
            )
            jax.distributed.initialize(
                coordinator_address=addr, num_processes=nproc, process_id=pid
            )
        else:
            log.info("jax.distributed.initialize() for a %s cluster", cluster)
            jax.distributed.initialize()
    return jax.process_index(), jax.process_count()


def describe_devices(devices: Sequence | None = None) -> str:
    """'cpu backend, 8 devices' or 'gpu backend, 8 x NVIDIA H100 80GB HBM3' (all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    backend = devices[0].platform
    if backend == "cpu":
        return f"cpu backend, {len(devices)} device{'s' if len(devices) != 1 else ''}"
    kinds = collections.Counter(d.device_kind for d in devices)
    return f"{backend} backend, " + ", ".join(f"{n} x {kind}" for kind, n in kinds.items())
