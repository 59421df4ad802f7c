"""The built-in synthetic audio: deterministic, well-formed, learnable but not by loudness."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from msm_mae_jax.data import synthetic


def test_clip_format_and_determinism():
    wav, label = synthetic.make_clip(7, seed=3, seconds=0.5)
    assert wav.dtype == np.float32 and wav.shape == (8000,)
    assert label == synthetic.label_of(7) and 0 <= label < len(synthetic.CLASS_NAMES)
    assert np.isfinite(wav).all() and np.abs(wav).max() <= 0.99 + 1e-6
    again, _ = synthetic.make_clip(7, seed=3, seconds=0.5)
    np.testing.assert_array_equal(wav, again)
    other_seed, _ = synthetic.make_clip(7, seed=4, seconds=0.5)
    other_index, _ = synthetic.make_clip(13, seed=3, seconds=0.5)  # same class as 7
    assert not np.allclose(wav, other_seed) and not np.allclose(wav, other_index)


def test_dataset_is_balanced_and_covers_every_class():
    n = 5 * len(synthetic.CLASS_NAMES)
    wavs, labels = synthetic.make_dataset(n, seed=0, seconds=0.25)
    assert len(wavs) == n and labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(labels), [5] * len(synthetic.CLASS_NAMES))
    assert len(synthetic.CLASS_NAMES) >= 5
    # Levels vary per clip (RMS spread over > 10 dB) and no clip is silent.
    rms_db = np.array([20 * np.log10(np.sqrt(np.mean(w.astype(np.float64) ** 2))) for w in wavs])
    assert rms_db.max() - rms_db.min() > 10 and rms_db.min() > -60


def test_invalid_arguments():
    with pytest.raises(ValueError, match="seconds"):
        synthetic.make_clip(0, 0, 0.0)
    with pytest.raises(ValueError, match="index"):
        synthetic.make_clip(-1, 0, 1.0)


def _spectral_features(wav: np.ndarray) -> np.ndarray:
    frames = wav[: len(wav) // 400 * 400].reshape(-1, 400) * np.hanning(400)
    power = np.abs(np.fft.rfft(frames, axis=1))[:, :200] ** 2
    bands = np.log(power.reshape(len(power), 40, 5).mean(-1) + 1e-10)
    return np.concatenate([bands.mean(0), bands.std(0)])


def test_classes_are_learnable_from_spectra_but_not_from_loudness():
    wavs, labels = synthetic.make_dataset(180, seed=1, seconds=1.0)
    chance = 1.0 / len(synthetic.CLASS_NAMES)
    spectral = np.stack([_spectral_features(w) for w in wavs])
    loudness = np.array([[np.log(np.mean(w.astype(np.float64) ** 2))] for w in wavs])
    clf = LogisticRegression(max_iter=3000)
    acc_spectral = cross_val_score(clf, spectral, labels, cv=3).mean()
    acc_loudness = cross_val_score(clf, loudness, labels, cv=3).mean()
    assert acc_spectral > 3 * chance, acc_spectral
    assert acc_loudness < 2 * chance, acc_loudness
