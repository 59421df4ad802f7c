"""The training pipeline over every source: shapes, normalisation, valid frames, determinism,
resume, the process-independent order (hosts' batches concatenate to the one-process batch),
and the bad-input suite."""

import logging
import os
import shutil

import librosa
import numpy as np
import pytest
import soundfile as sf
from reference import librosa_log_mel

from configs.msm_mae import get_config
from msm_mae_jax.core.errors import DataError
from msm_mae_jax.data import audio, audio_io, source_base, sources, synthetic
from msm_mae_jax.data import pipeline as ip
from msm_mae_jax.data.normalization import NormStats

STATS = NormStats(-6.0, 4.0)
TOL = 1e-3  # the front end's log-mel tolerance against librosa (tests/test_audio.py)


def _config(source="synthetic", **data):
    c = get_config("tiny")
    c.batch_size = 4
    c.model.input_size = (80, 64)
    c.data.source = source
    c.data.synthetic_clips = 8
    c.data.synthetic_seconds = 0.5
    c.data.norm_stats_crops = 8
    c.data.shuffle_buffer = 16
    for k, v in data.items():
        setattr(c.data, k, v)
    return c


def _write_tone(path, seconds=0.6, sr=16000, channels=1, freq=440.0, fmt=None):
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t)
    x = np.stack([x] * channels, axis=1) if channels > 1 else x
    sf.write(path, x, sr, format=fmt)


def _take(it, n):
    return [next(it)["lms"] for _ in range(n)]


def test_synthetic_batches_are_normalised_log_mels_of_the_clips():
    # Clips (51 frames) are shorter than the crop (64): each example is a whole clip, padded.
    c = _config()
    first = next(ip.train_iterator(c, STATS))
    batch = first["lms"]
    assert batch.shape == (4, 1, 80, 64) and batch.dtype == np.float32
    assert first["frames"].dtype == np.int32 and list(first["frames"]) == [51] * 4
    # Row r holds clip order[r] of the global order (its permutation is tested on its own).
    stream = source_base.global_index_stream(8, source_base.mix_seed(int(c.seed), 1), 0, 0, 4, 4)
    order = [int(i) for _, i in stream.take(4).as_numpy_iterator()]
    assert len(set(order)) == 4
    for x, i in zip(batch[:, 0], order, strict=True):
        ref = (librosa_log_mel(synthetic.make_clip(i, 0, 0.5)[0]) - STATS.mean) / STATS.std
        assert np.abs(x[:, :51] - ref).max() <= TOL / STATS.std, i
        np.testing.assert_allclose(x[:, 51:], -STATS.mean / STATS.std)  # zero (raw) padding


def test_norm_stats_match_numpy_over_the_clips():
    # The statistics of the real frames (the official ones: tests/test_official_norm_stats.py).
    c = _config(norm_stats_method="frames")
    # 8 crops = one epoch = every clip once, whole (clips shorter than crop)
    stats = ip.compute_norm_stats(c, seed=0)
    values = np.concatenate(
        [librosa_log_mel(synthetic.make_clip(i, 0, 0.5)[0]).ravel() for i in range(8)]
    )
    assert stats.mean == pytest.approx(values.mean(), abs=2e-3)
    assert stats.std == pytest.approx(values.std(), abs=2e-3)
    c.data.norm_std, c.data.norm_mean = 3.0, -1.0
    assert ip.compute_norm_stats(c) == NormStats(-1.0, 3.0)


def test_determinism_and_resume():
    c = _config(synthetic_seconds=1.0)  # 101 frames > 64: random crops
    a = _take(ip.train_iterator(c, STATS), 5)
    b = _take(ip.train_iterator(c, STATS), 5)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    resumed = _take(ip.train_iterator(c, STATS, start_step=3), 2)  # crosses an epoch boundary
    np.testing.assert_array_equal(resumed[0], a[3])
    np.testing.assert_array_equal(resumed[1], a[4])
    c.seed = 1
    assert not np.array_equal(_take(ip.train_iterator(c, STATS), 1)[0], a[0])


def _host_batches(c, n_proc, steps, start_step=0):
    """[step][process] local batches of n_proc hosts."""
    its = [
        ip.train_iterator(c, STATS, process_index=p, process_count=n_proc, start_step=start_step)
        for p in range(n_proc)
    ]
    return [[next(it)["lms"] for it in its] for _ in range(steps)]


