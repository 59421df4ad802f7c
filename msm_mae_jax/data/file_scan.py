"""Finding the audio files of a `files:` source and checking their headers up front.

A file whose header is unusable (empty, not audio, unreadable, shorter than one hop) is
skipped, warned about and counted in a `SkipReport`; no usable file left is a `DataError`
naming the source. Header checks are cached by (path, size, mtime) and run in threads.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import fnmatch
import glob
import logging
import os
import threading

from msm_mae_jax.core.errors import DataError
from msm_mae_jax.data import audio_io
from msm_mae_jax.data.source_base import SkipReport, SourceSpec

log = logging.getLogger(__name__)


@dataclasses.dataclass
class FileList:
    """Usable files of a `files:` source (sorted) and what was skipped while checking them."""

    paths: list[str]
    seconds: list[float]
    report: SkipReport


_INFO_CACHE: dict[tuple[str, int, int], tuple[float, str]] = {}  # (path, size, mtime) -> info
_INFO_LOCK = threading.Lock()


def list_audio_files(source: SourceSpec) -> list[str]:
    """Candidate audio files of a `files:` source (audio extensions only), sorted."""
    path = source.path
    if glob.has_magic(path):
        found = [p for p in glob.glob(path, recursive=True) if os.path.isfile(p)]
        where = f"glob {path!r}"
    elif os.path.isfile(path):
        found, where = [path], path
    elif os.path.isdir(path):
        found, where = [], f"{path} (patterns {list(source.patterns)})"
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for fn in filenames:
                full = os.path.join(dirpath, fn)
                rel = os.path.relpath(full, path)
                if any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(fn, g) for g in source.patterns):
                    found.append(full)
    else:
        raise DataError(f"data source {source.spec!r}: {path} does not exist")
    files = sorted(p for p in found if audio_io.is_audio_file(p))
    if not files:
        raise DataError(
            f"data source {source.spec!r}: no audio files found in {where} "
            f"(extensions: {', '.join(sorted(audio_io.AUDIO_EXTENSIONS))})"
        )
    return files


def _checked_info(path: str) -> tuple[float, str]:
    """(seconds, '') for a usable header, (0, reason) otherwise; cached by size and mtime."""
    try:
        st = os.stat(path)
        key = (path, st.st_size, st.st_mtime_ns)
    except OSError as e:
        return 0.0, f"{path}: {type(e).__name__}: {e}"
    with _INFO_LOCK:
        if key in _INFO_CACHE:
            return _INFO_CACHE[key]
    try:
        if not os.access(path, os.R_OK):
            raise audio_io.AudioError(f"{path}: not readable (permission denied)")
        info = audio_io.audio_info(path)
        out = (info.seconds, "")
        if info.seconds < audio_io.MIN_SECONDS:
            out = (0.0, f"{path}: too short ({info.frames} samples at {info.samplerate} Hz)")
    except audio_io.AudioError as e:
        out = (0.0, str(e))
    with _INFO_LOCK:
        _INFO_CACHE[key] = out
    return out


def scan_files(source: SourceSpec) -> FileList:
    """Lists and header-checks the files of a `files:` source; DataError if none is usable."""
    files = list_audio_files(source)
    report = SkipReport(source.spec)
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        infos = list(ex.map(_checked_info, files))
    paths, seconds = [], []
    for path, (sec, reason) in zip(files, infos, strict=True):
        if reason:
            report.add(path, reason)
        else:
            paths.append(path)
            seconds.append(sec)
    if report.count:
        log.warning("%s", report.summary())
    if not paths:
        raise DataError(
            f"data source {source.spec!r}: none of the {len(files)} audio file(s) is usable; "
            + report.summary()
        )
    return FileList(paths, seconds, report)
