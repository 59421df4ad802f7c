"""The encoder artifact: a directory with the encoder's parameters and what is needed to use them.

Written by `msm_mae_jax.export` (from a training run) and `msm_mae_jax.convert` (official
PyTorch weights); read by `msm_mae_jax.runtime.Runtime.load`. Layout:

    DIR/msm_mae.json   {"format", "model": ModelConfig, "norm_stats": {mean, std},
                        "version", "source", "checksums": {"arrays", "files"}, ...extra}
    DIR/encoder/       orbax PyTree checkpoint of the encoder parameters (float32)
    DIR/<name>         further files of the artifact (a fine-tuned head), when given

Writing never damages an existing artifact: the new one is written completely beside it
(`.DIR.partial-PID` in the same folder) and then swapped in with one atomic rename (Linux
`renameat2(RENAME_EXCHANGE)`; elsewhere two renames a moment apart), so a process killed at any
moment leaves the old artifact or the new one, plus at most a `.partial-`/`.replaced-` folder
that the next write removes. (Object stores have no rename: there the files are replaced in
place, the metadata removed first and written last, so a cut write leaves no artifact rather
than a mixed one.)

Every array's checksum (`model.checksums`) and every further file's SHA-256 are recorded in
the metadata and checked when the artifact is read: damage (a flipped bit) is a ValueError
naming the array or file, never silently different features.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from msm_mae_jax import __version__
from msm_mae_jax.core import fs, json_files
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.model import checksums, orbax_quiet
from msm_mae_jax.model.config import ModelConfig

FORMAT = "msm_mae_jax.encoder/1"
META_FILE = "msm_mae.json"
PARAMS_DIR = "encoder"
# Tests only: pause the writer (touch this file, then sleep) just before the swap.
PAUSE_ENV = "MSM_MAE_TEST_PAUSE_BEFORE_SWAP"


def is_model_dir(path: str) -> bool:
    return fs.isfile(fs.join(path, META_FILE))


def save_model_dir(
    path: str,
    model_config: ModelConfig,
    encoder_params: Any,
    norm_stats: NormStats,
    source: str,
    extra: dict | None = None,
    files: dict[str, bytes] | None = None,
) -> str:
    """Writes the artifact to `path` (replacing an artifact there atomically); returns path.

    files: further files of the artifact, {name: content}, checksummed like the arrays.
    ValueError: `path` exists and is something else (a file, a folder of other files)."""
    path = fs.absolute(path).rstrip("/")
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), encoder_params)
    files = dict(files or {})
    meta = {
        "format": FORMAT,
        "model": model_config.to_dict(),
        "norm_stats": norm_stats.to_dict(),
        "version": __version__,
        "source": source,
        **(extra or {}),
        "checksums": {
            "arrays": checksums.tree_checksums(params),
            "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        },
    }
    if fs.is_remote(path):
        fs.remove(fs.join(path, META_FILE))  # no artifact until the new one is complete
        fs.rmtree(fs.join(path, PARAMS_DIR))
        _write(path, params, files, meta)
        return path
    _check_replaceable(path)
    parent, base = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    _remove_leftovers(parent, base)
    tmp = os.path.join(parent, f".{base}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(tmp, params, files, meta)
        _pause_for_tests()
        _swap_in(tmp, path, os.path.join(parent, f".{base}.replaced-{os.getpid()}"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _write(path: str, params: Any, files: dict[str, bytes], meta: dict) -> None:
    """The artifact's files into `path`; the metadata last."""
    fs.makedirs(path)
    orbax_quiet.install()
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(fs.join(path, PARAMS_DIR), params)
        ckptr.wait_until_finished()
    for name, data in files.items():
        fs.write_bytes(fs.join(path, name), data)
    fs.write_text(fs.join(path, META_FILE), json.dumps(meta, indent=2))


def _check_replaceable(path: str) -> None:
    """An existing `path` must be an artifact, an empty folder or an artifact's remains."""
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path):
        raise ValueError(f"{path} exists and is not a directory; give a folder for the model")
    names = os.listdir(path)
    if META_FILE in names or all(n.startswith((PARAMS_DIR, META_FILE)) for n in names):
        return
    raise ValueError(
        f"{path} is a folder of other files (no {META_FILE}); give a new or empty folder, or "
        "an existing model directory to replace"
    )


def _remove_leftovers(parent: str, base: str) -> None:
    """Folders of earlier writes that were killed (whose process is gone)."""
    for name in os.listdir(parent):
        for kind in (".partial-", ".replaced-"):
            prefix = f".{base}{kind}"
            if name.startswith(prefix) and not _alive(name[len(prefix) :]):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return int(pid) != os.getpid()


def _pause_for_tests() -> None:
    marker = os.environ.get(PAUSE_ENV)
    if marker:
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(3600)


def _swap_in(new: str, path: str, aside: str) -> None:
    """Moves the complete folder `new` to `path`, replacing what is there atomically."""
    if not os.path.lexists(path):
        os.rename(new, path)
        return
    if _exchange(new, path):  # `new` now holds the old artifact
        shutil.rmtree(new, ignore_errors=True)
        return
    os.rename(path, aside)
    os.rename(new, path)
    shutil.rmtree(aside, ignore_errors=True)


def _exchange(a: str, b: str) -> bool:
    """Swaps two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def load_meta(path: str) -> dict:
    """The artifact's metadata (`msm_mae.json`) as a dict; FileNotFoundError when `path` is no
    artifact, ValueError (DataError when not JSON) naming the file when it is damaged."""
    meta_path = fs.join(path, META_FILE)
    if not fs.isfile(meta_path):
        raise FileNotFoundError(f"{path}: not an msm_mae_jax model directory (no {META_FILE})")
    meta = json_files.read_object(
        meta_path, "the model's metadata", hint="export or convert the model again"
    )
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{meta_path}: unsupported format {meta.get('format')!r}, expected {FORMAT!r}"
        )
    return meta


def load_model_dir(path: str) -> tuple[ModelConfig, Any, NormStats, dict]:
    """Returns (model config, encoder params as numpy, normalisation stats, metadata).

    ValueError naming the array when a checksum recorded at export does not match."""
    meta_path = fs.join(path, META_FILE)
    meta = load_meta(path)
    try:
        model_config = ModelConfig.from_dict(meta["model"])
        norm_stats = NormStats.from_dict(meta["norm_stats"])
    except (KeyError, TypeError, ValueError) as e:  # entries a save never writes
        raise ValueError(
            f"{meta_path}: the model's metadata is damaged ({type(e).__name__}: {e}); export "
            "or convert the model again"
        ) from None
    orbax_quiet.install()
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(fs.join(fs.absolute(path), PARAMS_DIR))
    params = jax.tree.map(np.asarray, params)
    bad = checksums.first_mismatch(params, meta.get("checksums", {}).get("arrays"))
    if bad:
        raise ValueError(
            f"{fs.join(path, PARAMS_DIR)}: {bad}; the model is damaged, export it again"
        )
    return model_config, params, norm_stats, meta


def read_file(path: str, name: str, meta: dict) -> bytes:
    """A further file of the artifact, checked against its recorded SHA-256 (when recorded)."""
    data = fs.read_bytes(fs.join(path, name))
    want = meta.get("checksums", {}).get("files", {}).get(name)
    if want is not None and hashlib.sha256(data).hexdigest() != want:
        raise ValueError(
            f"{fs.join(path, name)}: checksum mismatch (the file changed since it was "
            "written); the model is damaged, export it again"
        )
    return data
