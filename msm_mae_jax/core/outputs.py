"""What a command writes: checked before any work, then written in one way.

Every output of a command (a file such as `--out results.json`, a folder such as an exported
model) is checked at start-up, before jax or TensorFlow start and before anything is read or
computed (`check_file`, `check_dir`); a location that would not do is an `OutputError` naming
the flag and the path (one line, exit status 2), and nothing is done. A location is refused
when
- it is one of the command's inputs (a task CSV, settings, audio, the checkpoint), or, for a
  folder the output replaces, holds one;
- it exists and is not an output of that kind (`core.output_kinds`): a WAV or a CSV where a
  .npz or a results JSON goes, a folder of other files where a model goes; a FIFO, a socket
  or a device. (An empty file holds nothing to lose: it may be replaced.);
- it is a folder where a file goes or a file where a folder goes, or a folder above it is a
  file;
- the nearest existing folder takes no file: read-only, no permission, or no space left (a
  small probe file is written there and removed).
Remote locations (gs://...) are checked for what is there; writing to them is checked when it
happens.

Writing: a file through `write_text`, `write_bytes` or `writing` (written beside, then swapped
in: `core.fs.atomic_path`), a folder through `replacing_dir` (written beside, then swapped in
with one rename). A process killed at any moment leaves the old output or the new one, never a
part; an OSError while writing is an OutputError naming the path.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO

from msm_mae_jax.core import fs, paths
from msm_mae_jax.core.errors import UserError

PROBE_BYTES = 64 * 1024  # enough to meet a full disk (one block would be: more is safer)
# Tests only: the writer of a folder pauses (touches this file, then sleeps) before the swap.
PAUSE_ENV = "MSM_MAE_TEST_PAUSE_BEFORE_SWAP"
_NOTHING_DONE = "nothing was done"
_REPLACED = "it would be replaced: give another path"


class OutputError(UserError):
    """An output location that cannot be written; the message names the flag and path."""


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of output. `noun` names it in messages ("an embeddings .npz"), `example` is a
    name to suggest; `recognise(path)` says whether an existing file (a folder, for `folder`
    kinds) is one, reading no more of it than it needs."""

    noun: str
    example: str
    recognise: Callable[[str], bool]
    folder: bool = False


@dataclasses.dataclass(frozen=True)
class Input:
    """A path the command reads; `role` names it in messages ("the task CSV", "audio")."""

    path: str
    role: str


def check_file(path: str, kind: Kind, flag: str = "--out", inputs: Sequence[Input] = ()) -> None:
    """`path` can be written as an output file of `kind` (see the module docstring)."""
    if fs.is_remote(path):
        if fs.isdir(path):
            raise OutputError(f"{flag} {path} is a folder; give the file to write")
        _check_inputs(path, path, inputs, flag, holds=False)
        if fs.isfile(path) and fs.size(path) and not kind.recognise(path):
            raise OutputError(_not_kind(flag, path, kind, _REPLACED))
        return
    full = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(full):
        raise OutputError(
            f"{flag} {path} is a folder; give the file to write, e.g. "
            f"{os.path.join(path, kind.example)}"
        )
    _check_inputs(path, full, inputs, flag, holds=False)
    if os.path.exists(full):
        why = paths.not_regular(full)
        if why:
            raise OutputError(f"{flag} {path} is {why}; give a file to write; {_NOTHING_DONE}")
        if os.path.getsize(full) and not kind.recognise(full):
            raise OutputError(_not_kind(flag, path, kind, _REPLACED))
    _check_folders_above(full, flag)


