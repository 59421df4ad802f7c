"""Names taken from user data (fold values, split and label names, task names) as path parts.

A value read from a CSV or a folder listing must never choose where a file is written:
`path_component` turns any string into one safe component of a path (no separators, no
`.`/`..`, no control characters, bounded length). Values that had to be changed get a short
hash of the original, so two different values never share a folder.
"""

from __future__ import annotations

import hashlib
import re

MAX_COMPONENT = 80  # characters kept of the readable part
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def path_component(value: object) -> str:
    """A file or folder name made from `value`: itself when already safe, else its safe
    characters plus `-<8 hex of sha256>`; never empty, never `.` or `..`, never hidden."""
    text = str(value)
    safe = _UNSAFE.sub("_", text).strip("._")[:MAX_COMPONENT]
    if safe == text and safe:
        return safe
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{safe}-{digest}" if safe else digest
