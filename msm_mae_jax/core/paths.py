"""What a path names: a URL (`scheme://...`, read through fsspec) or a local path, and whether
a local path may be opened as a file.

A folder may hold things that are not files: a named pipe (FIFO) blocks whoever opens it until
a writer comes (forever, for a reader that was not expecting one), a device may never end, a
socket cannot be opened at all. Every reader asks `not_regular` (or `check_regular`) before it
opens a local path (`core.fs` reads, `data.audio_io`), so such an entry is refused, or skipped
and counted like an unreadable file, and never opened.
"""

from __future__ import annotations

import os
import re
import stat

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+://")
_SPECIAL = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class NotRegularFileError(OSError):
    """A path that is not a regular file (a FIFO, a socket, a device); never opened."""


def is_remote(path: str | os.PathLike) -> bool:
    """True for `scheme://...` URLs (they go through fsspec), False for local paths."""
    return bool(_URL.match(os.fspath(path)))


def special_kind(mode: int) -> str | None:
    """What a stat mode is when it is neither a regular file nor a folder, in words."""
    return next((what for test, what in _SPECIAL if test(mode)), None)


def not_regular(path: str | os.PathLike) -> str | None:
    """Why a local `path` must not be opened as a file ('a named pipe (FIFO), not a regular
    file'), or None: a regular file, a folder, something missing (the opener says so) or a
    URL. Follows symbolic links (a link to a FIFO is a FIFO)."""
    if is_remote(path):
        return None
    try:
        what = special_kind(os.stat(path).st_mode)
    except (OSError, ValueError):
        return None
    return f"{what}, not a regular file" if what else None


def check_regular(path: str | os.PathLike) -> None:
    """NotRegularFileError naming `path` when it is a FIFO, a socket or a device."""
    why = not_regular(path)
    if why:
        raise NotRegularFileError(f"{os.fspath(path)}: {why}")
