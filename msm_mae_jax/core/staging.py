"""Local copies of remote files and folders, for writers and readers that need a real file
system: appending logs, TFRecord writers, libraries that open a path themselves.

For local paths everything here is the path itself: no copy, no behaviour change.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from msm_mae_jax.core import fs


def download_dir(url: str, local: str) -> None:
    """Every file below `url` into the local directory `local` (same relative paths)."""
    for f in fs.walk_files(url):
        dest = os.path.join(local, *fs.relpath(f, url).split("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        fs.copy_file(f, dest)


def upload_dir(local: str, url: str) -> None:
    """Every file below the local directory `local` to `url` (same relative paths)."""
    for src in fs.walk_files(local):
        fs.copy_file(src, fs.join(url, os.path.relpath(src, local).replace(os.sep, "/")))


class StagedDir:
    """A directory that may be remote. Local `target`: `path` is `target` itself and `sync`
    does nothing. Remote: `path` is a local temporary directory; `fetch(name)` copies an
    existing file down first, `sync()` uploads every file changed since the last sync (whole
    objects: each upload replaces the object atomically), `close()` syncs and cleans up."""

    def __init__(self, target: str):
        self.target = target
        self.remote = fs.is_remote(target)
        if self.remote:
            self.path = tempfile.mkdtemp(prefix="msm_mae_staged_")
        else:
            os.makedirs(target, exist_ok=True)
            self.path = target
        self._synced: dict[str, tuple[int, int]] = {}

    def fetch(self, name: str) -> bool:
        """Copies `target/name` down into `path/name` if it exists; True if it did."""
        if not self.remote:
            return os.path.exists(os.path.join(self.path, name))
        src = fs.join(self.target, name)
        if not fs.exists(src):
            return False
        dst = os.path.join(self.path, *name.split("/"))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        fs.copy_file(src, dst)
        self._synced[name] = _stamp(dst)
        return True

    def sync(self) -> None:
        if not self.remote:
            return
        for src in fs.walk_files(self.path):
            rel = os.path.relpath(src, self.path).replace(os.sep, "/")
            stamp = _stamp(src)
            if self._synced.get(rel) != stamp:
                fs.copy_file(src, fs.join(self.target, rel))
                self._synced[rel] = stamp

    def close(self) -> None:
        if not self.remote:
            return
        try:
            self.sync()
        finally:
            shutil.rmtree(self.path, ignore_errors=True)


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


@contextlib.contextmanager
def local_file(path: str) -> Iterator[str]:
    """A local path holding `path`'s bytes: `path` itself when local, else a temporary copy
    removed afterwards."""
    if not fs.is_remote(path):
        yield path
        return
    d = tempfile.mkdtemp(prefix="msm_mae_fetch_")
    try:
        dst = os.path.join(d, fs.basename(path) or "file")
        fs.copy_file(path, dst)
        yield dst
    finally:
        shutil.rmtree(d, ignore_errors=True)
