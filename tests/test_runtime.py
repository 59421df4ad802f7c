"""Feature runtime: the official feature recipe, bucketing, sharding, normalisation modes."""

import math

import jax
import numpy as np
import pytest
from model_utils import small_model

from msm_mae_jax.data import audio, audio_io
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.features.runtime import Runtime, bucket_size, patch_timestamps_ms
from msm_mae_jax.model import artifact, mae

CFG = small_model()
STATS = NormStats(mean=-6.5, std=3.5)
ATOL = 2e-5


@pytest.fixture(scope="module")
def enc_params():
    return mae.init_params(CFG, jax.random.key(1))["encoder"]


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory, enc_params):
    path = tmp_path_factory.mktemp("model")
    return artifact.save_model_dir(str(path), CFG, enc_params, STATS, source="random init")


@pytest.fixture(scope="module")
def rt(saved_dir):
    return Runtime.load(saved_dir)


def _noise(batch, samples, seed=0, scale=0.1):
    return (scale * np.random.default_rng(seed).standard_normal((batch, samples))).astype(
        np.float32
    )


def _reference(params, lms_BFT, mean, std, layer=None):
    """Independent feature recipe in numpy around a direct encoder call: normalise, zero-pad to
    whole units, encode each unit, drop [CLS], '(f t) d -> t (f d)', cut to ceil(T / pw)."""
    B, F, T = lms_BFT.shape
    fu, (gf, gt), D = CFG.input_size[1], CFG.grid_size, CFG.embed_dim
    x = (np.asarray(lms_BFT, np.float64) - mean) / std
    units = math.ceil(T / fu)
    x = np.concatenate([x, np.zeros((B, F, units * fu - T))], axis=2).astype(np.float32)
    out = []
    for u in range(units):
        y = mae.Encoder(CFG).apply(
            {"params": params},
            x[:, None, :, u * fu : (u + 1) * fu],
            return_layers=layer is not None,
        )
        tok = np.asarray(y.x_BKD if layer is None else y.layers[layer])[:, 1:]  # drop [CLS]
        feats = np.zeros((B, gt, gf * D), np.float32)
        for f in range(gf):
            for t in range(gt):
                feats[:, t, f * D : (f + 1) * D] = tok[:, f * gt + t]
        out.append(feats)
    return np.concatenate(out, axis=1)[:, : math.ceil(T / CFG.patch_size[1])]


def test_bucket_size():
    ns = (1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 1000)
    assert [bucket_size(n) for n in ns] == [1, 2, 3, 4, 6, 6, 8, 8, 12, 12, 16, 1024]
    for n in range(1, 300):  # smallest of the 2^k / 3 * 2^k family that holds n
        family = sorted({2**k for k in range(10)} | {3 * 2**k for k in range(9)})
        assert bucket_size(n) == min(b for b in family if b >= n)
    with pytest.raises(ValueError, match="n >= 1, got 0"):
        bucket_size(0)


def test_matches_reference_recipe_with_padded_tail(rt, enc_params):
    lms = np.random.default_rng(1).normal(-6, 3, (2, 80, 300)).astype(np.float32)
    got = rt.encode_lms(lms)
    assert got.shape == (2, math.ceil(300 / 16), CFG.feature_dim) == (2, 19, 320)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, _reference(enc_params, lms, STATS.mean, STATS.std), atol=ATOL)
    # Zero padding happens after normalisation: raw-zero padding would give other features.
    raw_pad = np.concatenate([lms, np.zeros((2, 80, 116), np.float32)], axis=2)
    wrong = _reference(enc_params, raw_pad, STATS.mean, STATS.std)[:, :19]
    assert np.abs(got[:, 13:] - wrong[:, 13:]).max() > 1e-3


def test_encode_equals_encode_lms_of_log_mel(rt):
    wav = _noise(2, 20_800)  # 131 frames
    lms = np.asarray(audio.log_mel_jax(wav))
    for norm in ("dataset", "batch"):
        got = rt.encode(wav, normalization=norm)
        assert got.shape == (2, math.ceil(131 / 16), 320)
        np.testing.assert_allclose(got, rt.encode_lms(lms, normalization=norm), atol=ATOL)


def test_chunking_three_units_is_concatenation(rt):
    lms = np.random.default_rng(2).normal(-6, 3, (1, 80, 3 * 208)).astype(np.float32)
    whole = rt.encode_lms(lms)
    assert whole.shape == (1, 39, 320)
    parts = [rt.encode_lms(lms[:, :, i * 208 : (i + 1) * 208]) for i in range(3)]
    np.testing.assert_allclose(whole, np.concatenate(parts, axis=1), atol=ATOL)


