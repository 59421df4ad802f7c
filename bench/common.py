"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import os
import platform

from msm_mae_jax.core.config_files import load_config
from msm_mae_jax.model.config import ModelConfig


def check_same_work(script: str, what: str, err: float, tol: float) -> float:
    """`err` (a relative difference between the two arms' outputs) when it is within `tol`;
    otherwise (NaN too) SystemExit: the arms do not do the same work, so no ratio."""
    if not err <= tol:
        raise SystemExit(
            f"{script}: the arms' {what} differ ({err:.1e} > {tol:g}): the ratio would compare "
            "different work"
        )
    return err


def model_config_for(variant: str) -> ModelConfig:
    return ModelConfig.from_dict(load_config(variant).model.to_dict())


def machine_info() -> dict:
    info = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor(),
    }
    try:
        import jax

        info["jax_devices"] = [str(d) for d in jax.devices()]
        info["jax"] = jax.__version__
    except Exception:  # jax import problems should not hide the other figures
        pass
    return info


def write_synthetic_corpus(
    out_dir: str, clips: int, seconds: float = 10.0, fmt: str = "FLAC", seed: int = 0
) -> list[str]:
    """Writes `clips` built-in synthetic clips as 16 kHz mono files (an AudioSet-like corpus of
    `seconds`-long clips); existing files of the same name are kept. Returns the paths."""
    import soundfile as sf

    from msm_mae_jax.data import synthetic

    os.makedirs(out_dir, exist_ok=True)
    ext = {"FLAC": "flac", "WAV": "wav", "OGG": "ogg"}[fmt]
    paths = []
    for i in range(clips):
        path = os.path.join(out_dir, f"clip_{i:06d}.{ext}")
        if not os.path.exists(path):
            wav, _ = synthetic.make_clip(i, seed, seconds)
            tmp = path + ".tmp"
            sf.write(tmp, wav, synthetic.SAMPLE_RATE, format=fmt, subtype="PCM_16")
            os.replace(tmp, path)
        paths.append(path)
    return paths
