"""Paths that may be local or remote: `gs://bucket/...` and any other fsspec URL.

Every Python-side read and write of the project goes through here. Local paths go to `os`
directly (no behaviour change, no fsspec in the hot path); `scheme://` URLs go to fsspec
(gcsfs for gs://; memory://, s3:// ... where their packages are installed). Object stores
have no directories, no rename and no append: `makedirs` is a no-op there, `atomic_write`
publishes the object in one upload (complete or absent, never partial), `rename` is copy +
delete, and files that grow (logs) are written locally and uploaded whole (core/staging.py).

A GCS emulator is selected with STORAGE_EMULATOR_HOST=http://HOST:PORT; `use_emulator_env`
sets what every library of the stack needs for it (gcsfs, etils.epath, tensorstore).
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import posixpath
import re
import shutil
from collections.abc import Iterator, Sequence
from typing import IO, Any

from msm_mae_jax.core.paths import check_regular, is_remote

_COPY_CHUNK = 8 * 2**20


def use_emulator_env(environ: dict | None = None) -> dict:
    """When STORAGE_EMULATOR_HOST is set: the settings that point gcsfs, etils.epath (orbax's
    metadata) and tensorstore (orbax's arrays) at that emulator, without credentials. Applied
    (setdefault) to `environ` (os.environ by default) and returned; {} without an emulator.
    Must run before those libraries first touch a gs:// path (they read it once)."""
    environ = os.environ if environ is None else environ
    host = environ.get("STORAGE_EMULATOR_HOST", "")
    if not host:
        return {}
    host = host if "://" in host else f"http://{host}"
    env = {
        # gcsfs: the plain JSON API; no gRPC bucket-layout probe (60 s against an emulator)
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        # etils.epath: gs:// through gcsfs; tf.io.gfile's client cannot be pointed elsewhere
        "EPATH_USE_TF": "false",
        # fsspec instances made by other libraries (epath): no credentials
        "FSSPEC_GCS_TOKEN": "anon",
        "FSSPEC_GS_TOKEN": "anon",
        # tensorstore: the JSON API endpoint and a fixed bearer token instead of credentials
        "TENSORSTORE_GCS_HTTP_URL": host,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
    }
    for k, v in env.items():
        environ.setdefault(k, v)
    return env


use_emulator_env()  # before gcsfs or epath is imported by anyone


def _fs(path: str) -> tuple[Any, str]:
    """(fsspec filesystem, path without protocol) of a URL."""
    import fsspec  # noqa: PLC0415 (only for URLs)

    options: dict[str, Any] = {}
    protocol = path.split("://", 1)[0].lower()
    if protocol in ("gs", "gcs"):
        # no listings cache: orbax/epath write through other filesystem instances, and a
        # cached listing would hide their objects from exists()/listdir()
        options["use_listings_cache"] = False
        if os.environ.get("STORAGE_EMULATOR_HOST"):
            options["token"] = "anon"
    return fsspec.core.url_to_fs(path, **options)


def _under(url: str) -> tuple[Any, str, str]:
    """(filesystem, bare root path, URL root) of a folder URL, neither with a trailing '/'."""
    fs, p = _fs(url)
    return fs, p.rstrip("/"), url.rstrip("/")


def _rebase(found: str, p_root: str, url_root: str) -> str:
    """A path a filesystem returned (below `p_root`) as a URL spelled like the caller's."""
    return url_root + found[len(p_root) :] if found.startswith(p_root) else found


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def dirname(path: str) -> str:
    return posixpath.dirname(path.rstrip("/")) if is_remote(path) else os.path.dirname(path)


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) if is_remote(path) else os.path.basename(path)


def _split_url(url: str) -> tuple[str, str]:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://", rest


def resolve(base: str, rel: str) -> str:
    """`rel` taken relative to the folder `base` and normalised ('..' resolved); an absolute
    `rel` (or a URL) as it is."""
    if is_remote(rel):
        return rel
    if not is_remote(base):
        return os.path.abspath(os.path.join(base, rel))
    scheme, root = _split_url(base)
    return scheme + posixpath.normpath(posixpath.join(root, rel.replace(os.sep, "/")))