@pytest.mark.parametrize("frames", [1, 15, 16, 17, 208, 209])
def test_time_steps_are_ceil_frames_over_patch_width(rt, frames):
    lms = np.full((1, 80, frames), -5.0, np.float32)
    assert rt.encode_lms(lms).shape == (1, math.ceil(frames / 16), 320)


def test_return_layers(rt, enc_params):
    lms = np.random.default_rng(3).normal(-6, 3, (2, 80, 100)).astype(np.float32)
    layers = rt.encode_lms(lms, return_layers=True)
    assert layers.shape == (CFG.depth, 2, 7, 320)
    np.testing.assert_allclose(layers[-1], rt.encode_lms(lms), atol=ATOL)
    np.testing.assert_allclose(
        layers[0], _reference(enc_params, lms, STATS.mean, STATS.std, layer=0), atol=ATOL
    )
    assert np.abs(layers[0] - layers[-1]).max() > 1e-2


def test_normalization_modes(rt):
    wav = _noise(3, 12_000, seed=4)  # batch 3 runs padded to 4: the pad row must not count
    lms = np.asarray(audio.log_mel_jax(wav), np.float64)
    mean, std = lms.mean(), lms.std(ddof=1)  # the official wrapper: torch's unbiased std
    np.testing.assert_allclose(
        rt.encode(wav, normalization="batch"), rt.encode(wav, normalization=(mean, std)), atol=ATOL
    )
    np.testing.assert_allclose(rt.encode(wav), rt.encode(wav, normalization=STATS), atol=0)
    np.testing.assert_allclose(rt.encode(wav), rt.encode(wav, normalization=(-6.5, 3.5)), atol=0)
    pre = ((lms - STATS.mean) / STATS.std).astype(np.float32)
    np.testing.assert_allclose(rt.encode_lms(pre, normalization=None), rt.encode(wav), atol=ATOL)
    assert np.abs(rt.encode(wav, normalization="batch") - rt.encode(wav)).max() > 1e-3
    # A silent batch has std 0: features stay finite instead of NaN.
    assert np.isfinite(rt.encode(np.zeros((1, 4000), np.float32), normalization="batch")).all()
    for bad, match in (
        ("global", r"normalization='global'; expected"),
        ((0.0, 0.0), r"invalid normalisation statistics mean=0.0 std=0.0"),
        ((1.0,), r"normalization=\(1.0,\); expected"),
        (3.0, r"normalization=3.0; expected"),
    ):
        with pytest.raises(ValueError, match=match):
            rt.encode(wav, normalization=bad)


def test_no_recompilation_within_a_bucket(enc_params):
    # A config no other test here compiles for (and the model without [CLS] is covered too).
    cfg = CFG.replace(use_cls_token=False)
    rt = Runtime(cfg, {k: v for k, v in enc_params.items() if k != "cls_token"}, STATS)
    assert rt.encode(_noise(2, 16_000)).shape == (2, 7, 320)  # batch bucket 2, one unit
    assert rt.num_traces == 1
    n = 1
    for samples in (8_000, 20_000, 33_119):  # 51 .. 207 frames: all one unit
        rt.encode(_noise(2, samples))
    assert rt.num_traces == n
    rt.encode(_noise(5, 16_000))  # batch bucket 6: one new function
    rt.encode(_noise(6, 10_000))
    assert rt.num_traces == n + 1
    rt.encode(_noise(2, 40_000))  # 251 frames: two units
    rt.encode(_noise(2, 66_000))  # 413 frames: two units
    assert rt.num_traces == n + 2
    rt.encode(_noise(2, 140_000))  # 876 frames: five units -> bucket of six
    rt.encode(_noise(2, 190_000))  # 1188 frames: six units
    assert rt.num_traces == n + 3
    # A second runtime of the same config reuses the compiled functions.
    Runtime(cfg, rt._params, STATS).encode(_noise(2, 12_345))
    assert rt.num_traces == n + 3


@pytest.mark.skipif(jax.local_device_count() < 2, reason="needs several (fake) devices")
def test_large_batches_are_sharded_and_agree(rt):
    ndev = jax.local_device_count()
    wav = _noise(ndev + 1, 9_000, seed=5)
    big = rt.encode(wav)  # >= #devices: sharded over the mesh, batch padded to a multiple
    assert rt._params_sharded is not None
    np.testing.assert_allclose(big[:2], rt.encode(wav[:2]), atol=ATOL)
    np.testing.assert_allclose(big[-1:], rt.encode(wav[-1:]), atol=ATOL)
    # Batch statistics reduce over every device's real rows, not the padding rows.
    lms = np.asarray(audio.log_mel_jax(wav), np.float64)
    np.testing.assert_allclose(
        rt.encode(wav, normalization="batch"),
        rt.encode(wav, normalization=(lms.mean(), lms.std(ddof=1))),
        atol=ATOL,
    )


