"""Test session set-up: 8 fake CPU devices (sharding tests), quiet TF, one compilation cache,
shared data paths."""

import atexit
import collections
import os
import shutil
import tempfile

# Must happen before jax is imported anywhere: sharding tests need several devices. A user's
# own XLA_FLAGS are kept; the device count is added unless they already set one.
# LLVM's optimisation level 0 for the CPU programs: the tests' programs are small and run
# a few times, so compiling dominates (about a fifth less time for the model tests); the
# numbers are the same computation, within the tests' tolerances. Subprocesses get the same
# flags (train_utils.xla_flags).
_DEVICE_FLAG = "--xla_force_host_platform_device_count"
_FAST_COMPILE = "--xla_backend_optimization_level=0"
if _DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICE_FLAG}=8".strip()
if "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += f" {_FAST_COMPILE}"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache for the session, read through the environment by jax in
# this process, in the other pytest-xdist worker (started after this runs in the controller)
# and in every subprocess (the real commands): a program compiled once, e.g. the tiny train
# step of the command-line runs, is loaded by every later process that needs it (programs
# are keyed by their HLO, devices and flags: those of 1-device subprocesses are not those of
# this 8-device process). Every program is kept, however short its compile (CPU programs of
# tiny models compile in well under jax's default 1 s threshold). A cache dir of the user's
# own is used as it is; the session's own is removed at exit.
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    _CACHE = tempfile.mkdtemp(prefix="msm_mae_jax_tests_jax_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

# The Ctrl-C tests send SIGINT to this process and to the commands they start. A shell that
# starts the suite in the background (`make test &`, nohup in a script) leaves SIGINT ignored,
# and an ignored signal stays ignored in every child; a handled one is reset to the default at
# exec. So this process takes Python's own handler back.
import signal  # noqa: E402

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import functools  # noqa: E402
import pathlib  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
FSDD_DIR = ROOT.parent / "shared" / "data" / "fsdd" / "recordings"
# Set to 1 to run the FSDD tests on the synthetic stand-in even where the recordings exist.
NO_FSDD_ENV = "MSM_MAE_TEST_NO_FSDD"


@pytest.fixture
def optimised_compiles(monkeypatch):
    """For a test whose programs run hundreds of steps: `jax.jit` compiles at XLA's default
    optimisation level instead of the session's level 0 (above), which is right only for
    programs that run a few times (the FSDD fine-tuning test: 72 s -> 51 s)."""
    import jax

    opts = {"xla_backend_optimization_level": 2}
    monkeypatch.setattr(jax, "jit", functools.partial(jax.jit, compiler_options=opts))


def _use_fsdd() -> bool:
    return FSDD_DIR.is_dir() and os.environ.get(NO_FSDD_ENV, "") in ("", "0")


@pytest.fixture(scope="session")
def fsdd_synthetic() -> bool:
    """Whether `fsdd_dir` is the synthetic stand-in rather than the real recordings."""
    return not _use_fsdd()


@pytest.fixture(scope="session")
def fsdd_dir(tmp_path_factory) -> pathlib.Path:
    """The FSDD recordings beside the checkout; where a fresh clone has none (or
    MSM_MAE_TEST_NO_FSDD=1), an FSDD-like corpus written once per session from the synthetic
    generator (tests/fsdd_like.py)."""
    if _use_fsdd():
        return FSDD_DIR
    import fsdd_like

    return fsdd_like.write(tmp_path_factory.mktemp("fsdd_like"))


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    """The environment of a module's runs of the real commands (tests/run_utils.py): this
    checkout, one CPU device, the session's compilation cache (runs of the same settings share
    their compiled programs)."""
    from train_utils import subprocess_env

    return subprocess_env()


# ---- gs:// tests: a local Cloud Storage emulator -----------------------------------------------
import gcs_emulator  # noqa: E402

for _k, _v in gcs_emulator.STATIC_ENV.items():  # before gcsfs or etils.epath is loaded
    os.environ.setdefault(_k, _v)


# Set to 1 to let the gs:// tests skip where the installed emulator does not start; by default
# that fails them (a start-up regression must not silently remove the only gs:// tests).
GCS_SKIP_ENV = "MSM_MAE_TEST_ALLOW_NO_GCS"


@pytest.fixture(scope="session")
def gcs_emulator_host():
    """URL of a session GCS emulator that every library (and every subprocess) uses. Skips
    the test with the reason when the emulator package is not installed; an installed one
    that does not start fails it (skips with MSM_MAE_TEST_ALLOW_NO_GCS=1)."""
    why = gcs_emulator.available()
    if why:
        pytest.skip(why)
    try:
        ctx = gcs_emulator.running()
        host = ctx.__enter__()
    except RuntimeError as e:
        if os.environ.get(GCS_SKIP_ENV, "") not in ("", "0"):
            pytest.skip(f"{e} ({GCS_SKIP_ENV} is set)")
        pytest.fail(f"{e} (set {GCS_SKIP_ENV}=1 to skip the gs:// tests)", pytrace=False)
    env = gcs_emulator.emulator_env(host)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield host
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        ctx.__exit__(None, None, None)


@pytest.fixture
def gcs_bucket(gcs_emulator_host) -> str:
    """A fresh, empty bucket per test: 'gs://test-<hex>'."""
    import uuid

    return gcs_emulator.make_bucket(gcs_emulator_host, f"test-{uuid.uuid4().hex[:12]}")


# ---- order: the long modules first -------------------------------------------------------------
def pytest_collection_modifyitems(config, items):
    """Modules with more `slow` tests first, each module's tests in their own order. With
    `make test`'s `--dist loadfile --no-loadscope-reorder` the two workers take the long
    modules first and end on short ones, at about the same time (xdist's own order, by test
    count, left a 115 s module for last: one worker idle for most of a minute)."""
    slow = collections.Counter(i.path for i in items if i.get_closest_marker("slow"))
    first = {}
    for k, item in enumerate(items):
        first.setdefault(item.path, k)
    items.sort(key=lambda i: (-slow[i.path], first[i.path]))
