"""Small model configs for tests, from one factory: a test names only what it changes."""

from msm_mae_jax.model.config import ModelConfig


def small_model(
    width: int = 64,
    heads: int = 4,
    depth: int = 2,
    input_size: tuple[int, int] = (80, 208),
    **fields,
) -> ModelConfig:
    """A ViT of `depth` blocks, `width` wide with `heads` heads, and a one-block decoder of the
    same width and heads, on `input_size` log-mels; other ModelConfig fields as keywords."""
    return ModelConfig(
        input_size=input_size,
        embed_dim=width,
        depth=depth,
        num_heads=heads,
        decoder_embed_dim=width,
        decoder_depth=1,
        decoder_num_heads=heads,
        **fields,
    )
