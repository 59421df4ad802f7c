"""Data sources: the spec syntax and its errors, one class per kind from `open_source`, and the
same clips for training and evaluation."""

import numpy as np
import pytest
import soundfile as sf

from configs.msm_mae import get_config
from msm_mae_jax.core.errors import DataError
from msm_mae_jax.data import audio_io, sources, synthetic


def _data(source="synthetic", **kw):
    c = get_config("tiny").data
    c.source = source
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_parse_spec():
    assert sources.parse_spec("synthetic").kind == "synthetic"
    s = sources.parse_spec("files:/data/a,*.wav,*.flac")
    assert (s.kind, s.path, s.patterns) == ("files", "/data/a", ("*.wav", "*.flac"))
    assert sources.parse_spec("files:/data/a", "*_1.wav").patterns == ("*_1.wav",)
    assert sources.parse_spec("files:/a/**/*.flac").path == "/a/**/*.flac"
    s = sources.parse_spec("tfds:speech_commands:1.0.0:train[:10%]")
    assert (s.name, s.split) == ("speech_commands:1.0.0", "train[:10%]")
    assert sources.parse_spec("tfds:crema_d").split == "train"
    assert sources.parse_spec("lms:/x").path == "/x"
    for bad in ("", "files:", "wav:/x", "synthetic:1"):
        with pytest.raises(DataError, match=f"config.data.source={bad!r} is not a data source"):
            sources.parse_spec(bad)


def test_open_source_gives_one_class_per_kind_and_names_bad_sources(tmp_path):
    src = sources.open_source("synthetic", _data(synthetic_clips=10))
    assert isinstance(src, sources.SyntheticSource) and src.total_examples == 10
    assert src.global_order and src.num_examples_per_process(4) == [3, 3, 3, 3]
    with pytest.raises(DataError, match="data.synthetic_clips=0 must be positive"):
        sources.open_source("synthetic", _data(synthetic_clips=0))
    with pytest.raises(DataError, match=f"{tmp_path}: no manifest.json"):
        sources.open_source(f"lms:{tmp_path}", _data())
    with pytest.raises(DataError, match="'tfds:no_such_dataset:train': cannot open TFDS"):
        sources.open_source("tfds:no_such_dataset:train", _data(tfds_data_dir=str(tmp_path)))
    with pytest.raises(DataError, match="is not a data source"):
        sources.open_source("mp3:/x", _data())


def test_synthetic_source_trains_and_evaluates_on_the_same_clips():
    src = sources.SyntheticSource(6, seed=3, seconds=0.5)
    load = src.training_loader(seed=0, frames=64)
    for i, wav in zip(range(6), src.iterate(range(6)), strict=True):
        ref, label = synthetic.make_clip(i, 3, 0.5)
        np.testing.assert_array_equal(wav, ref)
        np.testing.assert_array_equal(load(np.int64(17), np.int64(i)), ref)
        assert src.labels()[i] == label
    (short,) = src.iterate([2], max_seconds=0.25)
    assert len(short) == 4000 and list(src.durations()) == [0.5] * 6
    assert src.identity() != sources.SyntheticSource(6, seed=4, seconds=0.5).identity()


def test_file_source_from_spec_skips_bad_headers_and_reads_whole_clips(tmp_path):
    rng = np.random.default_rng(0)
    for name, sec, sr in (("a.wav", 0.5, 16000), ("b.flac", 1.5, 8000), ("c.wav", 0.3, 22050)):
        sf.write(tmp_path / name, 0.1 * rng.standard_normal(int(sec * sr)), sr)
    (tmp_path / "broken.wav").write_bytes(b"RIFF")
    src = sources.open_source(f"files:{tmp_path}", _data(max_clip_seconds=1.0))
    assert isinstance(src, sources.FileSource) and src.total_examples == 3
    assert list(src.report.skipped) == [str(tmp_path / "broken.wav")]
    assert [src.name(i).rsplit("/", 1)[1] for i in range(3)] == ["a.wav", "b.flac", "c.wav"]
    np.testing.assert_allclose(src.durations(), [0.5, 1.5, 0.3])
    for i, wav in enumerate(src.iterate(range(3))):
        np.testing.assert_array_equal(wav, audio_io.load_audio(src.name(i)))
    (head,) = src.iterate([1], max_seconds=0.5)
    assert len(head) == 8000  # the first 0.5 s, at 16 kHz
    # Training reads a window of the crop plus two frames, capped by max_clip_seconds.
    assert src.window_seconds(64) == pytest.approx(66 * 160 / 16000)
    assert src.window_seconds(1000) == 1.0
    files_only = sources.FileSource([str(tmp_path / "c.wav")])  # evaluation tasks: a list
    assert files_only.durations()[0] == pytest.approx(0.3)
