"""MSM-MAE (Masked Spectrogram Modeling with Masked Autoencoders) in JAX/Flax.

`from msm_mae_jax import Runtime` works; jax is imported only when Runtime is first used.
Commands: `msm-mae --help` (or `python -m msm_mae_jax --help`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Runtime", "__version__"]

if TYPE_CHECKING:
    from msm_mae_jax.features.runtime import Runtime


def __getattr__(name: str) -> Any:
    if name == "Runtime":  # lazy: importing the package must not start jax
        from msm_mae_jax.features.runtime import Runtime

        return Runtime
    raise AttributeError(f"module 'msm_mae_jax' has no attribute {name!r}")
