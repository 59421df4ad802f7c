"""Training checkpoints: orbax CheckpointManager under WORKDIR/checkpoints/<step>/.

Each step directory holds two items: `state` (params, opt_state, step, rng: the train state
pytree) and `meta` (JSON: model config, normalisation statistics, data position, config).
Orbax writes into a temporary directory and renames it when complete, so a save killed
half-way never replaces the latest good checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.model.config import ModelConfig

CKPT_DIR = "checkpoints"

# Orbax warnings that say nothing to the user of a read-only load: the first comes with every
# read-only CheckpointManager (reading is the point), the second when the train state item is
# read on its own (orbax looks for the step's metadata file in the item directory).
_READ_ONLY_NOTICES = ("Given directory is read only", "Metadata file does not exist")


class _DropReadOnlyNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno == logging.WARNING
            and isinstance(record.msg, str)
            and record.msg.startswith(_READ_ONLY_NOTICES)
        )


@contextlib.contextmanager
def _quiet_read_only_notices() -> Iterator[None]:
    """Drops `_READ_ONLY_NOTICES` from orbax's logger ('absl') while reading; others pass."""
    logger, notices = logging.getLogger("absl"), _DropReadOnlyNotices()
    logger.addFilter(notices)
    try:
        yield
    finally:
        logger.removeFilter(notices)


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), CKPT_DIR)


class Checkpointer:
    """Saves and restores (state, meta) pairs; every process must call save/restore."""

    def __init__(
        self, workdir: str, keep: int = 3, async_save: bool = True, read_only: bool = False
    ):
        if read_only:
            options = ocp.CheckpointManagerOptions(
                read_only=True,
                create=False,
                save_interval_steps=0,
                enable_async_checkpointing=False,
            )
        else:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep if keep and keep > 0 else None,
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,  # leftovers of a save killed half-way
            )
        self.directory = checkpoint_dir(workdir)
        with _quiet_read_only_notices() if read_only else contextlib.nullcontext():
            self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict, force: bool = True) -> bool:
        """Starts an (async) save; the state's device buffers are copied before returning,
        so the caller may donate them to the next step."""
        return self.manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=force,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores into the shardings carried by `abstract_state` (jax.ShapeDtypeStruct
        leaves with .sharding): each device reads only its own shard."""
        out = self.manager.restore(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        return out["state"], dict(out["meta"])

    def restore_meta(self, step: int) -> dict:
        out = self.manager.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _is_meta_leaf(m) -> bool:
    return hasattr(m, "shape") and hasattr(m, "dtype")


def _restore_numpy(state_dir: str, select) -> Any:
    """Reads the sub-tree `select(tree)` of a saved state as host numpy arrays, whatever
    devices or processes wrote it."""
    with _quiet_read_only_notices(), ocp.PyTreeCheckpointer() as ptc:
        tree_md = ptc.metadata(state_dir).item_metadata
        target = jax.tree.map(
            lambda m: np.zeros(m.shape, m.dtype), select(tree_md), is_leaf=_is_meta_leaf
        )
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
        out = ptc.restore(
            state_dir,
            args=ocp.args.PyTreeRestore(
                item=target, restore_args=restore_args, partial_restore=True
            ),
        )
    return jax.tree.map(np.asarray, out)


def _resolve_step(workdir: str, step: int | None) -> tuple[str, int, dict]:
    d = checkpoint_dir(workdir)
    if not os.path.isdir(d):
        raise FileNotFoundError(f"{workdir}: no training checkpoints (missing {d})")
    ckpt = Checkpointer(workdir, read_only=True, async_save=False)
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise FileNotFoundError(f"{d}: no complete checkpoint")
        step = max(steps) if step is None else int(step)
        if step not in steps:
            raise FileNotFoundError(f"{d}: no checkpoint for step {step}; have {sorted(steps)}")
        meta = ckpt.restore_meta(step)
    finally:
        ckpt.close()
    return os.path.join(d, str(step), "state"), step, meta


def load_state_numpy(workdir: str, step: int | None = None) -> tuple[dict, dict]:
    """(state as a dict of numpy trees {params, opt_state, step, rng}, meta) of a checkpoint."""
    state_dir, _, meta = _resolve_step(workdir, step)
    return _restore_numpy(state_dir, lambda t: t), meta


def load_encoder_from_workdir(
    workdir: str, step: int | None = None
) -> tuple[ModelConfig, Any, NormStats]:
    """(ModelConfig, encoder params as a numpy tree, NormStats) of a training workdir.

    Only the encoder parameters are read from disk (orbax partial restore), not the decoder
    or the optimizer state. `step=None` takes the latest checkpoint.
    """
    state_dir, _, meta = _resolve_step(workdir, step)
    out = _restore_numpy(state_dir, lambda t: {"params": {"encoder": t["params"]["encoder"]}})
    params = out["params"]["encoder"]
    return ModelConfig.from_dict(meta["model"]), params, NormStats.from_dict(meta["norm_stats"])


def write_json(path: str, obj: Any) -> None:
    """Atomic JSON write (temporary file + rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
