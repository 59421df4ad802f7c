"""Reconstruction figures (panels, crop to valid frames, axes, colour bar) and TensorBoard
image summaries written with TF core and read back."""

import io

import matplotlib.image as mpimg
import numpy as np
import pytest
from train_utils import read_tensorboard

from configs.msm_mae import get_config
from msm_mae_jax.model.config import ModelConfig
from msm_mae_jax.train import figures, metrics


def _tiny_model() -> ModelConfig:
    return ModelConfig.from_dict(get_config("tiny").model)  # 80 x 208, 16 x 16 patches


def _inputs(rng, mc: ModelConfig, b: int):
    F, T = mc.input_size
    (ph, pw), (gf, gt) = mc.patch_size, mc.grid_size
    lms_B1FT = rng.standard_normal((b, 1, F, T)).astype(np.float32)
    pred_BNP = rng.standard_normal((b, gf * gt, ph * pw)).astype(np.float32)
    mask_BN = (rng.random((b, gf * gt)) < 0.75).astype(np.float32)
    return lms_B1FT, pred_BNP, mask_BN


def test_panels_place_each_patch_frequency_major():
    mc = _tiny_model()
    (ph, pw), (_, gt) = mc.patch_size, mc.grid_size
    lms_B1FT, pred_BNP, mask_BN = _inputs(np.random.default_rng(0), mc, 2)
    inp, masked, recon = figures.reconstruction_panels(lms_B1FT, pred_BNP, mask_BN, mc)
    np.testing.assert_array_equal(inp, lms_B1FT[:, 0])
    for b in range(2):
        for n in range(mask_BN.shape[1]):
            f, t = divmod(n, gt)  # patch n covers mel rows f*ph.. and frames t*pw..
            block = (b, slice(f * ph, (f + 1) * ph), slice(t * pw, (t + 1) * pw))
            if mask_BN[b, n]:
                assert np.isnan(masked[block]).all()
                np.testing.assert_array_equal(recon[block], pred_BNP[b, n].reshape(ph, pw))
            else:
                np.testing.assert_array_equal(masked[block], lms_B1FT[block[0], 0][block[1:]])
                np.testing.assert_array_equal(recon[block], masked[block])


def test_figure_is_cropped_to_valid_frames_with_axes_and_colour_bar():
    mc = _tiny_model()
    F, T = mc.input_size
    lms_B1FT, pred_BNP, mask_BN = _inputs(np.random.default_rng(1), mc, 3)
    frames_B = np.array([50, 300, 120], np.int32)  # 300 > T: the whole crop
    for b, v in enumerate(frames_B):
        lms_B1FT[b, 0, :, min(v, T) :] = -1000.0  # padding: must not set the colour scale
    fig = figures.reconstruction_figure(lms_B1FT, pred_BNP, mask_BN, mc, frames_B, "step 7")
    panels, bars = fig.axes[:9], fig.axes[9:]
    assert len(bars) == 1 and bars[0].get_ylabel() == "normalised log-mel"
    for b, v in enumerate([50, T, 120]):
        for j in range(3):
            ax = panels[3 * b + j]
            assert ax.images[0].get_array().shape == (F, v)
            assert ax.get_xlim() == pytest.approx((0.0, v * 0.01))  # hop 160 at 16 kHz
        np.testing.assert_array_equal(panels[3 * b].images[0].get_array(), lms_B1FT[b, 0, :, :v])
    vmin, vmax = panels[0].images[0].get_clim()
    assert -5 < vmin < vmax < 5  # percentiles of the real frames only
    assert [ax.get_xlabel() for ax in panels[6:9]] == ["time (s)"] * 3
    assert [panels[3 * b].get_ylabel() for b in range(3)] == ["mel bin"] * 3
    assert fig.get_suptitle() == "step 7"
    full = figures.reconstruction_figure(lms_B1FT, pred_BNP, mask_BN, mc)
    assert all(ax.images[0].get_array().shape == (F, T) for ax in full.axes[:9])
    png = figures.png_bytes(full)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_png_written_to_file_and_tensorboard(tmp_path):
    mc = _tiny_model()
    lms_B1FT, pred_BNP, mask_BN = _inputs(np.random.default_rng(2), mc, 2)
    path = str(tmp_path / "figures" / "recon_00000003.png")
    png = figures.save_reconstruction_figure(path, lms_B1FT, pred_BNP, mask_BN, mc)
    with open(path, "rb") as f:
        assert f.read() == png
    h, w = mpimg.imread(io.BytesIO(png)).shape[:2]  # decoded independently of png_size
    assert metrics.png_size(png) == (w, h)
    writer = metrics.MetricWriter(str(tmp_path), stream=io.StringIO())
    writer.write_png(3, "reconstruction", png)
    writer.write_scalars(3, {"loss": 0.5})
    writer.close()
    scalars, images = read_tensorboard(str(tmp_path))
    assert scalars == {"loss": {3: 0.5}}
    plugin, (width, height, payload) = images["reconstruction"][3]
    assert plugin == "images" and payload == png and (int(width), int(height)) == (w, h)
    with pytest.raises(ValueError, match="not PNG"):
        metrics.png_size(b"GIF89a" + bytes(20))


def test_tensorboard_serves_the_image(tmp_path):
    """TensorBoard itself (the optional `tensorboard` extra) lists and reads the image the way
    its image dashboard does."""
    pytest.importorskip("tensorboard", reason="the optional tensorboard package is absent")
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider
    from tensorboard.backend.event_processing import plugin_event_multiplexer as pem

    mc = _tiny_model()
    png = figures.png_bytes(
        figures.reconstruction_figure(*_inputs(np.random.default_rng(3), mc, 1), mc)
    )
    writer = metrics.MetricWriter(str(tmp_path), stream=io.StringIO())
    writer.write_png(5, "reconstruction", png)
    writer.close()
    mux = pem.EventMultiplexer()
    mux.AddRunsFromDirectory(str(tmp_path))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(tmp_path))
    ctx = context.RequestContext()
    listed = provider.list_blob_sequences(ctx, experiment_id="", plugin_name="images")
    assert list(listed) == ["tb"] and list(listed["tb"]) == ["reconstruction"]
    seqs = provider.read_blob_sequences(ctx, experiment_id="", plugin_name="images", downsample=10)
    (datum,) = seqs["tb"]["reconstruction"]
    blobs = [provider.read_blob(ctx, blob_key=v.blob_key) for v in datum.values]
    w, h = metrics.png_size(png)
    assert datum.step == 5 and blobs == [str(w).encode(), str(h).encode(), png]
