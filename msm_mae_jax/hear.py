"""The HEAR 2021 module by its published name (hear-eval-kit imports `msm_mae_jax.hear`)."""

from msm_mae_jax.features.hear import (  # noqa: F401
    HearModel,
    get_scene_embeddings,
    get_timestamp_embeddings,
    load_model,
)
