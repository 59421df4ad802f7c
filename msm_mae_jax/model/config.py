"""Model hyper-parameters: one frozen dataclass shared by training, export and runtime.

Shape letters used across the package: B batch, F mel bins (80), T frames, N patches,
K kept (visible) patches, D width, P pixels per patch (ph*pw), H heads, L layers.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from msm_mae_jax.core.config_files import load_config
from msm_mae_jax.core.errors import ConfigError

# Encoder width / depth / heads of the paper's variants; decoder is the same for all.
ENCODER_VARIANTS: dict[str, tuple[int, int, int]] = {
    "tiny": (64, 2, 4),  # seconds per step on a laptop CPU: tests and the demo
    "small": (384, 12, 6),  # ViT-S
    "base": (768, 12, 12),  # ViT-B (paper default)
    "large": (1024, 24, 16),  # ViT-L
}
SUPPORTED_PATCHES = ((16, 16), (16, 8), (16, 4), (8, 16), (80, 4))
DECODER_POS_EMBEDS = ("1d", "2d")
DTYPES = ("float32", "bfloat16")

_RUN_NAME = re.compile(r"^(\d+)x(\d+)p(\d+)x(\d+)(?:$|[_\-.])")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """MSM-MAE architecture (defaults: ViT-B, 80x208 input, 16x16 patches)."""

    input_size: tuple[int, int] = (80, 208)  # (F mel bins, T frames)
    patch_size: tuple[int, int] = (16, 16)  # (ph along frequency, pw along time)
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    decoder_embed_dim: int = 384
    decoder_depth: int = 4
    decoder_num_heads: int = 6
    use_cls_token: bool = True
    decoder_pos_embed: str = "1d"  # '1d' (official default) or '2d'
    norm_pix_loss: bool = False
    mask_ratio: float = 0.75
    dtype: str = "float32"  # compute dtype; parameters stay float32
    remat: bool = False  # jax.checkpoint each transformer block

    def __post_init__(self):
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "patch_size", tuple(int(v) for v in self.patch_size))
        self.validate()

    # ---- derived shapes -------------------------------------------------------------
    @property
    def grid_size(self) -> tuple[int, int]:
        """Patches along (frequency, time)."""
        return (self.input_size[0] // self.patch_size[0], self.input_size[1] // self.patch_size[1])

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def patch_dim(self) -> int:
        return self.patch_size[0] * self.patch_size[1]

    @property
    def num_keep(self) -> int:
        """Visible patches per example during pre-training (a static Python int)."""
        return int(self.num_patches * (1 - self.mask_ratio))

    @property
    def feature_dim(self) -> int:
        """Frame feature width after '(f t) d -> t (f d)'."""
        return self.grid_size[0] * self.embed_dim

    @property
    def run_name_prefix(self) -> str:
        (f, t), (ph, pw) = self.input_size, self.patch_size
        return f"{f}x{t}p{ph}x{pw}"

    # ---- checks and (de)serialisation ----------------------------------------------
    def validate(self) -> None:
        (f, t), (ph, pw) = self.input_size, self.patch_size
        if min(f, t, ph, pw) <= 0:
            raise ConfigError(
                f"model.input_size {self.input_size} / model.patch_size "
                f"{self.patch_size} must be positive"
            )
        if f % ph or t % pw:
            raise ConfigError(
                f"model.input_size {f}x{t} is not divisible by model.patch_size {ph}x{pw}"
            )
        for name, width, heads in (
            ("", self.embed_dim, self.num_heads),
            ("decoder_", self.decoder_embed_dim, self.decoder_num_heads),
        ):
            if width <= 0 or heads <= 0 or width % heads:
                raise ConfigError(
                    f"model.{name}embed_dim={width} must be a positive multiple "
                    f"of model.{name}num_heads={heads}"
                )
        if self.embed_dim % 4:
            raise ConfigError(
                f"model.embed_dim={self.embed_dim} must be divisible by 4 "
                "(2-D sin-cos positional embedding)"
            )
        if self.decoder_pos_embed not in DECODER_POS_EMBEDS:
            raise ConfigError(
                f"model.decoder_pos_embed={self.decoder_pos_embed!r}; "
                f"expected one of {DECODER_POS_EMBEDS}"
            )
        if self.decoder_pos_embed == "2d" and self.decoder_embed_dim % 4:
            raise ConfigError("model.decoder_embed_dim must be divisible by 4 for a 2d table")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ConfigError(f"model.mask_ratio={self.mask_ratio} must be in [0, 1)")
        if self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype={self.dtype!r}; expected one of {DTYPES}")
        if self.depth <= 0 or self.decoder_depth <= 0:
            raise ConfigError("model.depth and model.decoder_depth must be positive")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_size"], d["patch_size"] = list(self.input_size), list(self.patch_size)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """Builds from a dict / ConfigDict; unknown keys are an error naming the key."""
        d = dict(d)
        d.pop("variant", None)  # a config-file convenience, already expanded into widths
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown model config key(s): {unknown}; known: {sorted(names)}")
        return cls(**d)

    def replace(self, **kw) -> ModelConfig:
        return dataclasses.replace(self, **kw)


def encoder_variant(name: str) -> dict[str, int]:
    """Encoder widths for a named variant ('tiny', 'small', 'base', 'large')."""
    if name not in ENCODER_VARIANTS:
        raise ConfigError(f"unknown model variant {name!r}; known: {sorted(ENCODER_VARIANTS)}")
    d, depth, heads = ENCODER_VARIANTS[name]
    return dict(embed_dim=d, depth=depth, num_heads=heads)


def parse_run_name(name: str) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """'80x208p16x16_anything' -> ((80, 208), (16, 16)); None when there is no such prefix."""
    m = _RUN_NAME.match(name)
    if not m:
        return None
    f, t, ph, pw = (int(g) for g in m.groups())
    return (f, t), (ph, pw)


def load_model_config(spec: str | ModelConfig | None) -> ModelConfig:
    """None -> the default ViT-B 80x208; 'configs/msm_mae.py:tiny' -> that config's model; a
    ModelConfig as it is."""
    if isinstance(spec, ModelConfig):
        return spec
    if not spec:
        return ModelConfig()
    return ModelConfig.from_dict(load_config(spec).model)
