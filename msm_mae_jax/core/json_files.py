"""Small JSON files the project writes and reads back (model metadata, job and result files,
normalisation statistics): read as one JSON object, or a DataError naming the file.

A file that is not UTF-8 text, not JSON, or JSON but not an object, was not written by the
project (or was damaged since): the message says which file and what is wrong with it,
instead of a JSON decoder's "Expecting value: line 1 column 1".
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from msm_mae_jax.core import fs
from msm_mae_jax.core.errors import DataError


def read_object(path: str, what: str, keys: Sequence[str] = (), hint: str = "") -> dict:
    """The JSON object in `path` (a local path or URL), with every key in `keys`.

    `what` names the file's role in the message ("the model's metadata"), `hint` what to do
    ("export the model again")."""
    hint = f"; {hint}" if hint else ""
    try:
        obj = json.loads(fs.read_text(path))
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: {what} is damaged (byte 0x{e.object[e.start]:02x} at offset {e.start} is "
            f"not text){hint}"
        ) from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: {what} is damaged (not JSON: {e}){hint}") from None
    if not isinstance(obj, dict):
        raise DataError(
            f"{path}: {what} is damaged (a JSON {type(obj).__name__}, not an object){hint}"
        )
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DataError(f"{path}: {what} is damaged (no {', '.join(map(repr, missing))}){hint}")
    return obj
