"""Training checkpoints: orbax CheckpointManager under WORKDIR/checkpoints/<step>/.

Each step directory holds three items: `state` (params, opt_state, step, rng: the train state
pytree), `meta` (JSON: model config, normalisation statistics, data position, config) and
`checksums` (JSON: every state array's checksum, `model.checksums`).
Orbax writes into a temporary directory and renames it when complete (on gs://, where
renaming is a copy, it marks a complete step with a commit file instead), so a save killed
half-way never replaces the latest good checkpoint. The workdir may be a local path or a URL
(gs://...): orbax reaches buckets through etils.epath and tensorstore. A step damaged later
(a truncated or overwritten file, a missing part, a flipped bit: the checksums are checked
on every restore) is found when it fails to restore:
`restore_newest` falls back to the newest step that restores and moves the damaged ones to
WORKDIR/damaged_checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from msm_mae_jax.core import fs, interrupts
from msm_mae_jax.core.errors import ConfigError, UserError
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.model import checksums, orbax_quiet
from msm_mae_jax.model.config import ModelConfig
from msm_mae_jax.train import checkpoint_meta

log = logging.getLogger(__name__)

CKPT_DIR = "checkpoints"
DAMAGED_DIR = "damaged_checkpoints"  # beside CKPT_DIR: out of orbax's way, never deleted
CHECKSUMS_ITEM = "checksums"  # a step's third item: {array path: checksum} of its state


class CheckpointError(UserError):
    """Checkpoints cannot be written, or none of a workdir's restores; the message says why
    and which step is the newest usable one."""


class ChecksumMismatch(ValueError):
    """A restored array differs from the one saved (damaged after it was written)."""


class Restored(NamedTuple):
    step: int
    state: Any
    meta: dict
    damaged: list[tuple[int, str, str]]  # (step, why, where it was moved)


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
def quiet_read_only_notices() -> Iterator[None]:
    """Drops `_READ_ONLY_NOTICES` from orbax's logger ('absl') while reading; others pass."""
    logger, notices = logging.getLogger("absl"), _DropReadOnlyNotices()
    logger.addFilter(notices)
    try:
        yield
    finally:
        logger.removeFilter(notices)


