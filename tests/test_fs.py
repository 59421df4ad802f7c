"""core/fs.py: the same behaviour on local paths, fsspec's memory:// and gs:// (a local GCS
emulator, see conftest.py)."""

import os
import time
import uuid

import pytest
from fifo import unblock_readers

from msm_mae_jax.core import fs, staging


@pytest.fixture(params=["local", "memory", "gcs"])
def root(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path)
        return
    if request.param == "gcs":  # the GCS emulator (skips with the reason where it is missing)
        yield request.getfixturevalue("gcs_bucket")
        return
    url = f"memory://t{uuid.uuid4().hex[:8]}"
    yield url
    fs.rmtree(url)


def test_is_remote():
    assert fs.is_remote("gs://b/x") and fs.is_remote("memory://a") and fs.is_remote("s3://b")
    assert not fs.is_remote("/tmp/x") and not fs.is_remote("rel/x") and not fs.is_remote("C:x")
    assert fs.join("gs://b/w", "c", "d.json") == "gs://b/w/c/d.json"
    assert fs.dirname("gs://b/w/c.json") == "gs://b/w" and fs.basename("gs://b/w/") == "w"
    assert fs.absolute("gs://b/w") == "gs://b/w"
    assert fs.absolute("w") == os.path.join(os.getcwd(), "w")


def test_write_read_list_remove(root):
    d = fs.join(root, "run")
    fs.makedirs(d)
    fs.write_text(fs.join(d, "a.json"), '{"x": 1}\r\n')
    fs.makedirs(fs.join(d, "sub"))
    fs.write_bytes(fs.join(d, "sub", "b.bin"), b"\0\1\r")
    assert fs.read_text(fs.join(d, "a.json")) == '{"x": 1}\r\n'
    assert fs.read_bytes(fs.join(d, "sub", "b.bin")) == b"\0\1\r"
    assert fs.listdir(d) == ["a.json", "sub"]
    assert fs.isdir(fs.join(d, "sub")) and not fs.isdir(fs.join(d, "a.json"))
    assert fs.isfile(fs.join(d, "a.json")) and not fs.isfile(fs.join(d, "sub"))
    assert fs.size(fs.join(d, "sub", "b.bin")) == 3
    assert fs.walk_files(d) == [fs.join(d, "a.json"), fs.join(d, "sub", "b.bin")]
    assert fs.glob(fs.join(d, "**", "*.bin")) == [fs.join(d, "sub", "b.bin")]
    with fs.open(fs.join(d, "a.json")) as f:
        assert f.read() == '{"x": 1}\n'  # universal newlines, as open() does
    with fs.open(fs.join(d, "sub", "b.bin"), "rb") as f:
        f.seek(1)
        assert f.read(1) == b"\1"
    fs.remove(fs.join(d, "a.json"))
    fs.remove(fs.join(d, "a.json"))  # missing_ok
    with pytest.raises(FileNotFoundError):
        fs.remove(fs.join(d, "a.json"), missing_ok=False)
    fs.rmtree(d)
    assert not fs.exists(d) and not fs.exists(fs.join(d, "sub", "b.bin"))
    fs.rmtree(d)  # absent: nothing to do


def test_atomic_write_publishes_nothing_on_error(root):
    path = fs.join(root, "stats.json")
    fs.write_text(path, "old")
    with pytest.raises(RuntimeError, match="killed mid-write"):
        with fs.atomic_write(path) as f:
            f.write("new, half")
            raise RuntimeError("killed mid-write")
    assert fs.read_text(path) == "old"
    assert fs.listdir(root) == ["stats.json"]  # no temporary left behind
    with pytest.raises(ValueError, match="mode must be"):
        with fs.atomic_write(path, "a"):
            pass


def test_create_exclusive(root):
    path = fs.join(root, "train.lock")
    assert fs.create_exclusive(path, b"first")
    assert not fs.create_exclusive(path, b"second")
    assert fs.read_bytes(path) == b"first"


def test_read_ranges(root):
    path = fs.join(root, "shard.bin")
    data = bytes(range(256)) * 4
    fs.write_bytes(path, data)
    got = fs.read_ranges(path, [(0, 3), (1000, 1024), (10, 10), (255, 257)])
    assert got == [data[0:3], data[1000:1024], b"", data[255:257]]


def test_rename_and_copy_files_and_dirs(root):
    a, b = fs.join(root, "ckpt", "5"), fs.join(root, "damaged", "5")
    for rel in ("state/x", "meta/metadata"):
        p = fs.join(a, *rel.split("/"))
        fs.makedirs(fs.dirname(p))
        fs.write_bytes(p, rel.encode())
    fs.makedirs(fs.dirname(b))
    fs.rename(a, b)
    assert not fs.exists(a)
    assert fs.walk_files(b) == [fs.join(b, "meta", "metadata"), fs.join(b, "state", "x")]
    assert fs.read_bytes(fs.join(b, "state", "x")) == b"state/x"
    fs.rename(fs.join(b, "state", "x"), fs.join(b, "y"))
    assert fs.read_bytes(fs.join(b, "y")) == b"state/x" and not fs.exists(fs.join(b, "state", "x"))


