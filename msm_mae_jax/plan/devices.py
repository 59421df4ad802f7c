"""Compile-only TPU devices from libtpu, loaded on demand and quietly.

libtpu (the TPU compiler and runtime, ~700 MB) is not part of the default install: where
Python can import it, jax tries to start a TPU at every start-up and, on a machine without
one, prints libtpu's warnings. The planner finds it where it was put without making it
importable (`make setup-tpu`: `pip install --target .venv/libtpu 'libtpu==0.0.42.*'`), or as
an installed `libtpu` package (`pip install 'msm_mae_jax[tpu]'`), or at an explicit path;
it loads it only to describe a slice, after jax's own backends have started, and sets the
variables that keep libtpu from probing for a TPU (accelerator type, worker hostnames, no
metadata query, several processes at once) only while it loads, and only where unset.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator

from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.plan.chips import Slice

LIBTPU_VERSION = "0.0.42.*"  # what jax[tpu]==0.10.2 pins
TARGET_DIR = "libtpu"  # `make setup-tpu` installs libtpu here, below the environment's prefix


def _candidates(path: str | None) -> list[str]:
    if path:
        return [path, os.path.join(path, "libtpu.so"), os.path.join(path, "libtpu", "libtpu.so")]
    out = []
    if os.environ.get("TPU_LIBRARY_PATH"):
        out.append(os.environ["TPU_LIBRARY_PATH"])
    out.append(os.path.join(sys.prefix, TARGET_DIR, "libtpu", "libtpu.so"))
    spec = importlib.util.find_spec("libtpu")  # an installed package (jax[tpu]); not imported
    if spec is not None and spec.submodule_search_locations:
        out += [os.path.join(p, "libtpu.so") for p in spec.submodule_search_locations]
    return out


def find_libtpu(path: str | None = None) -> str:
    """The libtpu.so to compile with: `path` (the file or a folder holding it, e.g. a pip
    --target folder), else $TPU_LIBRARY_PATH, <prefix>/libtpu, an installed libtpu package.
    ConfigError saying how to install it when there is none."""
    for c in _candidates(path):
        if os.path.isfile(c):
            return os.path.abspath(c)
    where = f"at {path}" if path else "in this environment"
    raise ConfigError(
        f"no libtpu {where}: TPU compilation needs it (not installed by default, since an "
        "importable libtpu makes jax probe for a TPU at every start-up). Install it beside "
        f"the environment with `make setup-tpu` (or `pip install --target "
        f"{os.path.join(sys.prefix, TARGET_DIR)} 'libtpu=={LIBTPU_VERSION}'`), or give "
        "--libtpu PATH"
    )


@contextlib.contextmanager
def _quiet_env(slice_: Slice, library: str) -> Iterator[None]:
    """libtpu's start-up variables, only where unset, only while the plugin starts."""
    env = {
        "TPU_LIBRARY_PATH": library,
        "TPU_ACCELERATOR_TYPE": slice_.accelerator_type,
        "TPU_WORKER_HOSTNAMES": "localhost",
        "TPU_SKIP_MDS_QUERY": "1",
        # Compiling drives no TPU: other processes compiling at the same time are fine
        # (otherwise libtpu's /tmp/libtpu_lockfile admits one process per machine).
        "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
    }
    added = [k for k in env if k not in os.environ]
    for k in added:
        os.environ[k] = env[k]
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def tpu_devices(slice_: Slice, libtpu: str | None = None) -> list:
    """The compile-only devices of a slice (one per chip; megacore on v4 and v5p)."""
    import jax
    from jax.experimental import topologies

    library = find_libtpu(libtpu)
    jax.devices()  # jax's own backends first: they must not see libtpu
    kwargs = dict(
        topology_name=slice_.topology,
        chip_config_name=slice_.chip_config,
        chips_per_host_bounds=tuple(slice_.host_grid) + (1,) * (3 - len(slice_.host_grid)),
        num_slices=1,
    )
    with _quiet_env(slice_, library):
        try:
            topo = topologies.get_topology_desc(platform="tpu", **kwargs)
        except Exception as e:  # noqa: BLE001 (libtpu's own message says what it refused)
            raise ConfigError(f"libtpu refused topology {slice_.topology}: {e}") from None
    return list(topo.devices)