def checkpoint_dir(workdir: str) -> str:
    return fs.join(fs.absolute(workdir), CKPT_DIR)


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
        orbax_quiet.install()
        with quiet_read_only_notices() if read_only else contextlib.nullcontext():
            self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A failed write (disk full, a read-only or vanished file system), also one detected
        late by an async save, becomes one CheckpointError that says what still exists."""
        try:
            yield
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 (orbax/tensorstore raise many kinds)
            latest = self.manager.latest_step()
            have = "none" if latest is None else f"step {latest}"
            raise CheckpointError(
                f"writing a checkpoint to {self.directory} failed ({describe_error(e)}); "
                f"newest complete checkpoint: {have}. Fix the cause (space, permissions) and "
                "run the same command to resume from it"
            ) from e

    def save(self, step: int, state: Any, meta: dict, force: bool = True) -> bool:
        """Starts an (async) save; the state's device buffers are copied before returning,
        so the caller may donate them to the next step. Every array's checksum is saved beside
        (`model.checksums`) and checked when the step is restored."""
        sums = checksums.tree_checksums(state)
        # Ctrl-C waits until the save has started (then raises): an interrupted start would
        # leave the step half-made, neither saved nor abandoned cleanly.
        with interrupts.deferred(reraise=True), self._writing():
            return self.manager.save(
                int(step),
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    meta=ocp.args.JsonSave(meta),
                    **{CHECKSUMS_ITEM: ocp.args.JsonSave(sums)},
                ),
                force=force,
            )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores into the shardings carried by `abstract_state` (jax.ShapeDtypeStruct
        leaves with .sharding): each device reads only its own shard. ChecksumMismatch when
        an array differs from what was saved."""
        items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
        if self.has_checksums(step):
            items[CHECKSUMS_ITEM] = ocp.args.JsonRestore()
        out = self.manager.restore(int(step), args=ocp.args.Composite(**items))
        bad = checksums.first_mismatch(out["state"], out.get(CHECKSUMS_ITEM))
        if bad:
            raise ChecksumMismatch(bad)
        return out["state"], dict(out["meta"])

    def has_checksums(self, step: int) -> bool:
        """Steps saved before checksums were recorded have none (and are not checked)."""
        return fs.isfile(fs.join(self.directory, str(int(step)), CHECKSUMS_ITEM, "metadata"))

    def restore_checksums(self, step: int) -> dict | None:
        if not self.has_checksums(step):
            return None
        out = self.manager.restore(
            int(step), args=ocp.args.Composite(**{CHECKSUMS_ITEM: ocp.args.JsonRestore()})
        )
        return dict(out[CHECKSUMS_ITEM])

    def restore_meta(self, step: int) -> dict:
        """The step's metadata; checkpoint_meta.MetaError (naming the file) when damaged."""
        path = fs.join(self.directory, str(step), "meta", "metadata")
        try:
            out = self.manager.restore(
                int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            )
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise checkpoint_meta.unreadable(path, e) from None
        return checkpoint_meta.check(out["meta"], path)

    def restore_newest(
        self, abstract_state: Any, check_meta: Callable[[int, dict], None]
    ) -> Restored | None:
        """The newest step that restores (state with finite values); None without checkpoints.

        `check_meta(step, meta)` vets a step's meta before its state is read; its ConfigError
        stops the search (a different run, not a damaged file). Steps that fail to restore
        are moved to WORKDIR/damaged_checkpoints once an older step has restored (no step
        restoring is more likely a file system problem: then nothing is moved and
        CheckpointError names every step and why). Every process must call this."""
        damaged: list[tuple[int, str]] = []
        for step in sorted(self.all_steps(), reverse=True):
            why = _missing_parts(fs.join(self.directory, str(step)))
            state, meta = None, {}
            if why is None:
                try:
                    check_meta(step, self.restore_meta(step))
                    state, meta = self.restore(step, abstract_state)
                    why = _non_finite(state)
                except ConfigError:
                    raise
                except ChecksumMismatch as e:
                    why = str(e)
                except Exception as e:  # noqa: BLE001 (orbax/tensorstore raise many kinds)
                    why = describe_error(e)
            why = _agreed(why)
            if why is None:
                return Restored(step, state, meta, self._move_aside(damaged))
            log.warning("checkpoint step %d in %s is damaged: %s", step, self.directory, why)
            damaged.append((step, why))
        if damaged:
            raise CheckpointError(
                f"no checkpoint in {self.directory} can be restored: "
                + "; ".join(f"step {s}: {why}" for s, why in damaged)
                + ". Nothing was moved; check the file system, or move these step folders "
                "out of the way to start over"
            )
        return None

    def _move_aside(self, damaged: list[tuple[int, str]]) -> list[tuple[int, str, str]]:
        """Renames damaged step folders into WORKDIR/damaged_checkpoints (process 0; on object
        stores a copy then a delete)."""
        if not damaged:
            return []
        root = fs.join(fs.dirname(self.directory), DAMAGED_DIR)
        out = []
        for step, why in damaged:
            dest, k = fs.join(root, str(step)), 1
            while fs.exists(dest):
                dest, k = fs.join(root, f"{step}.{k}"), k + 1
            if jax.process_index() == 0:
                fs.makedirs(root)
                fs.rename(fs.join(self.directory, str(step)), dest)
            out.append((step, why, dest))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils  # noqa: PLC0415

            multihost_utils.sync_global_devices("msm_mae_jax damaged checkpoints moved")
        self.manager.reload()
        return out

    def wait(self) -> None:
        with self._writing():
            self.manager.wait_until_finished()

    def finish_saves(self) -> int | None:
        """After Ctrl-C: completes the save in flight and returns the newest complete step, so
        what is then said about it is true. A save that fails is logged; so is one abandoned
        by another KeyboardInterrupt (a command exits at once on a second Ctrl-C instead:
        `core.interrupts`, whose line then names `newest_complete_now`)."""
        if self.manager.is_saving_in_progress():
            log.warning("finishing the checkpoint save in flight (Ctrl-C again to exit without it)")
        try:
            self.wait()
        except (CheckpointError, KeyboardInterrupt) as e:
            log.warning("the checkpoint save in flight did not complete: %s", describe_error(e))
        self.manager.reload()
        return self.manager.latest_step()

    def newest_complete_now(self) -> str:
        """'newest complete checkpoint: step N' (or none), read from the directory now (no
        lock of the manager's: safe in a signal handler while a save is in flight)."""
        steps = ocp.utils.checkpoint_steps(self.directory) if fs.isdir(self.directory) else []
        return f"newest complete checkpoint: {f'step {max(steps)}' if steps else 'none'}"

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()


