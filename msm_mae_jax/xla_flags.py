"""Default XLA flags for this project's entry points, set before jax is imported.

`set_default_xla_flags()` appends the flags in `DEFAULTS` to the XLA_FLAGS environment
variable, skipping any flag the user already set there (the user's value wins). It must run
before the first `import jax` of the process to have an effect. Set MSM_MAE_XLA_DEFAULTS=0 to
turn it off.
"""

from __future__ import annotations

import os

# Flags (name, value). Only flags that are numerically safe and that do not affect other
# backends (every --xla_cpu_* flag is ignored by the GPU and TPU compilers).
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
