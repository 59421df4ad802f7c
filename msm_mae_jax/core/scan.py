"""Listing a user's folder without blocking on, or wandering out through, what is in it.

A folder may hold FIFOs, sockets and devices, which are never opened (`core.paths`): a FIFO
among the files of a plain listing (embed, the `files:` source, prepare, a task's clips) is
skipped and counted like an unreadable file where it is read; `walk` (tasks make) and `names`
(the suite folder) list regular files only and say what they left out and why. A symbolic link
may lead anywhere (one to `/` makes a walk of the whole file system).

`walk` follows symbolic links to folders (datasets often link their parts in from elsewhere),
each folder once; with `inside=FOLDER` links that lead out of that folder are not followed
and their files are not listed (each counted as skipped). URLs (gs://...) hold only
objects: they are listed as they are.
"""

from __future__ import annotations

import dataclasses
import os

from msm_mae_jax.core import fs
from msm_mae_jax.core.paths import not_regular, special_kind


def names(folder: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(names in `folder`, sorted, less FIFOs, sockets and devices; (name, why) of those)."""
    keep, special = [], []
    for n in fs.listdir(folder):
        why = not_regular(fs.join(folder, n))
        if why:
            special.append((n, why))
        else:
            keep.append(n)
    return keep, special


@dataclasses.dataclass
class Listing:
    """The regular files below a folder (sorted full paths) and what was left out."""

    files: list[str]
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, why)

    def counts(self) -> dict[str, int]:
        """Skipped entries by reason (the part of the reason after the path)."""
        out: dict[str, int] = {}
        for _, why in self.skipped:
            out[why] = out.get(why, 0) + 1
        return out


def walk(
    root: str,
    *,
    inside: str | None = None,
    skip_empty: bool = False,
    hidden: bool = True,
    max_depth: int | None = None,
    follow_links: bool = True,
) -> Listing:
    """Every regular file below the folder `root`; FIFOs, sockets and devices (with `inside`, a
    folder, symbolic links that lead out of it; with `skip_empty`, zero-byte files) are
    skipped with their reason. `hidden=False` leaves out hidden files and does not enter hidden
    folders; `max_depth` 0 lists `root`'s own files only. Folders that cannot be read are
    left out."""
    if fs.is_remote(root):
        return Listing(fs.walk_files(root))
    top = os.path.realpath(inside) if inside is not None else None
    out = Listing([])
    seen: set[tuple[int, int]] = set()
    _first_visit(root, seen)
    base_depth = root.rstrip(os.sep).count(os.sep)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_links):
        keep = []
        deeper = max_depth is None or dirpath.count(os.sep) - base_depth < max_depth
        for d in sorted(dirnames) if deeper else ():
            path = os.path.join(dirpath, d)
            if not hidden and d.startswith("."):
                continue
            if top is not None and os.path.islink(path) and not _within(path, top):
                out.skipped.append((path, f"a symbolic link out of {inside}, not followed"))
            elif _first_visit(path, seen):
                keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            if not hidden and f.startswith("."):
                continue
            path = os.path.join(dirpath, f)
            why = _why_not(path, top, inside, skip_empty)
            if why:
                out.skipped.append((path, why))
            else:
                out.files.append(path)
    out.files.sort()
    return out


def _why_not(path: str, top: str | None, inside: str | None, skip_empty: bool) -> str | None:
    """Why a listed name is not a file to use (None: it is one)."""
    if top is not None and os.path.islink(path) and not _within(path, top):
        return f"a symbolic link out of {inside}, not followed"
    try:
        st = os.stat(path)
    except OSError as e:  # a broken link, a file removed meanwhile, no permission
        return f"cannot be read ({e.strerror or type(e).__name__})"
    what = special_kind(st.st_mode)
    if what:
        return f"{what}, not a regular file"
    return "empty (0 bytes)" if skip_empty and st.st_size == 0 else None


def _within(path: str, top: str) -> bool:
    real = os.path.realpath(path)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def _first_visit(path: str, seen: set[tuple[int, int]]) -> bool:
    """False for a folder already walked (a link back to it) or one that cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    key = (st.st_dev, st.st_ino)
    if key in seen:
        return False
    seen.add(key)
    return True