def relpath(path: str, base: str) -> str:
    """`path` relative to the folder `base` (same scheme)."""
    if not is_remote(path) and not is_remote(base):
        return os.path.relpath(os.path.abspath(path), os.path.abspath(base))
    return posixpath.relpath(_split_url(path)[1], _split_url(base)[1])


def absolute(path: str) -> str:
    """os.path.abspath for local paths; URLs as they are."""
    return path if is_remote(path) else os.path.abspath(path)


def exists(path: str) -> bool:
    if not is_remote(path):
        return os.path.exists(path)
    fs, p = _fs(path)
    return bool(fs.exists(p))


def isdir(path: str) -> bool:
    """On object stores a prefix with at least one object below it is a directory."""
    if not is_remote(path):
        return os.path.isdir(path)
    fs, p = _fs(path)
    return bool(fs.isdir(p))


def isfile(path: str) -> bool:
    if not is_remote(path):
        return os.path.isfile(path)
    fs, p = _fs(path)
    return bool(fs.isfile(p))


def makedirs(path: str) -> None:
    """os.makedirs(exist_ok=True); nothing to do on object stores (prefixes need no object)."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)
        return
    fs, p = _fs(path)
    if not _is_object_store(fs):
        fs.makedirs(p, exist_ok=True)


def _is_object_store(fs: Any) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return bool({"gs", "gcs", "s3", "s3a", "az", "abfs"} & set(protocols))


def listdir(path: str) -> list[str]:
    """Names (not paths) directly below `path`, sorted."""
    if not is_remote(path):
        return sorted(os.listdir(path))
    fs, p = _fs(path)
    p = p.rstrip("/")
    names = {posixpath.basename(e.rstrip("/")) for e in fs.ls(p, detail=False)}
    return sorted(n for n in names if n and n != posixpath.basename(p))


def glob(pattern: str) -> list[str]:
    """Sorted matches (`**` recurses); URL matches keep their protocol."""
    if not is_remote(pattern):
        import glob as _glob  # noqa: PLC0415

        return sorted(_glob.glob(pattern, recursive=True))
    literal = re.split(r"[*?[]", pattern, maxsplit=1)[0]
    url_root = literal[: literal.rfind("/")]
    fs, p_root, _ = _under(url_root)
    p = _fs(pattern)[1]
    return sorted(_rebase(m, p_root, url_root) for m in fs.glob(p))


def walk_files(root: str) -> list[str]:
    """Every file below `root` (full paths or URLs), sorted."""
    if not is_remote(root):
        return sorted(os.path.join(d, f) for d, _, names in os.walk(root) for f in names)
    fs, p_root, url_root = _under(root)
    return sorted(_rebase(f, p_root, url_root) for f in fs.find(p_root + "/"))


def stamps(root: str) -> list[tuple[str, int, str]]:
    """(path, size, version) of every file below `root`, sorted; the version changes when
    a file is rewritten (local: mtime in ns; GCS: the object generation)."""
    if not is_remote(root):
        out = []
        for path in walk_files(root):
            st = os.stat(path)
            out.append((path, st.st_size, str(st.st_mtime_ns)))
        return out
    fs, p_root, url_root = _under(root)
    found = fs.find(p_root + "/", detail=True).items()
    return sorted((_rebase(f, p_root, url_root), *_size_version(info)) for f, info in found)


def _size_version(info: dict) -> tuple[int, str]:
    for key in ("generation", "mtime", "updated", "created"):
        if info.get(key) is not None:
            v = info[key]
            return int(info.get("size") or 0), str(v.timestamp() if hasattr(v, "timestamp") else v)
    return int(info.get("size") or 0), ""


def stamp(path: str) -> tuple[int, str]:
    """(size, version) of one file; the version changes when it is rewritten."""
    if not is_remote(path):
        st = os.stat(path)
        return st.st_size, str(st.st_mtime_ns)
    fs, p = _fs(path)
    return _size_version(fs.info(p))


def size(path: str) -> int:
    if not is_remote(path):
        return os.path.getsize(path)
    fs, p = _fs(path)
    return int(fs.size(p))


def open(path: str, mode: str = "r", **kwargs: Any) -> IO:  # noqa: A001
    """A file object (text or binary). Append and update modes are refused on URLs; a local
    FIFO, socket or device is refused for reading (`core.paths.NotRegularFileError`): opening
    a FIFO would wait for a writer forever."""
    if not is_remote(path):
        if "r" in mode:
            check_regular(path)
        return builtins.open(path, mode, **kwargs)
    if "a" in mode or "+" in mode:
        raise ValueError(f"{path}: mode {mode!r} is not supported on object stores")
    fs, p = _fs(path)
    file_kw: dict[str, Any] = {}
    if "r" in mode and path.split("://", 1)[0].lower() in ("gs", "gcs"):
        # gcsfs's default cache ("adaptive", a background prefetcher) makes a download of
        # each of libsndfile's small sequential reads: ~30 for a 10 kB WAV, 1 s against a
        # local emulator, and 8-60 s for a 10-minute recording; one read-ahead block takes
        # 7 ms and 0.07 s (tests/test_gcs.py::test_reading_audio_from_a_bucket_is_one_block).
        file_kw["cache_type"] = "readahead"
    if "b" in mode:
        return fs.open(p, mode, **{**file_kw, **kwargs})
    kwargs.setdefault("encoding", "utf-8")
    return io.TextIOWrapper(fs.open(p, mode.replace("t", "") + "b", **file_kw), **kwargs)


def read_bytes(path: str) -> bytes:
    """A file's bytes (a local FIFO, socket or device is refused, as by `open`)."""
    if not is_remote(path):
        check_regular(path)
        with builtins.open(path, "rb") as f:
            return f.read()
    fs, p = _fs(path)
    return fs.cat_file(p)


