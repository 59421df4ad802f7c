"""MSM-MAE (Masked Spectrogram Modeling with Masked Autoencoders) in JAX/Flax."""

__version__ = "0.1.0"
