"""Small encoders and labelled audio tasks shared by the fine-tuning tests."""

import os

import flax.linen as nn
import jax
import numpy as np
import soundfile as sf
from model_utils import small_model

from msm_mae_jax.cli.finetune import load_config
from msm_mae_jax.data import synthetic
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.model import artifact, mae
from msm_mae_jax.model.config import ModelConfig
from msm_mae_jax.tasks import specs

# 80 mel bins x 32 frames, 16x16 patches: 5 x 2 patches per unit, 160-d frame features.
MICRO = small_model(width=32, heads=2, input_size=(80, 32))


def encoder_params(mc: ModelConfig = MICRO, seed: int = 0):
    x = mae.dummy_input(mc)
    params = jax.jit(mae.Encoder(mc).init)(jax.random.key(seed), x)["params"]
    return jax.tree.map(np.asarray, nn.unbox(params))


def write_encoder(path: str, mc: ModelConfig = MICRO, seed: int = 0, params=None) -> str:
    """A random-init (or given) encoder artifact, as `Runtime.load` reads it."""
    params = encoder_params(mc, seed) if params is None else params
    return artifact.save_model_dir(path, mc, params, NormStats(-7.0, 4.0), source="test")


def ft_config(**overrides):
    """configs/finetune.py:tiny with overrides, as `--config.KEY=VALUE` on the command line."""
    base = {"mesh": "(('data',1),('fsdp',1),('tensor',1))"}
    extras = [f"--config.{k}={v}" for k, v in {**base, **overrides}.items()]
    return load_config("configs/finetune.py:tiny", extras)


def synthetic_csv(
    root: str, n: int = 36, multilabel: bool = False, seed: int = 5, classes: int = 6
) -> str:
    """A split task of synthetic clips of 0.25-0.6 s; multi-label clips are the sum of two
    clips of different classes ('a;b'). Splits: 2/3 train, 1/6 valid, 1/6 test."""
    files, labels, splits = [], [], []
    os.makedirs(os.path.join(root, "clips"), exist_ok=True)
    for i in range(n):
        seconds = 0.25 + 0.35 * ((i * 7) % 11) / 10  # 1 or 2 units of MICRO
        wav, y = synthetic.make_clip(i % classes, seed + i, seconds)
        names = [synthetic.CLASS_NAMES[y]]
        if multilabel:
            j = (i + 1 + i // classes) % classes
            other, y2 = synthetic.make_clip(j, seed + 1000 + i, seconds)
            wav = 0.5 * (wav + other)
            names.append(synthetic.CLASS_NAMES[y2])
        files.append(os.path.join(root, "clips", f"{i}.wav"))
        sf.write(files[-1], wav, 16000)
        labels.append(";".join(sorted(set(names))))
        # every class in every split once n >= 6 * classes
        splits.append(["train", "train", "train", "train", "valid", "test"][(i + i // classes) % 6])
    return specs.write_csv(os.path.join(root, "task.csv"), files, labels, splits=splits)
