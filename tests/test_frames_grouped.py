"""`frames.encode_frames_grouped` (the CPU feature path): the features of `encode_frames` for
every real unit, whatever the group size; padding units left at zero."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.features import calls
from msm_mae_jax.features.runtime import Runtime
from msm_mae_jax.model import mae
from msm_mae_jax.model.config import ModelConfig
from msm_mae_jax.model.frames import encode_frames, encode_frames_grouped

CFG = ModelConfig(
    embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=4
)
ATOL = 2e-5


@pytest.fixture(scope="module")
def params():
    return mae.init_params(CFG, jax.random.key(3))["encoder"]


def _steps(frames: int) -> int:
    return -(-frames // CFG.patch_size[1])


FU = CFG.input_size[1]
FRAMES_B = np.array([FU + 1, 4 * FU, 0], np.int32)  # 2 real units of 4, 4, a padding row
GROUPED = jax.jit(encode_frames_grouped, static_argnames=("config", "group", "return_layers"))


@pytest.fixture(scope="module")
def x_and_want(params):
    x_BFT = jnp.asarray(np.random.default_rng(0).normal(0, 1, (3, 80, 4 * FU)), jnp.float32)
    return x_BFT, np.asarray(encode_frames(params, x_BFT, CFG, return_layers=True))


@pytest.mark.parametrize("group", [3, 5, 64])
def test_real_units_match_encode_frames(params, x_and_want, group):
    x_BFT, want = x_and_want
    fu, frames_B = FU, FRAMES_B
    got = np.asarray(GROUPED(params, x_BFT, frames_B, CFG, group, return_layers=True))
    assert got.shape == want.shape
    steps_per_unit = fu // CFG.patch_size[1]
    for b, frames in enumerate(frames_B):
        real = -(-frames // fu) * steps_per_unit  # the steps of units with a real frame
        np.testing.assert_allclose(got[:, b, :real], want[:, b, :real], atol=ATOL)
        np.testing.assert_array_equal(got[:, b, real:], 0.0)  # padding units: not encoded
        assert _steps(frames) <= real


def test_last_layer_alone(params, x_and_want):
    x_BFT, want = x_and_want
    got = np.asarray(GROUPED(params, x_BFT, FRAMES_B, CFG, 5))
    assert got.shape == want.shape[1:]
    np.testing.assert_allclose(got[1], want[-1, 1], atol=ATOL)
    np.testing.assert_array_equal(got[2], 0.0)


def test_cpu_runtime_groups_units_and_matches_the_plain_path(params, monkeypatch):
    if jax.default_backend() != "cpu":
        pytest.skip("CPU backend only")
    rt = Runtime(CFG, params, NormStats(-6.0, 3.0))
    assert rt._calls.group == calls.CPU_UNITS_PER_GROUP
    groups = []

    def spy(*args):
        groups.append(args[4])
        return encode_frames_grouped(*args)

    monkeypatch.setattr(calls, "encode_frames_grouped", spy)
    calls.features_jit.clear_cache()  # trace again: the spy sees the call's group
    rng = np.random.default_rng(1)
    clips = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (90_000, 7_000, 40_000)]
    grouped = rt.encode(clips)
    assert groups == [calls.CPU_UNITS_PER_GROUP]
    rt._calls.group = None  # what an accelerator runs: all units of a call at once
    plain = rt.encode(clips)
    for g, p in zip(grouped, plain, strict=True):
        assert g.shape == p.shape
        np.testing.assert_allclose(g, p, atol=ATOL)
