"""Default XLA flags for this project's entry points, set before jax is imported.

`set_default_xla_flags()` appends the flags in `DEFAULTS` to the XLA_FLAGS environment
variable, skipping any flag the user already set there (the user's value wins). It must run
before the first `import jax` of the process to have an effect. Set MSM_MAE_XLA_DEFAULTS=0 to
turn it off.
"""

from __future__ import annotations

import os

# Flags (name, value). Only flags that are numerically safe and that do not affect other
# backends (every --xla_cpu_* flag is ignored by the GPU and TPU compilers). Empty: with
# jax 0.10 on a 2-core x86 CPU none of the XLA:CPU options tried beat the defaults (YNNPACK
# dot fusions) on the ViT-B train step or its GEMMs: --xla_cpu_use_onednn=true (GEMM
# unchanged), --xla_cpu_experimental_ynn_fusion_type= (Eigen dots, GEMM about 2x slower),
# --xla_cpu_use_multi_output_fusion=true (AdamW update over the ViT-B parameters 1.7x
# slower), --xla_cpu_enable_concurrency_optimized_scheduler (no measurable change); on the
# ViT-B encoder, 32 units (default 13.9 units/s): oneDNN dot fusions
# (--xla_cpu_experimental_onednn_fusion_type=dot with YNNPACK off) 9.9,
# --xla_cpu_experimental_ynn_fusion_type=dot 13.0, =dot,eltwise 9.2, =individual_dot 9.3.
# On the ViT-B step, batch 64, alternating processes (default 4.95-5.2 s/step): fast math
# (--xla_cpu_enable_fast_math=true) 5.12-5.16, --xla_cpu_scheduler_type=
# CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED 5.16, --xla_cpu_experimental_xnn_graph_fusion_mode=
# XNN_GRAPH_FUSION_MODE_GREEDY 5.20: no change beyond the machine's noise.
DEFAULTS: tuple[tuple[str, str], ...] = ()


def set_default_xla_flags() -> str:
    """Adds DEFAULTS to XLA_FLAGS where not already given; returns the resulting XLA_FLAGS."""
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("MSM_MAE_XLA_DEFAULTS", "1") == "0":
        return flags
    given = {f.split("=", 1)[0] for f in flags.split()}
    extra = [f"{name}={value}" for name, value in DEFAULTS if name not in given]
    if extra:
        flags = " ".join([flags, *extra]).strip()
        os.environ["XLA_FLAGS"] = flags
    return flags