def describe_error(e: BaseException) -> str:
    """The innermost cause of a failure, on one line (tensorstore specs left out)."""
    while (inner := e.__cause__ or (None if e.__suppress_context__ else e.__context__)) is not None:
        e = inner  # (an error raised `from None` already says what its cause was)
    text = re.sub(r"\s*\[tensorstore_spec=.*", "", str(e), flags=re.S)
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) > 320:  # what failed comes first, why (the OS error) last: keep both ends
        text = f"{text[:110]} ... {text[-200:]}"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _missing_parts(step_dir: str) -> str | None:
    """A missing or empty part of a step folder (orbax reports these obscurely)."""
    for part in ("meta/metadata", "state/_METADATA", "state/manifest.ocdbt"):
        path = fs.join(step_dir, *part.split("/"))
        if part.endswith(".ocdbt") and not fs.exists(path):
            continue  # written only with OCDBT (orbax's default)
        if not fs.isfile(path):
            return f"{part} is missing"
        if fs.size(path) == 0:
            return f"{part} is empty"
    return None


def _non_finite(state: Any) -> str | None:
    """Names the first parameter or optimizer array holding NaN/Inf, if any."""
    flat = jax.tree_util.tree_flatten_with_path((state.params, state.opt_state))[0]
    for path, x in flat:
        if jnp.issubdtype(x.dtype, jnp.floating) and not bool(jnp.isfinite(x).all()):
            return f"non-finite values in {jax.tree_util.keystr(path)}"
    return None


def _agreed(why: str | None) -> str | None:
    """Multi-process: a step restores only if it restores on every process."""
    if jax.process_count() == 1:
        return why
    from jax.experimental import multihost_utils  # noqa: PLC0415

    ok = multihost_utils.process_allgather(np.int32(why is None))
    return why if why is not None or bool(np.all(ok)) else "fails to restore on another process"


def _is_meta_leaf(m) -> bool:
    return hasattr(m, "shape") and hasattr(m, "dtype")


def _restore_numpy(state_dir: str, select) -> Any:
    """Reads the sub-tree `select(tree)` of a saved state as host numpy arrays, whatever
    devices or processes wrote it."""
    with quiet_read_only_notices(), ocp.PyTreeCheckpointer() as ptc:
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


def _read_checkpoint(workdir: str, step: int | None, select) -> tuple[Any, dict]:  # noqa: ANN001
    """(`select(state tree)` as numpy, meta) of checkpoint `step`, or of the newest one that
    reads (`step=None`: a damaged newer step is passed over with a warning, not moved)."""
    d = checkpoint_dir(workdir)
    if not fs.isdir(d):
        raise FileNotFoundError(f"{workdir}: no training checkpoints (missing {d})")
    ckpt = Checkpointer(workdir, read_only=True, async_save=False)
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise FileNotFoundError(f"{d}: no complete checkpoint")
        if step is not None and int(step) not in steps:
            raise FileNotFoundError(f"{d}: no checkpoint for step {step}; have {sorted(steps)}")
        problems = []
        for s in [int(step)] if step is not None else sorted(steps, reverse=True):
            why = _missing_parts(fs.join(d, str(s)))
            if why is None:
                try:
                    meta = ckpt.restore_meta(s)
                    out = _restore_numpy(fs.join(d, str(s), "state"), select)
                    why = checksums.first_mismatch(out, ckpt.restore_checksums(s))
                    if why is None:
                        return out, meta
                except Exception as e:  # noqa: BLE001 (orbax/tensorstore raise many kinds)
                    why = describe_error(e)
            log.warning("checkpoint step %d in %s cannot be read: %s", s, d, why)
            problems.append(f"step {s}: {why}")
    finally:
        ckpt.close()
    raise CheckpointError(f"no checkpoint in {d} can be read: {'; '.join(problems)}")


def load_state_numpy(workdir: str, step: int | None = None) -> tuple[dict, dict]:
    """(state as a dict of numpy trees {params, opt_state, step, rng}, meta) of a checkpoint."""
    return _read_checkpoint(workdir, step, lambda t: t)


def load_encoder_from_workdir(
    workdir: str, step: int | None = None
) -> tuple[ModelConfig, Any, NormStats]:
    """(ModelConfig, encoder params as a numpy tree, NormStats) of a training workdir.

    Only the encoder parameters are read from disk (orbax partial restore), not the decoder
    or the optimizer state. `step=None` takes the newest checkpoint that reads.
    """
    out, meta = _read_checkpoint(
        workdir, step, lambda t: {"params": {"encoder": t["params"]["encoder"]}}
    )
    params = out["params"]["encoder"]
    model_config, norm_stats = checkpoint_meta.model_objects(meta, checkpoint_dir(workdir))
    return model_config, params, norm_stats


def write_json(path: str, obj: Any) -> None:
    """Atomic JSON write (local path or URL)."""
    fs.write_text(path, json.dumps(obj, indent=2, sort_keys=True))