def read_text(path: str, encoding: str = "utf-8") -> str:
    return read_bytes(path).decode(encoding)


def read_ranges(path: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """The bytes [start, end) of each range of one file; URLs: one concurrent batch."""
    if not is_remote(path):
        with builtins.open(path, "rb", buffering=0) as f:
            return [os.pread(f.fileno(), end - start, start) for start, end in ranges]
    fs, p = _fs(path)
    starts, ends = [int(s) for s, _ in ranges], [int(e) for _, e in ranges]
    return fs.cat_ranges([p] * len(ranges), starts, ends)


def read_many(paths: Sequence[str], starts: Sequence[int], ends: Sequence[int]) -> list[bytes]:
    """The bytes [starts[i], ends[i]) of paths[i] for every i; on URLs one concurrent batch
    of ranged reads (paths all of one filesystem)."""
    if not paths:
        return []
    if not is_remote(paths[0]):
        out = []
        for p, s, e in zip(paths, starts, ends, strict=True):
            out += read_ranges(p, [(s, e)])
        return out
    fs, _ = _fs(paths[0])
    bare = [_fs(p)[1] for p in paths]
    return fs.cat_ranges(bare, [int(s) for s in starts], [int(e) for e in ends])


def _put_bytes(fs: Any, p: str, data: bytes) -> None:
    # fs.open("wb"): one upload, the object appears when it is closed. Not pipe_file, whose
    # multipart upload loses a trailing b"\r" on gcp-storage-emulator.
    with fs.open(p, "wb") as f:
        f.write(data)


def _put_file(fs: Any, local: str, p: str) -> None:
    with builtins.open(local, "rb") as src, fs.open(p, "wb") as dst:
        shutil.copyfileobj(src, dst, _COPY_CHUNK)


def temp_name(path: str, pid: int | None = None) -> str:
    """The local temporary file beside `path` that `atomic_path` writes first (hidden; the
    writer's process id in it, so that a killed writer's leftover can be told apart)."""
    parent, base = os.path.split(path)
    return os.path.join(parent, f".{base}.{os.getpid() if pid is None else pid}.tmp")


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A local file to write `path`'s new content into (for writers that open a path
    themselves, e.g. TFRecord's), published when the block ends: local, renamed over `path`
    (readers see the old file or the new one); URL, uploaded whole. Nothing is published,
    and the temporary file is removed, if the block raises."""
    if not is_remote(path):
        tmp = temp_name(path)
    else:
        import tempfile  # noqa: PLC0415

        fd, tmp = tempfile.mkstemp(prefix=".msm_mae_upload_")
        os.close(fd)
    try:
        yield tmp
        if not is_remote(path):
            os.replace(tmp, path)
        else:
            fs, p = _fs(path)
            _put_file(fs, tmp, p)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w") -> Iterator[IO]:
    """Readers see the old content or the new, never a part, and nothing new is published if
    the block raises. Local: a temporary file beside `path` + rename (`atomic_path`); URL:
    one upload when the block ends."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', not {mode!r}")
    if not is_remote(path):
        with atomic_path(path) as tmp:
            kw = {} if "b" in mode else {"encoding": "utf-8"}
            with builtins.open(tmp, mode, **kw) as f:
                yield f
        return
    buf = io.BytesIO()
    f = buf if "b" in mode else io.TextIOWrapper(buf, encoding="utf-8", write_through=True)
    yield f
    fs, p = _fs(path)
    _put_bytes(fs, p, buf.getvalue())


