"""Pre-training's normalisation statistics against a numpy rendering of the official loop.

The official `util/datasets.py` (`SpectrogramDataset.__init__` without given statistics, as
REFERENCE.md "Normalisation" describes it) draws `np.random.randint(0, len(files), 10000)`
clip indices with replacement, makes each clip a training crop (`randint(l - T)` start of a
longer clip, no crop when l == T, zero padding at the end in log-mel space when shorter),
stacks them and takes `X.mean()` and `X.std() + torch.finfo().eps` (unbiased std). It is
written out below with numpy over librosa's log-mel of each whole clip, independently of the
package's crop windows and front end; its random draws replay the package's (how the seeds
map: `official_sample` gives each crop's clip and the uniform u its start comes from; the
package's start is floor(u (l - T + 1)), one position more than `randint(l - T)` can draw, a
difference README "Notes on fidelity" names).
"""

import numpy as np
import pytest
import soundfile as sf
from reference import librosa_log_mel

from configs.msm_mae import get_config
from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.data import audio, audio_io, crops
from msm_mae_jax.data import pipeline as ip

T = 64  # crop frames
F32_EPS = 1.1920929e-07  # torch.finfo().eps (float32)


def official_stats(lms_of_clip, crop_frames, n, rng):
    """The official loop: `rng.randint(0, N, size=n)` clips, `rng.randint(l - T)` crop
    starts, zero padding at the end, mean and unbiased std (+ eps) of all values."""
    stacked = []
    for i in rng.randint(0, len(lms_of_clip), size=n):
        lms = lms_of_clip[i]
        l = lms.shape[-1]  # noqa: E741 (the official name)
        if l > crop_frames:
            start = rng.randint(l - crop_frames)
            lms = lms[..., start : start + crop_frames]
        elif l < crop_frames:
            lms = np.pad(lms, ((0, 0), (0, crop_frames - l)), constant_values=0)
        stacked.append(lms.astype(np.float32))
    X = np.stack(stacked).astype(np.float64)
    return X.mean(), X.std(ddof=1) + F32_EPS


class Replay:
    """`randint` answering with the package's draws: the clip indices of `official_sample`,
    then per cropped clip the start floor(u (l - T + 1)) of u = crops.uniform(crop_seed, k)."""

    def __init__(self, sample, lms_of_clip, crop_frames):
        self.sample, self.lms, self.T = sample, lms_of_clip, crop_frames
        self.k = 0  # the crop whose start is asked next
        self.starts = []

    def randint(self, low, high=None, size=None):
        if size is not None:  # the clip indices, all at once
            assert (low, high, size) == (0, len(self.lms), len(self.sample.indices))
            return self.sample.indices
        while self.lms[self.sample.indices[self.k]].shape[-1] <= self.T:
            self.k += 1  # crops of clips not longer than T draw no start
        u = float(crops.uniform(self.sample.crop_seed, self.sample.positions[self.k]))
        start = int(u * (low + 1))  # low = l - T; the official draws from [0, l - T)
        self.starts.append((start, low))
        self.k += 1
        return start


@pytest.fixture(scope="module")
def corpus(fsdd_dir, tmp_path_factory):
    """16 kHz float WAVs: five short recordings (< T frames), one of exactly T frames and
    three longer ones (recordings joined); and their librosa log-mels."""
    root = tmp_path_factory.mktemp("stats_corpus")
    names = ["0_george_0", "1_jackson_1", "2_lucas_2", "3_nicolas_3", "4_theo_4", "5_yweweler_5"]
    waves = [audio_io.load_audio(str(fsdd_dir / f"{n}.wav")) for n in names]
    clips = waves[:5]
    exact = np.concatenate(waves)[: (T - 1) * audio.HOP_LENGTH]  # 1 + S // 160 == T frames
    clips.append(exact)
    for k in (3, 4, 6):
        clips.append(np.concatenate(waves[:k]))
    lms = []
    for k, wav in enumerate(clips):
        sf.write(root / f"clip{k}.wav", wav, 16000, subtype="FLOAT")
        lms.append(librosa_log_mel(wav.astype(np.float64)))
    frames = [x.shape[-1] for x in lms]
    assert min(frames) < T and T in frames and max(frames) > 2 * T, frames
    return root, lms