def test_copy_between_local_and_remote(tmp_path):
    url = f"memory://c{uuid.uuid4().hex[:8]}"
    src = tmp_path / "a.bin"
    src.write_bytes(b"abc\r")
    fs.copy_file(str(src), fs.join(url, "a.bin"))
    fs.copy_file(fs.join(url, "a.bin"), fs.join(url, "b.bin"))
    fs.copy_file(fs.join(url, "b.bin"), str(tmp_path / "b.bin"))
    assert (tmp_path / "b.bin").read_bytes() == b"abc\r"
    staging.upload_dir(str(tmp_path), fs.join(url, "up"))
    assert fs.listdir(fs.join(url, "up")) == ["a.bin", "b.bin"]
    staging.download_dir(fs.join(url, "up"), str(tmp_path / "down"))
    assert sorted(os.listdir(tmp_path / "down")) == ["a.bin", "b.bin"]
    with staging.local_file(fs.join(url, "a.bin")) as local:
        assert open(local, "rb").read() == b"abc\r"
    assert not os.path.exists(local)
    fs.rmtree(url)


def test_open_refuses_append_on_urls():
    with pytest.raises(ValueError, match="not supported on object stores"):
        fs.open("memory://x/metrics.jsonl", "a")


def test_staged_dir_uploads_changes_and_keeps_earlier_content(root):
    target = fs.join(root, "wd")
    fs.makedirs(target)
    fs.write_text(fs.join(target, "metrics.jsonl"), "1\n")
    staged = staging.StagedDir(target)
    assert staged.fetch("metrics.jsonl") and not staged.fetch("absent.txt")
    with open(os.path.join(staged.path, "metrics.jsonl"), "a") as f:
        f.write("2\n")
    os.makedirs(os.path.join(staged.path, "tb"), exist_ok=True)
    with open(os.path.join(staged.path, "tb", "events"), "wb") as f:
        f.write(b"e1")
    staged.sync()
    assert fs.read_text(fs.join(target, "metrics.jsonl")) == "1\n2\n"
    assert fs.read_bytes(fs.join(target, "tb", "events")) == b"e1"
    with open(os.path.join(staged.path, "tb", "events"), "ab") as f:
        f.write(b"e2")
    staged.close()
    assert fs.read_bytes(fs.join(target, "tb", "events")) == b"e1e2"
    assert os.path.isdir(staged.path) != fs.is_remote(target)  # the local copy is gone


def test_emulator_env_only_with_an_emulator():
    assert fs.use_emulator_env({}) == {}
    env = {"STORAGE_EMULATOR_HOST": "127.0.0.1:9023", "EPATH_USE_TF": "true"}
    fs.use_emulator_env(env)
    assert env["TENSORSTORE_GCS_HTTP_URL"] == "http://127.0.0.1:9023"
    assert env["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] == "false"
    assert env["EPATH_USE_TF"] == "true"  # a user's own setting is kept


def test_resolve_and_relpath(tmp_path):
    assert fs.resolve("gs://b/tasks", "../audio/x.wav") == "gs://b/audio/x.wav"
    assert fs.resolve("gs://b/tasks", "gs://c/y.wav") == "gs://c/y.wav"
    assert fs.resolve(str(tmp_path), "a/../b.wav") == str(tmp_path / "b.wav")
    assert fs.relpath("gs://b/audio/x/y.wav", "gs://b/audio") == "x/y.wav"
    assert fs.relpath(str(tmp_path / "x" / "y.wav"), str(tmp_path)) == os.path.join("x", "y.wav")


def test_stamps_change_when_a_file_is_rewritten(root):
    path = fs.join(root, "ckpt", "a.bin")
    fs.makedirs(fs.dirname(path))
    fs.write_bytes(path, b"one")
    before = fs.stamp(path)
    assert fs.stamps(fs.join(root, "ckpt")) == [(path, 3, before[1])]
    time.sleep(0.01)  # a new mtime (local), a new generation (GCS) or creation time (memory)
    fs.write_bytes(path, b"two")
    assert fs.stamp(path)[0] == 3 and fs.stamp(path) != before


def test_reads_refuse_a_fifo_instead_of_waiting_for_a_writer(tmp_path):
    from msm_mae_jax.core.paths import NotRegularFileError

    fifo = str(tmp_path / "settings.json")
    os.mkfifo(fifo)
    unblock_readers(fifo, 20)
    for read in (fs.read_bytes, fs.read_text, lambda p: fs.open(p).read()):
        t0 = time.time()
        with pytest.raises(NotRegularFileError, match="a named pipe \\(FIFO\\), not a regular"):
            read(fifo)
        assert time.time() - t0 < 1
