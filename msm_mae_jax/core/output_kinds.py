"""The kinds of output the commands write, one row each, and how an existing one is told from
anything else (`core.outputs` refuses to replace anything else).

A file is recognised from its content, never its name: an embeddings .npz holds `paths` and
`scene`; a results JSON is an object with `task` and `metric`; a task CSV starts with EVAR's
header. A folder kind is recognised by what it holds (an empty folder is always accepted by
`outputs.check_dir`). tests/test_outputs.py writes embeddings, results, a plan and a task (CSV
and settings) with their real writers and checks that each is recognised by its own row and
by no other; a command run again over its own output (export, prepare, the suite) relies on
the folder rows.
"""

from __future__ import annotations

import fnmatch
import json
import zipfile
from collections.abc import Sequence

from msm_mae_jax.core import fs
from msm_mae_jax.core.outputs import Kind

MAX_READ = 64 * 2**20  # a file this large is not one of the small JSON/CSV outputs
MODEL_META_FILE = "msm_mae.json"  # model/artifact.py: the encoder artifact's metadata
MODEL_PARAMS_DIR = "encoder"


def _head(path: str, size: int = 4096) -> str:
    """The first characters of a text file ('' when it is not UTF-8 text)."""
    try:
        with fs.open(path, "rb") as f:
            data = f.read(size)
        return data.decode("utf-8-sig", errors="strict")
    except (OSError, UnicodeDecodeError):
        return ""


def _json_object(path: str) -> dict | None:
    try:
        if fs.size(path) > MAX_READ:
            return None
        obj = json.loads(fs.read_bytes(path).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def json_with(keys: Sequence[str]):  # noqa: ANN201 (a recogniser)
    """A JSON object holding every key of `keys`."""
    return lambda path: (obj := _json_object(path)) is not None and all(k in obj for k in keys)


def npz_with(members: Sequence[str]):  # noqa: ANN201
    """A numpy .npz (zip) holding an array for each name in `members`."""

    def recognise(path: str) -> bool:
        try:
            with fs.open(path, "rb") as f, zipfile.ZipFile(f) as z:
                names = set(z.namelist())
        except (OSError, zipfile.BadZipFile, ValueError, EOFError):
            return False
        return all(f"{m}.npy" in names for m in members)

    return recognise


def first_line(*starts: str):  # noqa: ANN201
    """A text file whose first line starts with one of `starts`."""
    return lambda path: _head(path).split("\n", 1)[0].rstrip("\r").startswith(starts)


def first_line_is(*lines: str):  # noqa: ANN201
    """A text file whose first line is one of `lines`."""
    return lambda path: _head(path).split("\n", 1)[0].rstrip("\r") in lines


def folder_with(*patterns: str):  # noqa: ANN201
    """A folder with an entry matching one of the glob `patterns`."""

    def recognise(path: str) -> bool:
        try:
            names = fs.listdir(path)
        except OSError:
            return False
        return any(fnmatch.fnmatch(n, p) for n in names for p in patterns)

    return recognise


def _model_dir(path: str) -> bool:
    """An encoder artifact, or what a cut write of one left (its parts only)."""
    try:
        names = fs.listdir(path)
    except OSError:
        return False
    parts = (MODEL_META_FILE, MODEL_PARAMS_DIR)
    return MODEL_META_FILE in names or all(n.startswith(parts) for n in names)


EMBEDDINGS = Kind(
    "an embeddings .npz of msm-mae embed", "embeddings.npz", npz_with(["paths", "scene"])
)
RESULTS = Kind(
    "a results JSON of msm-mae eval or finetune", "results.json", json_with(["task", "metric"])
)
PLAN = Kind("a plan JSON of msm-mae plan", "plan.json", json_with(["command", "plans"]))
TASK_CSV = Kind(
    "a task CSV of msm-mae tasks make",
    "NAME.csv",
    first_line_is("file_name,label,split", "file_name,label,fold"),
)
TASK_SETTINGS = Kind(
    "task settings of msm-mae tasks make",
    "NAME.json",
    json_with(["name", "csv", "audio_dir", "unit_sec"]),
)
SUITE_SUMMARY_CSV = Kind(
    "a summary CSV of msm-mae eval --suite", "summary.csv", first_line("model,")
)
SUITE_SUMMARY_MD = Kind("a summary of msm-mae eval --suite", "summary.md", first_line("| model |"))
SUITE_ERROR = Kind(
    "an error report of msm-mae eval --suite", "NAME.error.txt", first_line("Traceback")
)
MODEL_DIR = Kind("an encoder model folder of msm-mae export or convert", "model", _model_dir, True)
LMS_DIR = Kind(
    "a log-mel shard folder of msm-mae prepare",
    "lms",
    folder_with("manifest.json", "lms-*-of-*.tfrecord", "lms-*-of-*.tfrecord.json"),
    True,
)
FINETUNE_WORKDIR = Kind(
    "a fine-tuning workdir of msm-mae finetune", "ft", folder_with("job.json"), True
)
