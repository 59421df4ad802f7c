"""Output locations checked before any work: a command that will write a file or a folder
says in one line, at start-up, that it cannot (as `train` does for its workdir), instead of
failing with a traceback after minutes of extraction or training.

A location is refused when it is a folder where a file is wanted or a file where a folder is
wanted, when a folder above it is a file, and when the nearest existing folder above it
takes no file: read-only, no permission, or no space left (a small probe file is written
there and removed). Remote locations (gs://...) are checked for their kind only; writing to
them is checked when it happens.
"""

from __future__ import annotations

import os
import tempfile

from msm_mae_jax.core import fs
from msm_mae_jax.core.errors import UserError

PROBE_BYTES = 64 * 1024  # enough to meet a full disk (one block would be: more is safer)


class OutputError(UserError):
    """An output location that cannot be written; the message names the flag and path."""


def check_file(path: str, flag: str = "--out", example: str = "results.json") -> None:
    """`path` can be written as a file (its folders are created later)."""
    if fs.is_remote(path):
        if fs.isdir(path):
            raise OutputError(f"{flag} {path} is a folder; give the file to write")
        return
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path):
        raise OutputError(
            f"{flag} {path} is a folder; give the file to write, e.g. {os.path.join(path, example)}"
        )
    _check_folders_above(path, flag)


def check_dir(path: str, flag: str = "--out") -> None:
    """`path` can be written as a folder (created later if missing)."""
    if fs.is_remote(path):
        if fs.isfile(path):
            raise OutputError(f"{flag} {path} is a file; give a folder to write into")
        return
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"{flag} {path} is a file; give a folder to write into")
    if os.path.isdir(path):
        _probe(path, path, flag)
    else:
        _check_folders_above(path, flag)


def _check_folders_above(path: str, flag: str) -> None:
    """The nearest existing folder above `path` is a folder and takes files."""
    above = os.path.dirname(path)
    while not os.path.exists(above) and os.path.dirname(above) != above:
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise OutputError(f"{flag} {path}: {above} is a file, not a folder")
    _probe(above, path, flag)


def _probe(folder: str, path: str, flag: str) -> None:
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".msm_mae_probe") as f:
            f.write(b"\0" * PROBE_BYTES)
            f.flush()
    except OSError as e:  # read-only file system, permissions, no space left
        where = "" if folder == path else f" (in {folder})"
        raise OutputError(
            f"{flag} {path} is not writable{where}: {e.strerror or e}; nothing was done"
        ) from None
