"""Export the encoder of a training run: `python -m msm_mae_jax.export --workdir RUN --out DIR`.

Writes the encoder artifact (`msm_mae_jax.model_dir`): encoder parameters, model config,
normalisation statistics, project version and the source run/step. No decoder, no optimizer
state: the result is what `Runtime.load` and `msm_mae_jax.hear.load_model` need, nothing more.
"""

from __future__ import annotations

import os

from msm_mae_jax.model import artifact
from msm_mae_jax.train import checkpoints


def export(workdir: str, out: str, step: int | None = None) -> str:
    """Exports checkpoint `step` (default: the latest) of `workdir` to `out`; returns `out`."""
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"{workdir}: no such training workdir")
    if step is None:
        ckpt = checkpoints.Checkpointer(workdir, read_only=True, async_save=False)
        try:
            step = ckpt.latest_step()
        finally:
            ckpt.close()
        if step is None:
            raise FileNotFoundError(
                f"{checkpoints.checkpoint_dir(workdir)}: no complete checkpoint to export"
            )
    if os.path.abspath(out) == os.path.abspath(workdir):
        raise ValueError(f"--out {out} must differ from the workdir")
    cfg, params, stats = checkpoints.load_encoder_from_workdir(workdir, step=step)
    return artifact.save_model_dir(
        out, cfg, params, stats, source=os.path.abspath(workdir), extra={"step": int(step)}
    )
