"""What orbax leaves on stderr after a failed checkpoint write or read, kept off it.

A save that fails (a full disk) or a read of a damaged file (a truncated array) reaches the
user as one line: the caller turns the exception orbax raises into a CheckpointError or a
fall-back to an older step. Orbax and tensorstore meanwhile print the same failure many times
over: an ERROR log with a traceback from every background thread that saw it, asyncio's
"Future exception was never retrieved" for the write futures nobody awaited, and, once the
event loop of the failed operation has closed, a "RuntimeError: Event loop is closed"
traceback (through `sys.unraisablehook`) for every tensorstore callback still arriving, and
one for every abandoned read: hundreds for one truncated file of a ViT-S checkpoint.
`install()` drops exactly those, process-wide:

- ERROR records with a traceback logged from orbax's own modules (the exception itself
  propagates to the caller, which reports it);
- asyncio's "... exception was never retrieved" records whose exception is a tensorstore
  write/read error (ValueError/OSError raised under orbax) or orbax's exception raised from
  one ("Encountered error while reading array index ... TensorStore");
- unraisable `RuntimeError('Event loop is closed')` from `call_soon_threadsafe`, and the
  exceptions of orbax's read/write coroutines abandoned when their batch failed ("Exception
  ignored in: <coroutine object _read_array_index_and_device_put>").

Everything else passes untouched.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import threading

_installed = False
_lock = threading.Lock()
_ORBAX_DIR = os.sep + "orbax" + os.sep


class _DropOrbaxFailureNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not record.exc_info:
            return True
        if _ORBAX_DIR in (record.pathname or ""):
            return False  # a background thread's copy of an exception the caller gets
        msg = record.msg if isinstance(record.msg, str) else ""
        if record.name == "asyncio" and "exception was never retrieved" in msg:
            return not _is_storage_error(record.exc_info[1])
        return True


def _is_storage_error(exc: BaseException | None) -> bool:
    """A tensorstore read/write error, or one orbax raised from it (its own message says
    'TensorStore' and the cause says 'OCDBT'): the whole chain is searched, case-blind."""
    seen = 0
    while exc is not None and seen < 8:
        text = str(exc).lower()
        if any(s in text for s in ("ocdbt", "tensorstore", "out_of_range")):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _unraisable(previous):  # noqa: ANN001, ANN202
    def hook(unraisable) -> None:  # noqa: ANN001
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return  # a tensorstore callback arriving after a failed operation's loop closed
        if inspect.iscoroutine(unraisable.object) and _raised_in_orbax(unraisable.exc_traceback):
            return  # a read or write orbax abandoned when its batch failed
        previous(unraisable)

    return hook


def _raised_in_orbax(tb) -> bool:  # noqa: ANN001
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and _ORBAX_DIR in tb.tb_frame.f_code.co_filename


def install() -> None:
    """Installs the filters once per process (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        flt = _DropOrbaxFailureNoise()
        for name in ("absl", "asyncio"):  # orbax logs through absl's logger
            logging.getLogger(name).addFilter(flt)
        sys.unraisablehook = _unraisable(sys.unraisablehook)
        _installed = True
