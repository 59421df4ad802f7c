"""In-training hooks: when they run, the probe's clip embeddings and data, the figure hook's
clips and valid frames."""

import io
import os

import jax
import numpy as np
import pytest
from train_utils import read_tensorboard, tiny_config

from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.data import pipeline
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.model import mae
from msm_mae_jax.train import figures, hooks, metrics, optim
from msm_mae_jax.train.state import Setup

ONE_DEVICE = (("data", 1), ("fsdp", 1), ("tensor", 1))


class _Every(hooks.Hook):
    def __init__(self, every):
        self.every_steps = every

    def run(self, step, state):
        return {}


def test_due_every_n_steps_and_at_the_last_step():
    assert [s for s in range(1, 8) if _Every(3).due(s, 7)] == [3, 6, 7]
    assert [s for s in range(1, 7) if _Every(3).due(s, 6)] == [3, 6]
    assert not any(_Every(0).due(s, 7) for s in range(1, 8))


def test_build_hooks_follows_the_config(tmp_path):
    """Each hook is built when its key asks for it (alone or both, figures first), with the
    config's period; none when both are off."""
    small = {"figure_clips": 2, "probe.max_train": 6, "probe.max_test": 4}
    setup = None
    writer = metrics.MetricWriter(str(tmp_path), tensorboard=False, stream=io.StringIO())
    for every_fig, every_probe in [(0, 0), (3, 0), (0, 5), (2, 4)]:
        c = tiny_config(
            7,
            mesh=ONE_DEVICE,
            figure_every_steps=every_fig,
            **{"probe.every_steps": every_probe},
            **small,
        )
        setup = setup or Setup(c, optim.resolve_schedule(c))  # the same model and mesh
        built = hooks.build_hooks(c, setup, NormStats(0.0, 1.0), str(tmp_path), writer)
        want = [(hooks.FigureHook, every_fig)] if every_fig else []
        want += [(hooks.ProbeHook, every_probe)] if every_probe else []
        assert [(type(h), h.every_steps) for h in built] == want, (every_fig, every_probe)
    writer.close()


def test_clip_embeddings_are_frame_features_averaged_over_time():
    """Against the encoder's tokens rearranged by hand: [CLS] dropped, tokens (f t) ->
    mean over t -> (f d); on a data x fsdp mesh of 8 devices."""
    c = tiny_config(2, mesh=(("data", 4), ("fsdp", 2), ("tensor", 1)))
    setup = Setup(c, optim.resolve_schedule(c))
    state = setup.init_state(0)
    mc = setup.model_config
    lms_B1FT = np.random.default_rng(0).standard_normal((3, 1, *mc.input_size), np.float32)
    with setup.activate():
        got = np.asarray(
            hooks.clip_embedding_fn(setup)(state.params["encoder"], setup.replicated(lms_B1FT))
        )
    enc = jax.tree.map(np.asarray, state.params["encoder"])
    x_BKD = np.asarray(mae.Encoder(mc).apply({"params": enc}, lms_B1FT, mask_ratio=0.0).x_BKD)
    gf, gt = mc.grid_size
    x = x_BKD[:, 1:].reshape(3, gf, gt, mc.embed_dim)  # patch n = f * gt + t
    want = x.mean(axis=2).reshape(3, gf * mc.embed_dim)
    assert got.shape == (3, gf * mc.embed_dim)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_probe_data_is_normalised_with_the_stats():
    c = tiny_config(2, **{"probe.max_train": 6, "probe.max_test": 4})
    setup_mc = Setup(c, optim.resolve_schedule(c)).model_config
    raw = hooks.probe_data(c, setup_mc, NormStats(0.0, 1.0))
    norm = hooks.probe_data(c, setup_mc, NormStats(-5.0, 4.0))
    assert [a.shape for a in raw] == [(6, 1, 80, 208), (6,), (4, 1, 80, 208), (4,)]
    np.testing.assert_allclose(norm[0], (raw[0] + 5.0) / 4.0, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(norm[1], raw[1])
    assert norm[0].dtype == np.float32 and len(set(raw[1]) | set(raw[3])) > 1


def test_figure_hook_crops_to_the_batch_frames(tmp_path, monkeypatch):
    frames = np.array([40, 208, 150, 9, 60, 70, 80, 90], np.int32)
    real = pipeline.train_iterator

    def with_frames(*a, **kw):
        for batch in real(*a, **kw):
            yield {**batch, "frames": frames[: len(batch["lms"])]}

    seen = []
    real_figure = figures.reconstruction_figure

    def spy(*a, **kw):
        seen.append(kw["frames_B"])
        return real_figure(*a, **kw)

    monkeypatch.setattr(pipeline, "train_iterator", with_frames)
    monkeypatch.setattr(figures, "reconstruction_figure", spy)
    # two clips, as test_trainer's figures: the same compiled programs
    c = tiny_config(3, mesh=ONE_DEVICE, figure_every_steps=1, figure_clips=2)
    setup = Setup(c, optim.resolve_schedule(c))
    writer = metrics.MetricWriter(str(tmp_path), stream=io.StringIO())
    (hook,) = hooks.build_hooks(c, setup, NormStats(-9.0, 4.0), str(tmp_path), writer)
    assert isinstance(hook, hooks.FigureHook)
    assert hook.run(2, setup.init_state(0)) == {}
    writer.close()
    np.testing.assert_array_equal(seen[0], frames[:2])
    path = os.path.join(tmp_path, "figures", "recon_00000002.png")
    with open(path, "rb") as f:
        png = f.read()
    _, images = read_tensorboard(str(tmp_path))
    assert images["reconstruction"][2][1][2] == png


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(figure_every_steps=1, figure_clips=0), "figure_clips=0"),
        (dict(figure_every_steps=1, figure_clips=9), r"\[1, 8\]"),
        ({"probe.every_steps": 5, "probe.task": "csv:x.csv"}, "probe.task"),
    ],
)
def test_check_config(kw, match):
    with pytest.raises(ConfigError, match=match):
        hooks.check_config(tiny_config(2, **kw), process_count=1)
    off = {**kw, "figure_every_steps": 0, "probe.every_steps": 0}  # hooks off: keys unused
    hooks.check_config(tiny_config(2, **off), process_count=1)
