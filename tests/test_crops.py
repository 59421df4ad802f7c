"""Training crops: the counter-based draws, the crop starts, and windows whose uncentred
log-mel is exactly the crop of the clip's log-mel (checked against librosa)."""

import os
import re

import numpy as np
import pytest
import soundfile as sf
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


# ---- the crops of the training iterator, against the formula -----------------------------------

_MASK = 2**64 - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _splitmix_finaliser(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def _uniform_py(seed, pos, attempt=0):
    """The crop draw in Python integers: splitmix64 over (position, seed, attempt), 53 bits."""
    z = ((int(pos) & _MASK) * _GOLDEN) & _MASK
    z = _splitmix_finaliser(z ^ _splitmix_finaliser(((seed & _MASK) + _GOLDEN) & _MASK))
    z = _splitmix_finaliser((z + ((attempt & _MASK) * _GOLDEN & _MASK)) & _MASK)
    return (z >> 11) / 2.0**53


def test_uniform_is_splitmix64_of_seed_position_and_attempt():
    cases = [(0, 0, 0), (7, 123, 0), (7, 123, 1), (-1, 2**40, 3), (2**62 - 5, -5, 15)]
    for seed, pos, attempt in cases:
        assert float(crops.uniform(seed, pos, attempt)) == _uniform_py(seed, pos, attempt)
    pos = np.arange(-50, 50)
    np.testing.assert_array_equal(crops.uniform(11, pos, 2), [_uniform_py(11, p, 2) for p in pos])


def _expected_window(wav, u, frames):
    """A crop's window from the formula: t0 = floor(u (N - T + 1)) (0 for short clips), n =
    min(T, N - t0) valid frames, samples [160 t0, 160 (t0 + n - 1) + 400) of the clip
    reflect-padded by 200, zeros after."""
    clip_frames = 1 + len(wav) // 160
    t0 = int(u * (max(clip_frames - frames, 0) + 1))
    n = min(frames, clip_frames - t0)
    padded = np.pad(wav.astype(np.float64), 200, mode="reflect")
    out = np.zeros(160 * (frames - 1) + 400)
    out[: 160 * (n - 1) + 400] = padded[160 * t0 : 160 * (t0 + n - 1) + 400]
    return out, n


def _files_corpus(root):
    """16 kHz noise clips longer and shorter than a 64-frame crop, and one file whose samples
    are NaN (header fine): its rows are read from the next file with attempt 1."""
    root.mkdir()
    rng = np.random.default_rng(5)
    for name, seconds in [("a", 1.0), ("b", 1.7), ("c", 0.3), ("e", 2.0), ("f", 0.7)]:
        sf.write(root / f"{name}.wav", 0.2 * rng.standard_normal(int(seconds * 16000)), 16000)
    sf.write(root / "d.wav", np.full(8000, np.nan, np.float32), 16000, subtype="FLOAT")
    return sorted(str(p) for p in root.glob("*.wav"))


@pytest.mark.parametrize("kind", ["synthetic", "files"])
def test_training_windows_are_the_formulas_crops(kind, tmp_path):
    """Every row of every host's batch is the crop drawn by the formula at its global position
    g = step * B + host * B_local + row: so batches are a function of the seed alone, resuming
    at step s skips ahead exactly, and N hosts' batches are rows of the one-host batch. Each
    clip appears once per epoch; a file that fails to decode is skipped and counted once,
    its rows read from the next file with the next draw."""
    from configs.msm_mae import get_config
    from msm_mae_jax.data import pipeline, source_base, synthetic
    from msm_mae_jax.data.normalization import NormStats

    c = get_config("tiny")
    c.batch_size, c.model.input_size, c.data.logmel_on_device = 4, (80, 64), True
    if kind == "files":
        paths = _files_corpus(tmp_path / "c")
        c.data.source = f"files:{tmp_path / 'c'}"
        wavs = [sf.read(p, dtype="float32")[0] for p in paths]
        bad = [os.path.basename(p) for p in paths].index("d.wav")
    else:
        c.data.synthetic_clips, c.data.synthetic_seconds = 6, 1.0
        sd = int(c.data.synthetic_seed)
        wavs = [synthetic.make_clip(i, sd, 1.0)[0] for i in range(6)]
        bad = None
    seed = source_base.mix_seed(int(c.seed), 2)
    steps, n_clips = 6, len(wavs)  # 24 positions: 4 epochs of 6 clips

    def rows_of(g):
        """(clip, attempt) -> (window, frames) of every way position g may be read."""
        out = {}
        for i, wav in enumerate(wavs):
            if i != bad:
                out[(i, 0)] = _expected_window(wav, _uniform_py(seed, g, 0), 64)
        if bad is not None:
            nxt = (bad + 1) % n_clips
            out[(nxt, 1)] = _expected_window(wavs[nxt], _uniform_py(seed, g, 1), 64)
        return out

    seen = {}  # global position -> (clip, attempt)
    for n_proc, start in [(1, 0), (2, 0), (2, 3), (4, 1)]:
        met_bad = set()  # hosts with a row read from the failed file's successor
        its = [
            pipeline.train_iterator(
                c, NormStats(0.0, 1.0), process_index=p, process_count=n_proc, start_step=start
            )
            for p in range(n_proc)
        ]
        for step in range(start, steps):
            for p, it in enumerate(its):
                batch = next(it)
                for r, (w, n) in enumerate(zip(batch["wav"], batch["frames"], strict=True)):
                    g = step * 4 + p * (4 // n_proc) + r
                    hits = [
                        key
                        for key, (ref, ref_n) in rows_of(g).items()
                        if ref_n == n and np.abs(w - ref).max() <= 1e-7
                    ]
                    assert len(hits) == 1, (n_proc, start, g, hits)
                    assert seen.setdefault(g, hits[0]) == hits[0], (n_proc, start, g)
                    if hits[0][1] == 1:
                        met_bad.add(p)
        want = [] if bad is None else [paths[bad]]
        reported = []
        for p, it in enumerate(its):  # counted once per host, however often read
            skipped = list(it.skip_report.skipped)
            # a host that substituted a row reports the file; another may have met it reading
            # ahead (prefetch) or not at all
            assert skipped == want if p in met_bad else skipped in ([], want), (n_proc, p, skipped)
            reported += skipped
            it.close()
        assert sorted(set(reported)) == want, (n_proc, start, reported)
    assert sorted(seen) == list(range(steps * 4))
    for e in range(4):  # each clip once per epoch (the failed file's rows: its successor's)
        epoch = sorted(seen[g] for g in range(e * n_clips, (e + 1) * n_clips))
        want = [(i, 0) for i in range(n_clips) if i != bad]
        want += [] if bad is None else [((bad + 1) % n_clips, 1)]
        assert epoch == sorted(want), (e, epoch)


@pytest.mark.parametrize("n_files", [1, 3])
def test_files_that_all_fail_are_counted_as_tried(n_files, tmp_path):
    from msm_mae_jax.core.errors import DataError
    from msm_mae_jax.data import sources

    paths = []
    for i in range(n_files):
        paths.append(str(tmp_path / f"{i}.wav"))
        sf.write(paths[-1], np.full(4000, np.nan, np.float32), 16000, subtype="FLOAT")
    src = sources.FileSource(paths, spec="files:x")
    load = src.batch_loader(seed=0, frames=16).load
    what = "the only file (1 file tried)" if n_files == 1 else "3 files in a row (all of them)"
    with pytest.raises(DataError, match=rf"'files:x': {re.escape(what)} failed to decode; "):
        load(np.arange(2), np.zeros(2, np.int64))
    assert src.report.count == n_files
