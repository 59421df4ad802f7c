"""Ctrl-C in a command, never a traceback: the first one stops the work (KeyboardInterrupt,
handled where the work is: a save in flight is finished, workers are ended), any further one
exits at once (status 130) with one line that says what is true at that moment.

Why a handler of our own: Python raises KeyboardInterrupt wherever the main thread is when
the signal arrives. Inside a garbage-collector callback or a finaliser (jax and TensorFlow
run some at every collection, and a command's last seconds are mostly collection and
interpreter shutdown) the exception cannot propagate: Python prints "Exception ignored in
..." with a traceback and the Ctrl-C is lost. Here such an interrupt is re-delivered to the
main thread instead (it takes effect at the next line of ordinary code), and a second Ctrl-C
never raises: it ends the process. `set_exit_note` names what that line adds (a training
run: the newest complete checkpoint, read from the disk when the line is written).
`deferred` holds a Ctrl-C while something must not be cut half-way (a checkpoint save being
started).
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


class _State:
    prog = ""
    presses = 0  # Ctrl-Cs seen by the command's handler
    redeliver = False  # the next SIGINT is a lost KeyboardInterrupt given back, not a press
    note: Callable[[], str] | None = None
    active = False  # between `handled`'s start and its end (or the process's end)


_state = _State()


def _exit_now() -> None:
    """The second Ctrl-C: one line, then exit without unwinding (nothing can print then)."""
    line = f"{_state.prog}: interrupted again: exiting at once"
    try:
        note = _state.note() if _state.note is not None else ""
    except Exception as e:  # noqa: BLE001 (the exit must happen whatever the note does)
        note = f"({type(e).__name__} while describing the state)"
    if note:
        line += f"; {note}"
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a write interrupted mid-way: skip its rest
            stream.flush()
    os.write(2, (line + "\n").encode())
    os._exit(EXIT_INTERRUPTED)


def _handler(signum: int, frame: object) -> None:
    if _state.redeliver:
        _state.redeliver = False
        raise KeyboardInterrupt
    _state.presses += 1
    if _state.presses > 1:
        _exit_now()
    raise KeyboardInterrupt


def _unraisable(previous: Callable) -> Callable:
    def hook(unraisable) -> None:  # noqa: ANN001
        if _state.active and isinstance(unraisable.exc_value, KeyboardInterrupt):
            # Raised inside a gc callback or a finaliser: given back to the main thread by
            # another thread (from this one, or waiting for one to start, the handler would
            # run inside this hook at once).
            _state.redeliver = True
            _thread.start_new_thread(_thread.interrupt_main, (signal.SIGINT,))
            return
        previous(unraisable)

    hook.gives_back_interrupts = True
    return hook


@contextlib.contextmanager
def handled(prog: str) -> Iterator[None]:
    """The command `prog` runs with these Ctrl-C rules. When it ends without a Ctrl-C the
    previous handlers come back; after one they stay, through the process's shutdown (where a
    further Ctrl-C would otherwise print tracebacks). Nothing changes outside the main thread
    or where SIGINT is ignored (a background job)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    ):
        yield
        return
    _state.prog, _state.presses, _state.redeliver, _state.note = prog, 0, False, None
    if not getattr(sys.unraisablehook, "gives_back_interrupts", False):  # acts while active
        sys.unraisablehook = _unraisable(sys.unraisablehook)
    old_handler = signal.signal(signal.SIGINT, _handler)
    _state.active = True
    try:
        yield
    finally:
        if _state.presses == 0 and not _state.redeliver:
            signal.signal(signal.SIGINT, old_handler)
            _state.active = False


@contextlib.contextmanager
def deferred(reraise: bool) -> Iterator[None]:
    """Holds a first SIGINT until the block ends (then passes it on if `reraise`); a second
    one is passed on at once (to the handler in place before: KeyboardInterrupt, or a
    command's exit). Only in the main thread (where signals arrive), and not where SIGINT
    is ignored."""
    old = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or old is signal.SIG_IGN:
        yield
        return
    got: list[int] = []

    def pass_on(signum: int, frame: object) -> None:
        if callable(old):
            old(signum, frame)
        raise KeyboardInterrupt

    def handler(signum: int, frame: object) -> None:
        got.append(signum)
        if len(got) > 1:
            pass_on(signum, frame)

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if got and reraise:
        pass_on(signal.SIGINT, None)


def set_exit_note(note: Callable[[], str] | None) -> None:
    """What the line of a further Ctrl-C adds, computed when it is written (None: nothing)."""
    _state.note = note
