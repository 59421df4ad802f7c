"""What every task builder shares: finding a dataset's folder, listing its files, reading its
metadata, the shipped split lists and the one result type a builder returns.

A builder reads a dataset in the layout its publisher ships and returns `Built`: rows
`(file_name, label, split_or_fold)` with `file_name` relative to `Built.root`. Only files that
exist become rows, so a folder with part of a dataset gives a task of what is there. A folder
that is not the dataset is a `DatasetLayoutError` naming what is missing.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
from collections.abc import Iterable, Sequence
from importlib import resources

from msm_mae_jax.core.errors import TaskError

SPLITS = ("train", "valid", "test")


class DatasetLayoutError(TaskError):
    """A dataset folder lacks what its publisher's layout has; the message names it."""


@dataclasses.dataclass
class Built:
    """A task made from a dataset folder (not yet written)."""

    root: str  # absolute; file_name values are relative to it
    rows: list[tuple[str, str, str]]  # (file_name, label, split) or (file_name, label, fold)
    by: str  # "split" or "fold"
    split_source: str  # where the split comes from, for the settings file
    notes: list[str] = dataclasses.field(default_factory=list)  # files left out, and why


def check_dir(dataset_dir: str) -> str:
    """The absolute dataset folder; DatasetLayoutError when it is not a folder."""
    if not os.path.isdir(dataset_dir):
        what = "not a folder" if os.path.exists(dataset_dir) else "no such folder"
        raise DatasetLayoutError(f"{dataset_dir}: {what}")
    return os.path.abspath(dataset_dir)


def find_root(dataset_dir: str, marker: str, inside: Sequence[str], expected: str) -> str:
    """The folder holding `marker` (a relative path): `dataset_dir` itself or one of the
    sub-folders named in `inside` (the release folder's usual names, so that the folder the
    archive was unpacked in works too)."""
    base = check_dir(dataset_dir)
    for sub in ("", *inside):
        root = os.path.join(base, sub) if sub else base
        if os.path.exists(os.path.join(root, marker)):
            return root
    where = " or ".join([marker] + [f"{sub}/{marker}" for sub in inside])
    raise DatasetLayoutError(f"{dataset_dir}: no {where} (expected {expected})")


def list_files(root: str, sub: str = "", exts: Iterable[str] = (".wav",)) -> list[str]:
    """Files below `root/sub` whose extension (lower-cased) is in `exts`, as sorted '/'-joined
    paths relative to `root`; hidden files and folders are skipped."""
    exts = tuple(e.lower() for e in exts)
    top = os.path.join(root, sub) if sub else root
    out, seen = [], set()
    _first_visit(top, "", seen)
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        # symlinked folders are followed (datasets often live elsewhere), each folder once
        dirnames[:] = [
            d for d in dirnames if not d.startswith(".") and _first_visit(dirpath, d, seen)
        ]
        rel = os.path.relpath(dirpath, root)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        out += [
            prefix + f
            for f in filenames
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in exts
        ]
    return sorted(out)


def _first_visit(parent: str, name: str, seen: set[tuple[int, int]]) -> bool:
    try:
        st = os.stat(os.path.join(parent, name))
    except OSError:
        return False
    key = (st.st_dev, st.st_ino)
    if key in seen:
        return False
    seen.add(key)
    return True


def read_csv(path: str, columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a metadata CSV; DatasetLayoutError naming the file when it cannot be read
    or lacks one of `columns`."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetLayoutError(f"{path}: cannot be read as CSV ({e})") from None
    missing = [c for c in columns if c not in header]
    if missing:
        raise DatasetLayoutError(
            f"{path}: no column {missing[0]!r} (columns: {', '.join(header) or 'none'})"
        )
    return rows


def read_lines(path: str) -> list[str]:
    """The non-empty, stripped lines of a text file."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetLayoutError(f"{path}: cannot be read ({e})") from None


def shipped_split(name: str) -> dict[str, str]:
    """A split list shipped with the package (data/NAME: two columns, key and split)."""
    text = resources.files(__package__).joinpath("data", name).read_text(encoding="utf-8")
    rows = list(csv.reader(text.splitlines()))[1:]
    return {key: split for key, split in rows}


def seeded_split(key: str, seed: int, ratios: Sequence[float]) -> str:
    """'train', 'valid' or 'test' for `key`, drawn with the given proportions from a hash of
    (seed, key): the same key always lands in the same split, whichever other keys exist."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()
    u = int(digest[:15], 16) / 16**15
    edge = 0.0
    for split, ratio in zip(SPLITS, ratios, strict=True):
        edge += ratio
        if u < edge:
            return split
    return SPLITS[-1]


def left_out(count: int, what: str) -> list[str]:
    """A note for `count` files left out (none when count is 0)."""
    return [f"{count:,} {what}"] if count else []
