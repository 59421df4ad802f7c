"""A local Cloud Storage emulator (gcp-storage-emulator) for the gs:// tests.

It runs as a subprocess on a free 127.0.0.1 port, in memory (`python gcs_emulator.py PORT`).
Every library of the stack is pointed at it through the environment
(msm_mae_jax.core.fs.use_emulator_env), which the subprocesses of a test (the real commands)
inherit. One gap of the emulator is filled here: its downloads lack the object generation
header that tensorstore's conditional writes (orbax's OCDBT manifest) need.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

# Read once by gcsfs (at import) and etils.epath (at first use): set before either loads.
# Without the first, gcsfs probes every bucket's layout over gRPC (60 s against an emulator).
STATIC_ENV = {
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    "EPATH_USE_TF": "false",
    "FSSPEC_GCS_TOKEN": "anon",
    "FSSPEC_GS_TOKEN": "anon",
}
START_TIMEOUT_S = 90.0  # a loaded machine starts it slowly; not starting at all fails the tests


def available() -> str | None:
    """None when the emulator package is installed, else why the gs:// tests skip."""
    try:
        import gcp_storage_emulator  # noqa: F401, PLC0415
    except ImportError:
        return "gcp-storage-emulator is not installed (pip install -r requirements-dev.txt)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running() -> Iterator[str]:
    """Starts the emulator; yields its URL 'http://127.0.0.1:PORT'. RuntimeError (with the
    emulator's output) when it does not answer within START_TIMEOUT_S."""
    port = _free_port()
    host = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, os.path.abspath(__file__), str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(host + "/", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    out = proc.communicate()[0].decode(errors="replace")[-2000:]
                    raise RuntimeError(f"the GCS emulator did not start: {out}") from None
                time.sleep(0.05)
        yield host
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def make_bucket(host: str, name: str) -> str:
    """Creates bucket `name`; returns 'gs://name'."""
    req = urllib.request.Request(
        f"{host}/storage/v1/b?project=test",
        data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(req, timeout=10).read()
    return f"gs://{name}"


def emulator_env(host: str) -> dict[str, str]:
    """The environment that selects the emulator at `host` (see core/fs.use_emulator_env)."""
    from msm_mae_jax.core import fs  # noqa: PLC0415

    env = {**STATIC_ENV, "STORAGE_EMULATOR_HOST": host}
    fs.use_emulator_env(env)
    return env


def serve(port: int) -> None:
    """Runs the emulator in this process until it is terminated."""
    from gcp_storage_emulator.handlers import objects  # noqa: PLC0415

    download = objects.download

    def download_with_generation(request, response, storage, *args, **kwargs):  # noqa: ANN001, ANN202
        # Real GCS sends the generation of what it returns; tensorstore reads it (without
        # it every object looks like generation 0, and a write conditional on it fails).
        with contextlib.suppress(Exception):
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
        return download(request, response, storage, *args, **kwargs)

    objects.download = download_with_generation  # before the server builds its routes
    from gcp_storage_emulator.server import create_server  # noqa: PLC0415

    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    # Clients that stop reading early (ranged reads) would print a traceback per request.
    server._api._httpd.handle_error = lambda *a: None
    try:
        while True:
            time.sleep(3600)
    finally:
        server.stop()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
