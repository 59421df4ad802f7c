"""What every command shares: one-line errors, one flag style, logging, the backend line.

A user's mistake (`core.errors.UserError`, a bad flag) ends the command with one line on
stderr, `PROG: error: MESSAGE`, and exit status 2; Ctrl-C with `PROG: interrupted` and status
130; a run that SIGTERM stopped after saving (`train`, `finetune`) with status 3
(`train.preemption.EXIT_PREEMPTED`); anything else keeps its traceback (status 1). Long
flags are hyphenated (`--unit-sec`); the underscore spellings (`--unit_sec`) are accepted as
hidden aliases. Nothing here imports jax until `backend_line` is called.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence

from msm_mae_jax.core import interrupts
from msm_mae_jax.core.errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = interrupts.EXIT_INTERRUPTED  # 128 + SIGINT, what shells report for Ctrl-C


class UsageError(UserError):
    """A bad command line (unknown flag, missing or malformed value)."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (raised as UsageError) and `--a_b` read as `--a-b`."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(hyphenate(args), namespace)

    def error(self, message: str):  # noqa: ANN201 (never returns)
        raise UsageError(f"{message} (see {self.prog} --help)")


def number(
    kind: type = float, low: float | None = None, *, above: bool = False, note: str = ""
) -> Callable[[str], float]:
    """An argparse `type`: a finite `kind` (int or float) >= `low` (> `low` when `above`);
    anything else is a usage error saying what the flag takes (`note`: what a sentinel
    value means, e.g. " (0: the longest clip)")."""
    noun = "an integer" if kind is int else "a finite number"
    what = noun if low is None else f"{noun} {'>' if above else '>='} {low:g}{note}"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        bad = low is not None and (value <= low if above else value < low)
        if bad or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {what}")
        return value

    return parse


def hyphenate(argv: Sequence[str]) -> list[str]:
    """`--unit_sec=1` -> `--unit-sec=1`; values, `--config.key` overrides and everything after
    `--` are left alone."""
    out, rest = [], False
    for a in argv:
        if a == "--":
            rest = True
        elif not rest and a.startswith("--"):
            name, eq, value = a.partition("=")
            if "." not in name:
                a = name.replace("_", "-") + eq + value
        out.append(a)
    return out


def one_line(message: object) -> str:
    """A message on one line (multi-line messages joined with '; ')."""
    return re.sub(r"\s*\n\s*", "; ", str(message).strip())


def fail(prog: str, message: object) -> int:
    """Prints `PROG: error: MESSAGE` on stderr; returns the exit status of a user's mistake."""
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def run_command(prog: str, fn: Callable[[list[str], str], int], argv: Sequence[str] | None) -> int:
    """Runs `fn(argv, prog)`; a UserError becomes one line on stderr and exit status 2, a
    Ctrl-C `PROG: interrupted` and 130 (a second one exits at once: `core.interrupts`).

    Every failure is handled here rather than left to the interpreter, so that what the
    failed call still holds (its frames, tf.data iterators among them) is freed while Python
    runs: a tf.data iterator freed during interpreter shutdown can wait forever for worker
    threads that can no longer take the GIL, and the process would never exit."""
    argv = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with interrupts.handled(prog):  # a second Ctrl-C exits at once, without tracebacks
        try:
            return int(fn(argv, prog) or 0)
        except UserError as e:
            return fail(prog, e)
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED
        except Exception:
            traceback.print_exc()
            sys.stderr.flush()
            return 1
        finally:
            gc.collect()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at each message, not the stream of the moment it was
    made: a command run in-process (a notebook, a test) whose stderr was since replaced and
    closed must not turn later warnings into logging errors."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr


def setup_logging(level: int = logging.INFO) -> None:
    """Project messages at `level`, other libraries' warnings, all on stderr."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname).1s %(asctime)s %(name)s] %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("msm_mae_jax").setLevel(level)


def backend_line(init: Callable[[], object] | None = None) -> str:
    """Starts jax's backend (after `init`, e.g. the multi-process set-up); -> 'jax VERSION,
    backend gpu: 8 device(s) (8x NVIDIA H100 local), process 0 of 1'. A platform asked for
    (JAX_PLATFORMS) that cannot start is a UserError saying what was asked and what is
    available."""
    import jax

    asked = os.environ.get("JAX_PLATFORMS", "") or str(jax.config.jax_platforms or "")
    try:
        if init is not None:
            init()
        devices = jax.local_devices()
    except (RuntimeError, AssertionError) as e:  # jax 0.10 asserts for a missing platform
        if not asked:
            raise
        detail = re.sub(r"\s*\(set JAX_PLATFORMS=.*?\)", "", one_line(e)) or "no such backend"
        raise UserError(
            f"JAX_PLATFORMS={asked!r} asks for a backend jax cannot start ({detail}); "
            f"available: {_available_platforms()} (unset JAX_PLATFORMS to use it, or install "
            "the jax build for your accelerator)"
        ) from None
    kinds: dict[str, int] = {}
    for d in devices:
        kinds[d.device_kind] = kinds.get(d.device_kind, 0) + 1
    where = ", ".join(f"{n}x {k}" for k, n in kinds.items())
    return (
        f"jax {jax.__version__}, backend {jax.default_backend()}: {jax.device_count()} "
        f"device(s) ({where} local), process {jax.process_index()} of {jax.process_count()}"
    )


def _available_platforms() -> str:
    """What jax starts with no platform forced (called after a forced platform failed)."""
    import jax

    try:
        jax.config.update("jax_platforms", None)
        devices = jax.devices()
    except Exception as e:  # noqa: BLE001 (only describes the machine for the message)
        return f"none ({type(e).__name__})"
    return ", ".join(sorted({f"{d.platform} ({len(devices)} device(s))" for d in devices}))