def test_resampled_input(rt):
    wav8k = _noise(1, 8_000, seed=6)  # 1 s at 8 kHz
    got = rt.encode(wav8k, sample_rate=8000)
    assert got.shape == (1, math.ceil(audio.num_frames(16_000) / 16), 320)
    want = rt.encode(audio_io.resample(wav8k[0], 8000, 16000)[None])
    np.testing.assert_allclose(got, want, atol=ATOL)
    _, ts = rt.timestamp_embeddings(wav8k, sample_rate=8000)
    # 1 s: 101 frames, 7 steps; the last nominal centre (6.5 * 160 = 1040 ms) moves to 1000 ms.
    np.testing.assert_allclose(ts[0], 40.0 + 160.0 * np.arange(7), atol=1e-3)


@pytest.mark.parametrize("sr", [0, -16000, float("nan"), float("inf"), 44100.5, 10, "16k"])
def test_bad_sample_rate(rt, sr):
    with pytest.raises(ValueError, match="sample_rate"):
        rt.encode(_noise(1, 1000), sample_rate=sr)


def test_short_and_single_waveforms(rt):
    for samples in (1, 100, 159):  # shorter than one hop, let alone one patch
        out = rt.encode(_noise(2, samples, seed=samples))
        assert out.shape == (2, 1, 320) and np.isfinite(out).all()
    wav = _noise(1, 5_000, seed=7)
    np.testing.assert_allclose(rt.encode(wav[0]), rt.encode(wav)[0], atol=0)
    np.testing.assert_allclose(rt.encode(jax.numpy.asarray(wav)), rt.encode(wav), atol=0)
    np.testing.assert_allclose(rt.scene_embeddings(wav), rt.encode(wav).mean(axis=1), atol=1e-6)


