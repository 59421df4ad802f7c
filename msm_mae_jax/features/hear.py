"""The HEAR 2021 API (https://hearbenchmark.com) for MSM-MAE encoders.

    import msm_mae_jax.hear as hear
    model = hear.load_model("exported_dir")              # or a workdir / converted weights
    emb_BD = hear.get_scene_embeddings(audio_BS, model)  # tf.Tensor float32 [n, F'*D]
    emb_BTD, ts_BT = hear.get_timestamp_embeddings(audio_BS, model)  # ts in milliseconds
    emb_BD.numpy()                                       # the numpy path

HEAR's tools (hear-validator, hear-eval-kit) accept only a TensorFlow or PyTorch module, so
`load_model` returns a `tf.Module` (`HearModel`; `model.runtime` is the JAX `Runtime` that
does the work) and the two functions return TF float32 tensors. Audio: float waveforms
[n, samples] at 16 kHz as numpy arrays, TF or torch tensors. Timestamps are evenly spaced by
160 ms (one 16-frame patch column) and lie inside the clip. Importing this module imports
TensorFlow, its GPUs hidden (the accelerators belong to jax); `msm_mae_jax.runtime.Runtime`
gives the same numbers as numpy without TF.

Normalisation: by default the statistics stored with the model (a clip's embedding then does
not depend on the other clips of its batch), or each batch's own mean/std for official weights
converted with per-batch normalisation; `load_model(path, normalization="batch")` forces the
latter, as the official HEAR submission did (hear-eval-kit:
`--model-options '{"normalization": "batch"}'`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from msm_mae_jax.data import audio
from msm_mae_jax.data.tf_setup import tensorflow
from msm_mae_jax.features.runtime import Normalization, Runtime, to_numpy

tf = tensorflow()


class HearModel(tf.Module):
    """What HEAR's `load_model` returns: a `tf.Module` holding the runtime and the attributes
    the API requires (it has no TF variables: the weights live in `runtime`, in JAX)."""

    sample_rate: int = audio.SAMPLE_RATE

    def __init__(self, runtime: Runtime, normalization: Normalization = "default"):
        super().__init__(name="msm_mae")
        if isinstance(normalization, list):  # JSON (--model-options) gives [mean, std]
            normalization = tuple(normalization)
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


def _tf_float32(x: np.ndarray) -> tf.Tensor:
    return tf.convert_to_tensor(np.asarray(x, np.float32))


def get_scene_embeddings(audio_BS: Any, model: HearModel) -> tf.Tensor:
    """tf.Tensor float32 [n_sounds, scene_embedding_size]: frame features averaged over time."""
    emb_BD = model.runtime.scene_embeddings(
        _audio(audio_BS), model.sample_rate, model.normalization
    )
    return _tf_float32(emb_BD)


def get_timestamp_embeddings(audio_BS: Any, model: HearModel) -> tuple[tf.Tensor, tf.Tensor]:
    """(tf.Tensor float32 [n_sounds, T, timestamp_embedding_size], tf.Tensor float32
    [n_sounds, T] in milliseconds)."""
    emb_BTD, ts_BT = model.runtime.timestamp_embeddings(
        _audio(audio_BS), model.sample_rate, model.normalization
    )
    return _tf_float32(emb_BTD), _tf_float32(ts_BT)