def check_dir(
    path: str,
    flag: str = "--out",
    kind: Kind | None = None,
    inputs: Sequence[Input] = (),
    replaces: bool = False,
) -> None:
    """`path` can be written as a folder (created later if missing): of `kind` when given (an
    existing folder must then be empty or one of that kind); `replaces`: the output replaces
    the whole folder, so it must not hold an input either."""
    if fs.is_remote(path):
        if fs.isfile(path):
            raise OutputError(f"{flag} {path} is a file; give a folder to write into")
        _check_inputs(path, path, inputs, flag, holds=replaces)
        if kind is not None and fs.isdir(path) and not kind.recognise(path):
            raise OutputError(_not_kind(flag, path, kind, "give a new or empty folder"))
        return
    full = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(full) and not os.path.isdir(full):
        raise OutputError(f"{flag} {path} is a file; give a folder to write into")
    _check_inputs(path, full, inputs, flag, holds=replaces)
    if os.path.isdir(full):
        if kind is not None and _has_visible_entries(full) and not kind.recognise(full):
            raise OutputError(_not_kind(flag, path, kind, "give a new or empty folder"))
        _probe(full, full, flag)
    else:
        _check_folders_above(full, flag)


def _has_visible_entries(folder: str) -> bool:
    try:
        return any(not n.startswith(".") for n in os.listdir(folder))
    except OSError:
        return True


def _not_kind(flag: str, path: str, kind: Kind, advice: str) -> str:
    what = "a folder of other files" if kind.folder else describe(path)
    return (
        f"{flag} {path} exists and is not {kind.noun} (it is {what}); {advice}, or remove it "
        f"first; {_NOTHING_DONE}"
    )


def _check_inputs(path: str, full: str, inputs: Sequence[Input], flag: str, holds: bool) -> None:
    """Refuses an output that is one of `inputs` (or, `holds`: a folder holding one)."""
    for i in inputs:
        other = i.path if fs.is_remote(i.path) else os.path.abspath(os.path.expanduser(i.path))
        if _same(full, other):
            raise OutputError(
                f"{flag} {path} is {i.role} (an input); give another path for the output; "
                f"{_NOTHING_DONE}"
            )
        if holds and _inside(other, full):
            raise OutputError(
                f"{flag} {path} holds {i.role} ({i.path}, an input), and the output replaces "
                f"the whole folder; give another path; {_NOTHING_DONE}"
            )


def _same(a: str, b: str) -> bool:
    if fs.is_remote(a) or fs.is_remote(b):
        return a.rstrip("/") == b.rstrip("/")
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return os.path.realpath(a) == os.path.realpath(b)


def _inside(path: str, folder: str) -> bool:
    if fs.is_remote(path) or fs.is_remote(folder):
        return path.startswith(folder.rstrip("/") + "/")
    real, top = os.path.realpath(path), os.path.realpath(folder)
    return real.startswith(top.rstrip(os.sep) + os.sep)


_MAGIC = (
    (b"RIFF", "a WAV file"),
    (b"fLaC", "a FLAC file"),
    (b"OggS", "an Ogg file"),
    (b"ID3", "an MP3 file"),
    (b"FORM", "an AIFF file"),
    (b".snd", "an AU file"),
    (b"PK\x03\x04", "a zip archive (.npz)"),
    (b"\x89HDF", "an HDF5 file"),
)


def describe(path: str) -> str:
    """What a file looks like, in words, from its first bytes ('a WAV file', 'a CSV or
    text file', ...); for messages."""
    try:
        with fs.open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return "a file that cannot be read"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    text = head.lstrip()
    if text[:1] in (b"{", b"["):
        return "JSON of another kind"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "a binary file"
    first = head.split(b"\n", 1)[0]
    return "a CSV file" if b"," in first else "a text file"


def _check_folders_above(path: str, flag: str) -> None:
    """The nearest existing folder above `path` is a folder and takes files."""
    above = os.path.dirname(path)
    while not os.path.exists(above) and os.path.dirname(above) != above:
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise OutputError(f"{flag} {path}: {above} is a file, not a folder")
    _probe(above, path, flag)


def _probe(folder: str, path: str, flag: str) -> None:
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".msm_mae_probe") as f:
            f.write(b"\0" * PROBE_BYTES)
            f.flush()
    except OSError as e:  # read-only file system, permissions, no space left
        where = "" if folder == path else f" (in {folder})"
        raise OutputError(
            f"{flag} {path} is not writable{where}: {e.strerror or e}; {_NOTHING_DONE}"
        ) from None


