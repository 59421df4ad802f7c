"""`from msm_mae_jax.runtime import Runtime`: it lives in `msm_mae_jax.features.runtime`."""

from msm_mae_jax.features.runtime import *  # noqa: F403
from msm_mae_jax.features.runtime import Normalization, Runtime, bucket_size, to_numpy  # noqa: F401
