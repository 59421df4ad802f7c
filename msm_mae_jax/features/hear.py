"""The HEAR 2021 API (https://hearbenchmark.com) for MSM-MAE encoders.

    import msm_mae_jax.hear as hear
    model = hear.load_model("exported_dir")              # or a workdir / converted weights
    emb_BD = hear.get_scene_embeddings(audio_BS, model)  # float32 [n, F'*D]
    emb_BTD, ts_BT = hear.get_timestamp_embeddings(audio_BS, model)  # ts in milliseconds

Audio: float waveforms [n, samples] at 16 kHz (numpy, or torch / TF tensors: converted with
`.numpy()`, neither framework is imported here). Outputs are float32 numpy arrays.
Timestamps are evenly spaced by 160 ms (one 16-frame patch column) and lie inside the clip.

Normalisation: by default the statistics stored with the model (a clip's embedding then does
not depend on the other clips of its batch), or each batch's own mean/std for official weights
converted with per-batch normalisation; `load_model(path, normalization="batch")` forces the
latter, as the official HEAR submission did.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from msm_mae_jax.data import audio
from msm_mae_jax.features.runtime import Normalization, Runtime, to_numpy


class HearModel:
    """What HEAR's `load_model` returns: the runtime plus the attributes the API requires."""

    sample_rate: int = audio.SAMPLE_RATE

    def __init__(self, runtime: Runtime, normalization: Normalization = "default"):
        runtime.resolve_normalization(normalization)  # fail at load, not at the first batch
        self.runtime = runtime
        self.normalization = normalization
        self.scene_embedding_size = int(runtime.feature_dim)
        self.timestamp_embedding_size = int(runtime.feature_dim)

    def __repr__(self) -> str:
        c = self.runtime.model_config
        return (
            f"HearModel({c.run_name_prefix}, embed_dim={c.embed_dim}, depth={c.depth}, "
            f"embedding_size={self.scene_embedding_size}, "
            f"normalization={self.normalization!r})"
        )


def load_model(model_file_path: str = "", normalization: Normalization = "default") -> HearModel:
    """Loads an exported model dir, converted official weights or a training workdir."""
    if not model_file_path:
        raise ValueError(
            "msm_mae_jax.hear.load_model needs model_file_path: no weights are bundled or "
            "downloaded. Pass a directory written by `python -m msm_mae_jax.export` or "
            "`python -m msm_mae_jax.convert`, or a training workdir."
        )
    return HearModel(Runtime.load(model_file_path), normalization)


def _audio(audio_BS: Any) -> np.ndarray:
    wav = to_numpy(audio_BS)
    if wav.ndim != 2:
        raise ValueError(f"HEAR audio must be [n_sounds, n_samples], got shape {wav.shape}")
    return wav


def get_scene_embeddings(audio_BS: Any, model: HearModel) -> np.ndarray:
    """float32 [n_sounds, scene_embedding_size]: frame features averaged over time."""
    return model.runtime.scene_embeddings(
        _audio(audio_BS), model.sample_rate, model.normalization
    ).astype(np.float32)


def get_timestamp_embeddings(audio_BS: Any, model: HearModel) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [n_sounds, T, timestamp_embedding_size], float32 [n_sounds, T] in ms)."""
    emb, ts = model.runtime.timestamp_embeddings(
        _audio(audio_BS), model.sample_rate, model.normalization
    )
    return emb.astype(np.float32), ts.astype(np.float32)
