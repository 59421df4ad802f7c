"""Test session set-up: 8 fake CPU devices (sharding tests), quiet TF, shared data paths."""

import os

# Must happen before jax is imported anywhere: sharding tests need several devices. A user's
# own XLA_FLAGS are kept; the device count is added unless they already set one.
_DEVICE_FLAG = "--xla_force_host_platform_device_count"
if _DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICE_FLAG}=8".strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
FSDD_DIR = ROOT.parent / "shared" / "data" / "fsdd" / "recordings"


@pytest.fixture(scope="session")
def fsdd_dir() -> pathlib.Path:
    """The FSDD recordings beside the checkout; skips when a fresh clone has none."""
    if not FSDD_DIR.is_dir():
        pytest.skip(f"FSDD recordings not found at {FSDD_DIR} (../shared is absent)")
    return FSDD_DIR