def _config(root, n, method="official"):
    c = get_config("tiny")
    c.model.input_size = (80, T)
    c.data.source = f"files:{root}"
    c.data.norm_stats_crops = n
    c.data.norm_stats_method = method
    return c


def test_statistics_equal_the_official_loop(corpus):
    root, lms = corpus
    n, seed = 300, 5
    stats = ip.compute_norm_stats(_config(root, n), seed=seed)
    sample = ip.official_sample(seed, n, len(lms))
    replay = Replay(sample, lms, T)
    mean, std = official_stats(lms, T, n, replay)
    # Every clip was drawn, and long clips' starts spread over their range.
    assert set(sample.indices) == set(range(len(lms)))
    assert len(replay.starts) > 50 and len({s for s, _ in replay.starts}) > 30
    # The package's log-mel (float32 FFT of crop windows) differs from librosa's float64 one
    # by ~1e-4 on speech (tests/test_audio.py); the padding's zeros are exact.
    assert stats.mean == pytest.approx(mean, rel=2e-5)
    assert stats.std == pytest.approx(std, rel=2e-5)
    # The padding counts: statistics over the real frames alone are far from these.
    frames_only = ip.compute_norm_stats(_config(root, n, "frames"), seed=seed)
    assert abs(frames_only.mean - stats.mean) > 0.5


def test_statistics_of_log_mel_shards_equal_the_official_loop_exactly(corpus, tmp_path):
    """Over stored log-mels (an `lms:` corpus of the same clips, float32) the crops are exact
    slices, so the statistics must agree to rounding: the unbiased std and its eps show."""
    from msm_mae_jax.data import prepare

    root, _ = corpus
    out = tmp_path / "lms"
    m = prepare.prepare(str(root), str(out), shard_size=4, workers=1, dtype="float32",
                        progress=False)  # fmt: skip
    stored = []
    for f in m["files"]:  # the source's clip order
        with open(out / f["shard"], "rb") as fh:
            fh.seek(f["offset"])
            raw = np.frombuffer(fh.read(f["frames"] * 80 * 4), "<f4")
        stored.append(raw.reshape(f["frames"], 80).T)
    n, seed = 300, 3
    c = _config(root, n)
    c.data.source = f"lms:{out}"
    stats = ip.compute_norm_stats(c, seed=seed)
    sample = ip.official_sample(seed, n, len(stored))
    mean, std = official_stats(stored, T, n, Replay(sample, stored, T))
    assert stats.mean == pytest.approx(mean, rel=1e-12)
    assert stats.std == pytest.approx(std, rel=1e-12)
    assert stats.to_dict() != m["norm_stats"]  # not the manifest's (real frames only)
    c.data.norm_stats_method = "frames"
    assert ip.compute_norm_stats(c, seed=seed).to_dict() == m["norm_stats"]


def test_indices_are_drawn_with_replacement_and_uniformly():
    s = ip.official_sample(0, 20000, 7)
    assert s.indices.min() == 0 and s.indices.max() == 6
    counts = np.bincount(s.indices, minlength=7)
    assert np.abs(counts / 20000 - 1 / 7).max() < 0.01  # 3.3 sigma of a binomial
    again = ip.official_sample(0, 20000, 7)
    np.testing.assert_array_equal(again.indices, s.indices)
    assert not np.array_equal(ip.official_sample(1, 20000, 7).indices, s.indices)
    # Fewer crops than clips still repeat clips (with replacement, as the official code).
    assert len(set(ip.official_sample(0, 50, 60).indices)) < 50


def test_an_unknown_method_is_one_line(corpus):
    c = _config(corpus[0], 8, "padded")
    with pytest.raises(ConfigError, match=r"^config\.data\.norm_stats_method='padded'; expected"):
        ip.compute_norm_stats(c)