# ---- writing ---------------------------------------------------------------------------------
@contextlib.contextmanager
def writing(path: str, mode: str = "w", flag: str = "--out") -> Iterator[IO]:
    """A file object whose content replaces the file `path` when the block ends (its folders
    are made first; a killed writer's leftover beside it is removed). Nothing is published if
    the block raises; an OSError is an OutputError naming `flag` and `path`."""
    try:
        fs.makedirs(fs.dirname(fs.absolute(path)))
        if not fs.is_remote(path):
            _remove_dead_leftovers(os.path.abspath(path))
        with fs.atomic_write(path, mode) as f:
            yield f
    except OSError as e:
        raise OutputError(
            f"{flag} {path}: cannot write it ({e.strerror or f'{type(e).__name__}: {e}'})"
        ) from None


def write_text(path: str, text: str, flag: str = "--out") -> str:
    """Writes `text` (UTF-8) to `path` as `writing` does; returns `path`."""
    with writing(path, "w", flag) as f:
        f.write(text)
    return path


def write_bytes(path: str, data: bytes, flag: str = "--out") -> str:
    """Writes `data` to `path` as `writing` does; returns `path`."""
    with writing(path, "wb", flag) as f:
        f.write(data)
    return path


_LEFTOVER = re.compile(r"^\.(?P<base>.+)\.(?P<pid>\d+)\.tmp$")


def _remove_dead_leftovers(path: str) -> None:
    """`.NAME.PID.tmp` files beside `path` that a killed writer left (its process is gone)."""
    parent, base = os.path.split(path)
    with contextlib.suppress(OSError):
        for name in os.listdir(parent):
            m = _LEFTOVER.match(name)
            if m and m["base"] == base and not _alive(m["pid"]):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(parent, name))


@contextlib.contextmanager
def replacing_dir(path: str) -> Iterator[str]:
    """A new folder to write into, which replaces the folder `path` (if any) in one step when
    the block ends: it is written beside (`.NAME.partial-PID`) and swapped in with one atomic
    rename (Linux `renameat2(RENAME_EXCHANGE)`; elsewhere two renames a moment apart). A
    process killed at any moment leaves the old folder or the new one, plus at most a
    `.partial-`/`.replaced-` folder that the next write removes. Object stores have no
    rename: there `path` itself is yielded, and the writer removes its completion marker first
    and writes it last (a cut write leaves no output rather than a mixed one). An OSError is
    an OutputError naming `path`."""
    if fs.is_remote(path):
        yield path
        return
    path = os.path.abspath(path).rstrip(os.sep)
    parent, base = os.path.split(path)
    try:
        os.makedirs(parent, exist_ok=True)
        names = os.listdir(parent)
    except OSError as e:
        raise OutputError(f"{path}: cannot write it ({e.strerror or e})") from None
    for name in names:  # folders of earlier writes that were killed
        for kind in (".partial-", ".replaced-"):
            prefix = f".{base}{kind}"
            if name.startswith(prefix) and not _alive(name[len(prefix) :]):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    tmp = os.path.join(parent, f".{base}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
        yield tmp
        _pause_for_tests()
        _swap_in(tmp, path, os.path.join(parent, f".{base}.replaced-{os.getpid()}"))
    except OSError as e:  # a full disk, a read-only folder: nothing was replaced
        why = e.strerror or f"{type(e).__name__}: {e}"
        raise OutputError(f"{path}: cannot write it ({why}); nothing was replaced") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return int(pid) != os.getpid()


def _pause_for_tests() -> None:
    marker = os.environ.get(PAUSE_ENV)
    if marker:
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(3600)


def _swap_in(new: str, path: str, aside: str) -> None:
    """Moves the complete folder `new` to `path`, replacing what is there atomically."""
    if not os.path.lexists(path):
        os.rename(new, path)
        return
    if _exchange(new, path):  # `new` now holds the old folder
        shutil.rmtree(new, ignore_errors=True)
        return
    os.rename(path, aside)
    os.rename(new, path)
    shutil.rmtree(aside, ignore_errors=True)


def _exchange(a: str, b: str) -> bool:
    """Swaps two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")
