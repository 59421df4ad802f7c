"""Training crops: the counter-based draws, the crop starts, and windows whose uncentred
log-mel is exactly the crop of the clip's log-mel (checked against librosa)."""

import numpy as np
import pytest
from reference import librosa_log_mel

from msm_mae_jax.data import audio, crops

TOL = 1e-3  # log-mel difference allowed against librosa (float64 FFT), as in test_audio


def test_uniform_is_a_deterministic_uniform_hash():
    pos = np.arange(40_000)
    u = crops.uniform(7, pos)
    assert u.dtype == np.float64 and u.min() >= 0.0 and u.max() < 1.0
    np.testing.assert_array_equal(u, crops.uniform(7, pos))  # no state: same draws again
    np.testing.assert_array_equal(u[123], crops.uniform(7, 123))  # per element, any batching
    counts = np.histogram(u, bins=20, range=(0, 1))[0]
    assert np.abs(counts - 2000).max() < 200, counts  # ~4.5 sigma of a binomial(40000, 1/20)
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.02  # neighbours are independent
    for other in (crops.uniform(8, pos), crops.uniform(7, pos, attempt=1)):
        assert np.mean(other == u) < 1e-3
    assert crops.uniform(-1, [2**40, -5]).shape == (2,)  # any int64 seed and position


def test_crop_start_draws_every_start_equally():
    u = (np.arange(7000) + 0.5) / 7000
    starts = crops.crop_start(u, 10, 4)  # 10 frames, crops of 4: starts 0..6
    assert np.bincount(starts).tolist() == [1000] * 7
    assert crops.crop_start(np.array([0.0, 0.999999]), 3, 4).tolist() == [0, 0]  # short clip
    clip_B = np.array([5, 100, 208, 209])
    assert (crops.crop_start(np.full(4, 0.9999999), clip_B, 208) == [0, 0, 0, 1]).all()


def _window(wav, t0, n, frames):
    out = np.zeros(crops.window_samples(frames), np.float32)

    def read_into(a, dest):
        dest[:] = wav[a : a + dest.shape[0]]

    crops.window(read_into, wav.shape[0], t0, n, out)
    return out


@pytest.mark.filterwarnings("ignore:n_fft=400 is too large")
@pytest.mark.parametrize("samples", [170, 399, 3200, 16077])
def test_window_log_mel_is_the_crop_of_the_clips_log_mel(samples):
    # 170 samples: shorter than the reflect padding (numpy keeps reflecting); 16077: an
    # interior crop read as one contiguous span, and crops touching both ends.
    wav = (0.3 * np.random.default_rng(samples).standard_normal(samples)).astype(np.float32)
    ref = librosa_log_mel(wav)
    ours = audio.log_mel(wav).numpy()
    clip_frames, frames = ref.shape[1], 16
    starts = sorted({0, 1, 2, clip_frames // 2, clip_frames - 2, clip_frames - 1})
    for t0 in [t for t in starts if 0 <= t < clip_frames]:
        n = min(frames, clip_frames - t0)
        w = _window(wav, t0, n, frames)
        assert not w[crops.window_samples(n) :].any()  # zero after the valid frames' samples
        lms = audio.log_mel(w, center=False).numpy()
        assert lms.shape == (80, frames)
        assert np.abs(lms[:, :n] - ref[:, t0 : t0 + n]).max() <= TOL, t0
        np.testing.assert_allclose(lms[:, :n], ours[:, t0 : t0 + n], atol=1e-5)


def test_window_of_wave_draws_the_crop_and_caps_it():
    wav = (0.3 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32)
    full = audio.log_mel(wav).numpy()  # 101 frames
    out = np.zeros(crops.window_samples(32), np.float32)
    for u in (0.0, 0.37, 0.999):
        out[:] = 0.0
        n = crops.window_of_wave(wav, u, out)
        t0 = int(crops.crop_start(u, 101, 32))
        assert n == 32 and t0 == int(u * 70)
        lms = audio.log_mel(out, center=False).numpy()
        np.testing.assert_allclose(lms, full[:, t0 : t0 + 32], atol=1e-5)
    out[:] = 0.0
    assert crops.window_of_wave(wav, 0.5, out, max_frames=10) == 10
    assert not out[crops.window_samples(10) :].any()
    short = wav[:4000]  # 26 frames < 32: the whole clip from frame 0
    out[:] = 0.0
    assert crops.window_of_wave(short, 0.9, out) == 26
    np.testing.assert_allclose(
        audio.log_mel(out, center=False).numpy()[:, :26], audio.log_mel(short).numpy(), atol=1e-5
    )