def write_bytes(path: str, data: bytes) -> None:
    """Atomic (see `atomic_write`)."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    """Atomic (see `atomic_write`)."""
    with atomic_write(path, "w") as f:
        f.write(text)


def create_exclusive(path: str, data: bytes) -> bool:
    """Creates `path` with `data` unless it exists (False then). Local: O_EXCL; GCS: an
    upload conditional on no object existing (ifGenerationMatch=0)."""
    if not is_remote(path):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    fs, p = _fs(path)
    if fs.exists(p):
        return False
    try:
        with fs.open(p, "xb") as f:
            f.write(data)
    except (FileExistsError, ValueError, NotImplementedError) as e:
        if isinstance(e, FileExistsError):
            return False
        _put_bytes(fs, p, data)  # no exclusive mode in this filesystem: best effort
    return True


def remove(path: str, missing_ok: bool = True) -> None:
    if not is_remote(path):
        with contextlib.suppress(*((FileNotFoundError,) if missing_ok else ())):
            os.remove(path)
        return
    fs, p = _fs(path)
    try:
        fs.rm_file(p)
    except FileNotFoundError:
        if not missing_ok:
            raise


def rmtree(path: str) -> None:
    """Removes a directory (every object below a prefix); nothing if it does not exist."""
    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    fs, p = _fs(path)
    with contextlib.suppress(FileNotFoundError):
        if fs.exists(p):
            fs.rm(p, recursive=True)


def copy_file(src: str, dst: str) -> None:
    """One file, any combination of local and remote."""
    if not is_remote(src) and not is_remote(dst):
        shutil.copyfile(src, dst)
    elif not is_remote(src):
        fs, p = _fs(dst)
        _put_file(fs, src, p)
    elif not is_remote(dst):
        fs, p = _fs(src)
        fs.get_file(p, dst)
    else:
        fs, p = _fs(src)
        fs2, p2 = _fs(dst)
        if type(fs) is type(fs2):
            fs.cp_file(p, p2)  # server-side copy on object stores
        else:
            _put_bytes(fs2, p2, fs.cat_file(p))


def rename(src: str, dst: str) -> None:
    """A file or a directory. Local: os.replace (atomic). URL: copy, then delete the source
    (not atomic: object stores have no rename)."""
    if not is_remote(src):
        os.replace(src, dst)
        return
    fs, p = _fs(src)
    if not fs.isdir(p):
        copy_file(src, dst)
        remove(src)
        return
    for f in walk_files(src):
        copy_file(f, posixpath.join(dst, f[len(src.rstrip("/")) + 1 :]))
    rmtree(src)