def test_bad_audio_is_a_clear_error(rt):
    with pytest.raises(ValueError, match="3-D"):
        rt.encode(np.zeros((2, 1, 1600), np.float32))
    with pytest.raises(ValueError, match="no samples"):
        rt.encode(np.zeros((2, 0), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        rt.encode(np.full((1, 1600), np.nan, np.float32))
    with pytest.raises(ValueError, match="int16"):
        rt.encode(np.zeros((1, 1600), np.int16))
    with pytest.raises(ValueError, match=r"\[B, 80, T\]"):
        rt.encode_lms(np.zeros((1, 64, 100), np.float32))


def _expected_timestamps_ms(seconds, steps, period=160.0):
    """The documented centring: column centres (t + 0.5) * period, all moved down by the
    smallest shift (at most half a period) that keeps the last one inside the clip."""
    shift = min(period / 2, max(0.0, (steps - 0.5) * period - seconds * 1000))
    return (np.arange(steps) + 0.5) * period - shift


def test_timestamps():
    period = 160.0  # 16 frames x 10 ms
    for seconds in (0.005, 1.0, 1.07, 1.98, 2.0, 4.0, 10.01):
        S = round(seconds * 16000)
        T = math.ceil(audio.num_frames(S) / 16)
        ts = patch_timestamps_ms(S, 16000, T, CFG)
        assert ts.shape == (T,) and ts.dtype == np.float32
        np.testing.assert_allclose(np.diff(ts), period, atol=1e-3)
        assert 0.0 <= ts[0] <= period / 2 and ts[-1] <= seconds * 1000 + 1e-3
        np.testing.assert_allclose(ts, _expected_timestamps_ms(seconds, T), atol=1e-3)
    # Patch width 8: 80 ms steps; the same clip at 8 kHz gets the same timestamps.
    cfg8 = CFG.replace(patch_size=(16, 8))
    np.testing.assert_allclose(
        patch_timestamps_ms(31_680, 16000, 25, cfg8),
        _expected_timestamps_ms(1.98, 25, period=80.0),
        atol=1e-3,
    )
    np.testing.assert_allclose(
        patch_timestamps_ms(15_840, 8000, 13, CFG), _expected_timestamps_ms(1.98, 13), atol=1e-3
    )
    # A clip whose last column fits in it gets exact column centres (t + 0.5) * 160 ms.
    np.testing.assert_allclose(
        patch_timestamps_ms(17_120, 16000, 7, CFG), (np.arange(7) + 0.5) * period
    )


def test_timestamp_embeddings(rt):
    wav = _noise(2, 31_680, seed=8)  # 1.98 s
    emb, ts = rt.timestamp_embeddings(wav)
    assert emb.shape == (2, 13, 320) and ts.shape == (2, 13)
    np.testing.assert_allclose(emb, rt.encode(wav), atol=0)
    # Milliseconds: 13 columns 160 ms apart; the last nominal centre (12.5 * 160 = 2000 ms)
    # passes the clip's end, so all move down 20 ms: 60, 220, ..., 1980.
    np.testing.assert_allclose(ts, np.tile(60.0 + 160.0 * np.arange(13), (2, 1)), atol=1e-3)


def test_load_errors(tmp_path, enc_params):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Runtime.load(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=str(tmp_path)):
        Runtime.load(tmp_path)
    (tmp_path / "w.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="convert"):
        Runtime.load(tmp_path / "w.pth")
    with pytest.raises(ValueError, match="blocks_2"):
        Runtime(CFG.replace(depth=3), enc_params, STATS)


def test_loads_converted_official_weights(tmp_path, rt, enc_params):
    from msm_mae_jax.model import convert

    src = tmp_path / "80x208p16x16_tiny" / "checkpoint.npz"
    src.parent.mkdir()
    np.savez(src, **convert.params_to_state_dict({"encoder": enc_params}, CFG))
    wav = _noise(2, 9_000, seed=9)
    out = convert.convert(str(src), str(tmp_path / "dataset"), num_heads=4, norm_stats=STATS)
    np.testing.assert_allclose(Runtime.load(out).encode(wav), rt.encode(wav), atol=1e-6)
    # Official weights carry no statistics: converted for per-batch normalisation, the
    # runtime normalises per batch by default and refuses 'dataset'.
    out = convert.convert(str(src), str(tmp_path / "batch"), num_heads=4, per_batch_norm=True)
    per_batch = Runtime.load(out)
    np.testing.assert_allclose(
        per_batch.encode(wav), rt.encode(wav, normalization="batch"), atol=1e-6
    )
    with pytest.raises(ValueError, match="no dataset statistics"):
        per_batch.encode(wav, normalization="dataset")


def _clips(lengths, seed=20):
    return [_noise(1, n, seed=seed + i)[0] for i, n in enumerate(lengths)]


def test_list_of_clips_equals_per_clip_calls(rt):
    """Clips of different lengths (1 and 3 units, shorter than a hop) in one call: each
    result is that clip encoded alone."""
    clips = _clips([16_000, 1_000, 45_000, 150])
    feats = rt.encode(clips)
    assert isinstance(feats, list) and len(feats) == 4
    for clip, got in zip(clips, feats, strict=True):
        want = rt.encode(clip)
        assert got.shape == want.shape == (rt.num_steps(audio.num_frames(len(clip))), 320)
        np.testing.assert_allclose(got, want, atol=ATOL)
    scene = rt.scene_embeddings(tuple(clips))
    assert scene.shape == (4, 320) and scene.dtype == np.float32
    for i, clip in enumerate(clips):
        np.testing.assert_allclose(scene[i], rt.scene_embeddings(clip), atol=ATOL)
    layers = rt.encode(clips, return_layers=True)
    np.testing.assert_allclose(layers[2], rt.encode(clips[2], return_layers=True), atol=ATOL)


def test_list_timestamps_and_resampling_equal_per_clip_calls(rt):
    clips = _clips([8_000, 15_840, 3_000], seed=30)  # 8 kHz: 1 s, 1.98 s, 0.375 s
    feats, ts = rt.timestamp_embeddings(clips, sample_rate=8000)
    for clip, f, t in zip(clips, feats, ts, strict=True):
        want_f, want_t = rt.timestamp_embeddings(clip[None], sample_rate=8000)
        np.testing.assert_allclose(f, want_f[0], atol=ATOL)
        np.testing.assert_array_equal(t, want_t[0])
        assert t.shape == (f.shape[0],) and t[-1] <= len(clip) / 8 + 1e-3


def test_list_batch_normalization_pools_the_real_frames_of_every_clip(rt):
    clips = _clips([9_000, 30_000], seed=40)
    lms = [np.asarray(audio.log_mel_jax(c[None]), np.float64)[0] for c in clips]
    pooled = np.concatenate([x.ravel() for x in lms])
    got = rt.encode(clips, normalization="batch")
    want = rt.encode(clips, normalization=(pooled.mean(), pooled.std(ddof=1)))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=ATOL)


def test_bad_clip_in_a_list_is_named(rt):
    good = _noise(1, 1600)[0]
    with pytest.raises(ValueError, match=r"audio\[1\] contains NaN"):
        rt.encode([good, np.full(1600, np.nan, np.float32)])
    with pytest.raises(ValueError, match=r"audio\[0\] has shape \(1, 1600\)"):
        rt.encode([good[None], good])
    with pytest.raises(ValueError, match="empty list"):
        rt.encode([])
