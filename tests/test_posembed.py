"""Fixed positional tables against a loop-by-loop computation of the published formulas."""

import numpy as np
import pytest
from reference import sincos_2d_table, sinusoid_1d_table

from msm_mae_jax.model import posembed


@pytest.mark.parametrize(
    "D,grid,cls",
    [(768, (5, 13), True), (384, (5, 13), False), (64, (1, 52), True), (192, (10, 13), True)],
)
def test_2d_table_matches_formula(D, grid, cls):
    table = posembed.sincos_2d(D, grid, cls_token=cls)
    assert table.dtype == np.float32
    assert table.shape == (grid[0] * grid[1] + cls, D)
    np.testing.assert_allclose(table, sincos_2d_table(D, *grid, cls), atol=1e-6)


@pytest.mark.parametrize("D,n,cls", [(384, 65, True), (64, 130, False), (512, 13, True)])
def test_1d_table_matches_formula(D, n, cls):
    table = posembed.sinusoid_1d(D, n, cls_token=cls)
    assert table.dtype == np.float32
    np.testing.assert_allclose(table, sinusoid_1d_table(D, n, cls), atol=1e-6)


def test_2d_table_orientation():
    """Tokens in the same time column share the first half; same frequency row, the second."""
    D, (gf, gt) = 64, (5, 13)
    table = posembed.sincos_2d(D, (gf, gt))
    grid = table.reshape(gf, gt, D)
    np.testing.assert_array_equal(grid[0, :, : D // 2], grid[3, :, : D // 2])
    np.testing.assert_array_equal(grid[:, 0, D // 2 :], grid[:, 7, D // 2 :])
    assert not np.allclose(grid[0, 0, : D // 2], grid[0, 1, : D // 2])


def test_decoder_table_kinds_and_errors():
    np.testing.assert_array_equal(
        posembed.decoder_table("1d", 64, (5, 13), True), posembed.sinusoid_1d(64, 65, True)
    )
    np.testing.assert_array_equal(
        posembed.decoder_table("2d", 64, (5, 13), False), posembed.sincos_2d(64, (5, 13))
    )
    with pytest.raises(ValueError, match="3d"):
        posembed.decoder_table("3d", 64, (5, 13), True)
    with pytest.raises(ValueError, match="divisible by 4"):
        posembed.sincos_2d(66, (5, 13))