def _files_corpus(root):
    """6 header-valid files of 1 s (random crops), one of which holds NaN (substituted)."""
    root.mkdir()
    for i in range(5):
        _write_tone(root / f"t{i}.wav", seconds=1.0, freq=200.0 + 170 * i)
    nan = np.full(16000, 0.1, np.float32)
    nan[::7] = np.nan
    sf.write(root / "t2_nan.wav", nan, 16000, subtype="FLOAT")


@pytest.mark.parametrize("source", ["synthetic", "files"])
def test_hosts_concatenate_to_the_one_process_batch(source, tmp_path):
    # 6 clips, global batch 4: epochs straddle batches; 6 steps = 4 epochs.
    if source == "files":
        _files_corpus(tmp_path / "c")
        c = _config(f"files:{tmp_path / 'c'}")
    else:
        c = _config(synthetic_seconds=1.0, synthetic_clips=6)
    one = [b[0] for b in _host_batches(c, 1, 6)]
    assert all(np.isfinite(x).all() for x in one)
    assert len({x.tobytes() for x in one}) == 6  # the order is not trivially repeating
    for n_proc in (2, 4):
        for s, parts in enumerate(_host_batches(c, n_proc, 6)):
            assert all(x.shape == (4 // n_proc, 1, 80, 64) for x in parts)
            np.testing.assert_array_equal(np.concatenate(parts), one[s], err_msg=f"P={n_proc} {s}")
        for s, parts in enumerate(_host_batches(c, n_proc, 2, start_step=3), start=3):
            np.testing.assert_array_equal(np.concatenate(parts), one[s], err_msg=f"resume {s}")


def test_files_hosts_decode_only_their_slice(tmp_path, monkeypatch):
    _files_corpus(tmp_path / "c")
    c = _config(f"files:{tmp_path / 'c'}")
    calls = {}  # loader (one per iterator; prefetch threads may outlive the loop) -> positions
    real = sources._CropReader.row

    def spy(self, pos, i, out):
        calls.setdefault(id(self), []).append(int(pos))
        return real(self, pos, i, out)

    monkeypatch.setattr(sources._CropReader, "row", spy)
    its = [
        ip.train_iterator(c, STATS, process_index=p, process_count=2, start_step=2) for p in (0, 1)
    ]
    for it in its:
        _take(it, 3)
        assert [os.path.basename(q) for q in it.skip_report.skipped] == ["t2_nan.wav"]
    # Global batch 4, 2 per host: host p owns the positions g with (g % 4) // 2 == p, from step 2.
    owners = []
    for positions in calls.values():
        assert len(positions) >= 6 and min(positions) >= 8, positions
        hosts = {(g % 4) // 2 for g in positions}
        assert len(hosts) == 1, positions
        owners += hosts
    assert sorted(owners) == [0, 1]


def test_global_order_every_clip_once_per_epoch_and_hosts_disjoint():
    c = _config()  # 8 whole clips (0.5 s < crop), global batch 4: an epoch is 2 steps
    refs = [
        (librosa_log_mel(synthetic.make_clip(i, 0, 0.5)[0]) - STATS.mean) / STATS.std
        for i in range(8)
    ]

    def ident(x):
        errs = [np.abs(x[:, :51] - r).max() for r in refs]
        assert min(errs) < 0.01, min(errs)
        return int(np.argmin(errs))

    for n_proc in (2, 4):
        steps = _host_batches(c, n_proc, 6)  # 3 epochs
        ids = [[[ident(x) for x in part[:, 0]] for part in parts] for parts in steps]
        for s in range(6):  # within a global batch the hosts read different clips
            flat = [i for part in ids[s] for i in part]
            assert len(set(flat)) == 4, ids[s]
        for e in range(3):  # every clip exactly once per epoch over all hosts
            epoch = [i for s in (2 * e, 2 * e + 1) for part in ids[s] for i in part]
            assert sorted(epoch) == list(range(8)), (n_proc, e, epoch)
        # Epochs are different permutations: host 0's first clips change between epochs.
        assert len({tuple(ids[2 * e][0]) for e in range(3)}) > 1


def test_frames_count_the_valid_frames_of_each_crop(tmp_path):
    # 0.3 s and 0.5 s clips are shorter than the 64-frame crop: whole clip, then zero padding
    # (normalised: -mean/std); 1 s and 2 s clips fill the crop.
    root = tmp_path / "c"
    root.mkdir()
    lengths = {"a.wav": 0.3, "b.wav": 0.5, "c.wav": 1.0, "d.wav": 2.0}
    for i, (name, sec) in enumerate(lengths.items()):
        _write_tone(root / name, seconds=sec, freq=300.0 + 100 * i)
    c = _config(f"files:{root}")
    for batch in [next(ip.train_iterator(c, STATS, start_step=s)) for s in (0, 1)]:  # 2 epochs
        frames = batch["frames"]
        assert sorted(frames) == [31, 51, 64, 64], frames
        for x, t in zip(batch["lms"][:, 0], frames, strict=True):
            np.testing.assert_array_equal(x[:, t:], -STATS.mean / STATS.std)
            assert (x[:, t - 1] != -STATS.mean / STATS.std).any()  # the clip's last frame


def test_files_source_mixed_formats_rates_channels(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    _write_tone(root / "a.wav", sr=16000)
    _write_tone(root / "sub" / "b.flac", sr=48000, channels=2, freq=880)
    _write_tone(root / "c.ogg", sr=8000, freq=300, seconds=1.2)
    _write_tone(root / "sub" / "d.wav", sr=22050, freq=1000, seconds=0.3)
    (root / "notes.txt").write_text("not audio and not an audio extension: ignored")
    c = _config(f"files:{root}")
    assert ip.count_clips(c) == 4
    it = ip.train_iterator(c, STATS)
    batches = _take(it, 3)
    assert all(b.shape == (4, 1, 80, 64) and np.isfinite(b).all() for b in batches)
    assert it.skip_report.count == 0
    np.testing.assert_array_equal(
        _take(ip.train_iterator(c, STATS, start_step=2), 1)[0], batches[2]
    )
    c.data.file_pattern = "*.flac"
    assert ip.count_clips(c) == 1
    assert ip.count_clips(_config(f"files:{root},sub/*")) == 2
    assert ip.count_clips(_config(f"files:{root}/**/*.wav")) == 2
    # Crops longer than every clip and as many as clips: the statistics of the 4 whole clips,
    # against numpy over librosa's log-mels of the files read and resampled by librosa.
    c = _config(f"files:{root}", norm_stats_crops=4, norm_stats_method="frames")
    c.model.input_size = (80, 128)
    stats = ip.compute_norm_stats(c)
    values = np.concatenate(
        [
            librosa_log_mel(librosa.load(p, sr=16000, res_type="soxr_hq")[0]).ravel()
            for p in sorted(root.rglob("*.*"))
            if p.suffix != ".txt"
        ]
    )
    assert stats.mean == pytest.approx(values.mean(), abs=TOL)
    assert stats.std == pytest.approx(values.std(), abs=TOL)


def test_files_source_over_fsdd_matches_librosa(fsdd_dir, tmp_path):
    names = ["3_jackson_0.wav", "5_theo_1.wav"]  # 8 kHz recordings, resampled to 16 kHz
    for n in names:
        shutil.copy(fsdd_dir / n, tmp_path / n)
    refs = [
        librosa_log_mel(librosa.load(tmp_path / n, sr=16000, res_type="soxr_hq")[0]) for n in names
    ]
    assert refs[0].shape[1] != refs[1].shape[1]
    c = _config(f"files:{tmp_path}")
    c.model.input_size = (80, 256)  # longer than both clips: every crop is a whole clip
    # Evaluation reads the whole clips through the same source.
    src = sources.open_source(c.data.source, c.data)
    for ref, wav in zip(refs, src.iterate(range(2)), strict=True):
        np.testing.assert_allclose(audio.log_mel(wav).numpy(), ref, atol=2e-3)
    batch = next(ip.train_iterator(c, STATS))  # 4 rows = both clips, twice
    for x, t in zip(batch["lms"][:, 0], batch["frames"], strict=True):
        (ref,) = [r for r in refs if r.shape[1] == t]
        np.testing.assert_allclose(x[:, :t], (ref - STATS.mean) / STATS.std, atol=2e-3)


def test_tfds_source_via_local_builder(fsdd_dir, tmp_path):
    from msm_mae_jax.data.tfds_audio_folder import build_audio_folder

    src_dir = tmp_path / "src"
    src_dir.mkdir()
    for n in [
        "0_george_0.wav",
        "1_george_0.wav",
        "2_george_0.wav",
        "0_lucas_1.wav",
        "1_lucas_1.wav",
    ]:
        shutil.copy(fsdd_dir / n, src_dir / n)
    build_audio_folder(str(src_dir), str(tmp_path / "tfds"), label_from="prefix")
    c = _config("tfds:audio_folder:train", tfds_data_dir=str(tmp_path / "tfds"))
    assert ip.count_clips(c) == 5
    a = _take(ip.train_iterator(c, STATS), 3)
    assert all(b.shape == (4, 1, 80, 64) and np.isfinite(b).all() for b in a)
    np.testing.assert_array_equal(_take(ip.train_iterator(c, STATS, start_step=2), 1)[0], a[2])
    # Two hosts read disjoint halves of the split (even_splits): 3 + 2 records.
    assert [
        ip.train_iterator(c, STATS, process_index=p, process_count=2).num_local for p in (0, 1)
    ] == [3, 2]
    # The same reader gives evaluation the clips in order (one per source file).
    src = sources.open_source(c.data.source, c.data)
    wavs = list(src.iterate(range(5)))
    refs = [audio_io.load_audio(p) for p in sorted(src_dir.glob("*.wav"))]
    assert sorted(w.tobytes() for w in wavs) == sorted(r.tobytes() for r in refs)
    assert src.name(4) == "tfds:audio_folder train[4]" and src.durations() is None
    c.data.tfds_audio_key = "wave"
    with pytest.raises(DataError, match="'wave'"):
        ip.count_clips(c)


# ---- bad input ---------------------------------------------------------------------------------


def _bad_corpus(root):
    root.mkdir()
    _write_tone(root / "good_16k.wav", seconds=0.8)
    _write_tone(root / "stereo_48k.flac", sr=48000, channels=2, seconds=0.7)
    _write_tone(root / "mono_8k.wav", sr=8000, seconds=0.9)
    sf.write(root / "silent.wav", np.zeros(8000), 16000)
    sf.write(root / "long.wav", np.random.default_rng(0).uniform(-0.1, 0.1, 16000 * 60), 16000)
    (root / "empty.wav").write_bytes(b"")
    (root / "text.wav").write_text("this is not audio " * 50)
    good = (root / "good_16k.wav").read_bytes()
    (root / "corrupt_header.wav").write_bytes(b"RIFX" + good[4:40])
    sf.write(root / "zero.wav", np.zeros(0), 16000)
    sf.write(root / "one_sample.wav", np.zeros(1), 16000)
    nan = np.full(8000, 0.1, np.float32)
    nan[100] = np.nan
    sf.write(root / "nan.wav", nan, 16000, subtype="FLOAT")
    inf = np.full(8000, 0.1, np.float32)
    inf[5] = np.inf
    sf.write(root / "inf.wav", inf, 16000, subtype="FLOAT")
    _write_tone(root / "noperm.wav")
    os.chmod(root / "noperm.wav", 0)
    return {"good_16k.wav", "stereo_48k.flac", "mono_8k.wav", "silent.wav", "long.wav"}


def test_bad_files_are_skipped_counted_and_never_reach_the_model(tmp_path, caplog):
    root = tmp_path / "bad"
    usable = _bad_corpus(root)
    c = _config(f"files:{root}", max_clip_seconds=30.0)
    is_root = os.geteuid() == 0  # root reads anything
    with caplog.at_level(logging.WARNING):
        # NaN/Inf files pass the cheap header check; they are caught when decoded.
        assert ip.count_clips(c) == len(usable) + 2 + is_root
        it = ip.train_iterator(c, STATS)
        batches = _take(it, 4)
    assert all(np.isfinite(b).all() and b.shape == (4, 1, 80, 64) for b in batches)
    skipped = {os.path.basename(p) for p in it.skip_report.skipped}
    expected = {"empty.wav", "text.wav", "corrupt_header.wav", "zero.wav", "one_sample.wav"}
    if not is_root:
        expected.add("noperm.wav")
    # NaN/Inf pass the header check: caught when decoded (16 elements: every file read).
    # Exactly these: a usable file skipped (silent, long, 8 kHz, stereo) is a failure too.
    assert skipped == expected | {"nan.wav", "inf.wav"}
    for name in ("empty.wav", "text.wav", "nan.wav"):
        assert any(name in r.getMessage() for r in caplog.records), name
    assert "skipped" in it.skip_report.summary()
    # Evaluation reads of the same source name the file instead of skipping a labelled clip.
    src = sources.open_source(c.data.source, c.data)
    nan_index = [os.path.basename(p) for p in src.paths].index("nan.wav")
    with pytest.raises(audio_io.AudioError, match=r"nan\.wav: .*NaN/Inf"):
        list(src.iterate([nan_index]))


def test_decode_failures_are_substituted_deterministically(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    for i in range(3):
        _write_tone(root / f"ok{i}.wav", freq=300 + 200 * i)
    nan = np.full(8000, 0.1, np.float32)
    nan[:] = np.nan
    sf.write(root / "nan.wav", nan, 16000, subtype="FLOAT")
    c = _config(f"files:{root}")
    it = ip.train_iterator(c, STATS)
    a = _take(it, 3)
    assert all(np.isfinite(b).all() for b in a)
    assert [os.path.basename(p) for p in it.skip_report.skipped] == ["nan.wav"]
    np.testing.assert_array_equal(_take(ip.train_iterator(c, STATS, start_step=2), 1)[0], a[2])


def test_no_usable_audio_fails_clearly(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=f"no audio files found in {empty}"):
        ip.count_clips(_config(f"files:{empty}"))
    with pytest.raises(DataError, match="does not exist"):
        ip.count_clips(_config(f"files:{tmp_path}/missing"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.wav").write_bytes(b"")
    (bad / "b.flac").write_text("nope")
    with pytest.raises(DataError, match=r"none of the 2 audio file\(s\) is usable.*a\.wav"):
        ip.train_iterator(_config(f"files:{bad}"), STATS)


# ---- the log-mel on the accelerator ------------------------------------------------------------


@pytest.mark.parametrize("source", ["synthetic", "files"])
def test_logmel_on_device_gives_the_host_batches(source, tmp_path):
    import jax

    from msm_mae_jax.data import crops
    from msm_mae_jax.data.device_frontend import normalized_log_mel

    if source == "files":  # clips longer and shorter than the crop (padding), two rates
        root = tmp_path / "c"
        root.mkdir()
        for i, (sec, sr) in enumerate([(2.0, 16000), (0.3, 16000), (1.5, 44100), (0.9, 8000)]):
            _write_tone(root / f"t{i}.flac", seconds=sec, sr=sr, freq=200.0 + 150 * i)
        c = _config(f"files:{root}")
    else:
        c = _config(synthetic_seconds=1.0, synthetic_clips=6)
    host = ip.train_iterator(c, STATS, start_step=2)
    c.data.logmel_on_device = True
    device = ip.train_iterator(c, STATS, start_step=2)
    frontend = jax.jit(lambda w, f: normalized_log_mel(w, f, STATS))
    for _ in range(3):
        h, d = next(host), next(device)
        assert sorted(d) == ["frames", "wav"] and d["wav"].shape == (4, crops.window_samples(64))
        np.testing.assert_array_equal(d["frames"], h["frames"])
        lms = np.asarray(frontend(d["wav"], d["frames"]))
        assert lms.shape == h["lms"].shape == (4, 1, 80, 64) and lms.dtype == np.float32
        np.testing.assert_allclose(lms, h["lms"], atol=1e-4)


def test_a_process_ending_with_an_open_iterator_exits(tmp_path):
    # TF waits for the Python calls in flight when an iterator is deleted; once the
    # interpreter is finalising they can never run, so open iterators are closed at exit.
    import subprocess
    import sys

    _files_corpus(tmp_path / "c")
    script = (
        "from configs.msm_mae import get_config\n"
        "from msm_mae_jax.data import pipeline as ip\n"
        "from msm_mae_jax.data.normalization import NormStats\n"
        "c = get_config('tiny'); c.batch_size = 4; c.model.input_size = (80, 64)\n"
        f"c.data.source = 'files:{tmp_path / 'c'}'\n"
        "it = ip.train_iterator(c, NormStats(-6.0, 4.0)); next(it); print('done', flush=True)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr[-2000:]
