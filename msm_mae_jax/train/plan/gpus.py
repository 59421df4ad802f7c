"""NVIDIA GPUs as compile targets without a GPU: XLA's deviceless compilation from a target
description, through jax's CUDA plugin loaded from beside the environment.

XLA compiles for a GPU it does not see when given the GPU's description (a
`stream_executor.GpuTargetConfigProto`: SM count, shared memory, clock, memory size, compute
capability), and jax exposes that as a topology of compile-only devices. It needs jax's CUDA
plugin and the CUDA libraries (`jax-cuda12-plugin[with-cuda]`, ~5 GB), which `make
setup-gpu-plan` installs in .venv/cuda-plan (pip --target, not importable by other runs:
an importable plugin makes every jax start-up look for a GPU); `use_cuda_plugin` puts it on
the path of the planner's process only, before jax starts, skips the plugin's check of the
CUDA driver (a machine without a GPU has none) and plans matmuls as cuBLAS calls. XLA gives
no cost analysis for such a program: FLOPs come from the lowered step, bytes are unknown, so
the roofline is the compute bound alone; and XLA does not refuse a GPU program that is too
big (jax takes 75% of the memory by default): "fits" compares with the whole memory.

Figures per GPU: `chips.GPUS`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys

from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.train.plan.chips import GPUS, GpuChip

PLUGIN_DIR = "cuda-plan"  # `make setup-gpu-plan` installs jax's CUDA plugin here, below the prefix
PER_HOST = 8  # GPUs per host (an HGX board)


@dataclasses.dataclass(frozen=True)
class GpuSlice:
    """`count` GPUs of one kind, `PER_HOST` to a host (fewer: one host)."""

    chip: GpuChip
    count: int

    @property
    def chips(self) -> int:
        return self.count

    @property
    def hosts(self) -> int:
        return max(1, self.count // PER_HOST)

    @property
    def name(self) -> str:
        return f"{self.chip.name}-{self.count}"

    @property
    def topology(self) -> str:
        """jax's GPU topology: slices x hosts x devices per host."""
        return f"1x{self.hosts}x{self.count // self.hosts}"


def parse_gpus(text: str) -> GpuSlice:
    """'h100-8', 'a100-16', 'h200-1' -> GpuSlice; ConfigError otherwise."""
    m = re.fullmatch(r"\s*([a-z0-9]+)-(\d+)\s*", text.lower())
    if not m or m[1] not in GPUS or int(m[2]) < 1:
        raise ConfigError(
            f"--gpu {text!r}: expected GPU-COUNT with GPU one of {', '.join(GPUS)}, e.g. h100-8"
        )
    n = int(m[2])
    if n > PER_HOST and n % PER_HOST:
        raise ConfigError(f"--gpu {text}: more than {PER_HOST} GPUs come in hosts of {PER_HOST}")
    return GpuSlice(GPUS[m[1]], n)


def target_config(chip: GpuChip) -> str:
    """The GpuTargetConfigProto (text format) XLA compiles for."""
    major, minor = chip.compute_capability
    return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {chip.shared_memory_per_sm}
  threads_per_core_limit: 2048
  core_count: {chip.sms}
  fpus_per_core: {64 if major == 8 else 128}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(chip.hbm_bytes_per_s)}
  l2_cache_size: {chip.l2_bytes}
  clock_rate_ghz: {chip.clock_ghz}
  device_memory_size: {chip.hbm_bytes}
  shared_memory_per_block_optin: {chip.shared_memory_optin}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
device_description_str: "{chip.device_kind}"
"""


def plugin_dir(path: str | None = None) -> str:
    """Where jax's CUDA plugin was installed for planning (`path`, else <prefix>/cuda-plan)."""
    where = path or os.path.join(sys.prefix, PLUGIN_DIR)
    if not os.path.isdir(os.path.join(where, "jax_plugins")):
        raise ConfigError(
            f"no jax CUDA plugin in {where}: --gpu needs it (~5 GB, not in the default "
            "install): `make setup-gpu-plan`, or `pip install --target DIR "
            "'jax-cuda12-plugin[with-cuda]==0.10.2'` and --cuda-plugin DIR"
        )
    return where


def use_cuda_plugin(path: str) -> None:
    """Makes the plugin in `path` visible to this process's jax; before jax starts."""
    if "jax" in sys.modules:
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            raise RuntimeError("use_cuda_plugin must come before jax starts its backends")
    sys.path.insert(0, path)
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")  # no driver without a GPU
    # Without a GPU to autotune on, XLA cannot tile some dots as Triton fusions ("Couldn't
    # find output tile sizes"): plan them as cuBLAS calls, XLA's other choice for them.
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_gpu_enable_triton_gemm" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_enable_triton_gemm=false".strip()


def gpu_devices(gpus: GpuSlice) -> list:
    """Compile-only devices of `gpus` (after `use_cuda_plugin`)."""
    from jax.experimental import topologies

    try:
        topo = topologies.get_topology_desc(
            platform="cuda", topology=gpus.topology, target_config=target_config(gpus.chip)
        )
    except NotImplementedError as e:
        raise ConfigError(f"jax's CUDA plugin did not start ({e}); see --cuda-plugin") from None
    return list(topo.devices)
