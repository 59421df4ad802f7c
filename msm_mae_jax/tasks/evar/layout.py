"""What every task builder shares: finding a dataset's folder, listing its files, reading its
metadata, the shipped split lists and the one result type a builder returns.

A builder reads a dataset in the layout its publisher ships and returns `Built`: rows
`(file_name, label, split_or_fold)` with `file_name` relative to `Built.root`. Only files that
exist become rows, so a folder with part of a dataset gives a task of what is there. A folder
that is not the dataset is a `DatasetLayoutError` naming what is missing.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import dataclasses
import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources

from msm_mae_jax.core import paths, scan
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


_NOTES: contextvars.ContextVar[list | None] = contextvars.ContextVar("scan_notes", default=None)


@contextlib.contextmanager
def scan_notes() -> Iterator[list[str]]:
    """Collects, for the lines `tasks make` shows, what the `list_files` calls of a build
    skipped: one note per reason with its count (filled in when the block ends)."""
    skipped: list[tuple[str, str]] = []
    notes: list[str] = []
    token = _NOTES.set(skipped)
    try:
        yield notes
    finally:
        _NOTES.reset(token)
        counts: dict[str, int] = {}
        for _, why in dict(skipped).items():  # a file listed twice is counted once
            counts[why] = counts.get(why, 0) + 1
        notes += [f"{n:,} skipped: {why}" for why, n in counts.items()]


def list_files(
    root: str, sub: str = "", exts: Iterable[str] = (".wav",), recursive: bool = True
) -> list[str]:
    """Regular, non-empty files below `root/sub` (only those directly in it unless
    `recursive`) whose extension (lower-cased) is in `exts`, as sorted '/'-joined paths
    relative to `root`; hidden files and folders are left out. Symbolic links are followed
    while they stay inside `root` (`core.scan.walk`): one to `/` is never walked. FIFOs,
    sockets, devices, empty files and links out of `root` are skipped (`scan_notes`)."""
    exts = tuple(e.lower() for e in exts)
    top = os.path.join(root, sub) if sub else root
    if not os.path.isdir(top):
        return []
    depth = None if recursive else 0
    listing = scan.walk(top, inside=root, skip_empty=True, hidden=False, max_depth=depth)
    out = [
        os.path.relpath(p, root).replace(os.sep, "/")
        for p in listing.files
        if os.path.splitext(p)[1].lower() in exts
    ]
    skipped = _NOTES.get()
    if skipped is not None:  # of the files asked for, and links to folders
        skipped += [
            (p, why)
            for p, why in listing.skipped
            if os.path.splitext(p)[1].lower() in exts or "symbolic link" in why
        ]
    return sorted(out)


def read_csv(path: str, columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a metadata CSV; DatasetLayoutError naming the file when it cannot be read
    or lacks one of `columns`."""
    try:
        paths.check_regular(path)
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
        paths.check_regular(path)
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
