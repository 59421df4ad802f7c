"""Audio file reading: formats, rates, channels, windows of long files, and every bad input."""

import os
import struct

import numpy as np
import pytest
import soundfile as sf
import soxr

from msm_mae_jax.data import audio, audio_io
from msm_mae_jax.data.audio_io import AudioError, load_audio

SR = 16000


def tone(seconds: float, sr: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    y = 0.5 * np.sin(2 * np.pi * freq * t)
    if channels > 1:
        y = np.stack([y * (c + 1) / channels for c in range(channels)], axis=1)
    return y.astype(np.float32)


def peak_hz(y: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    return float(np.argmax(spec) * sr / y.size)


def write_pcm16_wav_header(path, frames: int, sr: int) -> None:
    """A valid mono int16 WAV of `frames` frames as a sparse file: header only, data is holes."""
    data_bytes = frames * 2
    header = b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sr, sr * 2, 2, 16)
    header += b"data" + struct.pack("<I", data_bytes)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + data_bytes)  # zeros, allocated lazily by the filesystem


# ---------------------------------------------------------------------------------- good files


def test_wav_16k_mono_roundtrip(tmp_path):
    y = tone(0.5, SR)
    sf.write(tmp_path / "a.wav", y, SR, subtype="PCM_16")
    out = load_audio(tmp_path / "a.wav")
    assert out.dtype == np.float32 and out.shape == y.shape
    np.testing.assert_allclose(out, y, atol=1 / 32768)  # int16 quantisation only


def test_stereo_is_channel_mean(tmp_path):
    y = tone(0.5, SR, channels=2)
    sf.write(tmp_path / "st.wav", y, SR, subtype="FLOAT")
    out = load_audio(tmp_path / "st.wav")
    assert out.shape == (y.shape[0],)
    np.testing.assert_allclose(out, y.mean(axis=1), atol=1e-7)


@pytest.mark.parametrize("sr_in", [8000, 22050, 44100, 48000])
def test_other_rates_are_resampled_with_soxr(tmp_path, sr_in):
    y = tone(1.0, sr_in, freq=1000.0)
    sf.write(tmp_path / "r.wav", y, sr_in, subtype="FLOAT")
    out = load_audio(tmp_path / "r.wav")
    assert out.dtype == np.float32 and abs(out.size - SR) <= 1
    np.testing.assert_allclose(out, soxr.resample(y, sr_in, SR), atol=1e-6)
    assert abs(peak_hz(out, SR) - 1000.0) <= 2.0  # the pitch survives (independent check)
    # Interior amplitude preserved (no gain error), away from the filter's edge transients.
    assert abs(np.abs(out[2000:-2000]).max() - 0.5) < 0.01


def test_flac_is_lossless_and_ogg_decodes(tmp_path):
    y = tone(1.0, 48000, freq=2000.0, channels=2)
    sf.write(tmp_path / "a.flac", y, 48000, subtype="PCM_24")
    sf.write(tmp_path / "a.ogg", y, 48000, format="OGG", subtype="VORBIS")
    ref = soxr.resample(y.mean(axis=1), 48000, SR)
    flac = load_audio(tmp_path / "a.flac")
    np.testing.assert_allclose(flac, ref, atol=1e-5)
    ogg = load_audio(tmp_path / "a.ogg")
    assert abs(ogg.size - ref.size) <= 1 and abs(peak_hz(ogg, SR) - 2000.0) <= 2.0
    assert np.corrcoef(ogg[: ref.size][1000:-1000], ref[: ogg.size][1000:-1000])[0, 1] > 0.99


def test_silent_clip_loads_and_gives_finite_log_mel(tmp_path):
    sf.write(tmp_path / "silent.wav", np.zeros(SR, np.float32), SR)
    out = load_audio(tmp_path / "silent.wav")
    assert out.shape == (SR,) and not out.any()
    lms = audio.log_mel(out).numpy()
    assert np.isfinite(lms).all() and lms.shape == (80, 101)


def test_audio_info_and_extensions(tmp_path):
    sf.write(tmp_path / "x.flac", tone(0.25, 44100, channels=2), 44100)
    info = audio_io.audio_info(tmp_path / "x.flac")
    assert info == (11025, 44100, 2) and info.seconds == pytest.approx(0.25)
    assert {".wav", ".flac", ".ogg"} <= audio_io.AUDIO_EXTENSIONS
    assert audio_io.is_audio_file("A/B.WAV") and not audio_io.is_audio_file("notes.txt")


def test_resample_contract():
    y = tone(0.1, 8000)
    np.testing.assert_array_equal(audio_io.resample(y, 8000, 8000), y)
    assert audio_io.resample(y, 8000, 16000).shape == (1600,)
    with pytest.raises(ValueError, match="positive"):
        audio_io.resample(y, 0, 16000)


# ------------------------------------------------------------------------------- long files


def test_max_seconds_window_first_or_random(tmp_path):
    # Each sample encodes its own index, so a window reveals where it was read from.
    n = 10 * SR
    ramp = (np.arange(n) % 30000).astype(np.float32) / 32768.0
    sf.write(tmp_path / "ramp.wav", ramp, SR, subtype="FLOAT")
    first = load_audio(tmp_path / "ramp.wav", max_seconds=1.0)
    np.testing.assert_array_equal(first, ramp[:SR])
    starts = []
    for seed in range(4):
        win = load_audio(tmp_path / "ramp.wav", max_seconds=1.0, rng=np.random.default_rng(seed))
        assert win.shape == (SR,)
        start = int(round(win[0] * 32768.0))
        candidates = [
            s for s in range(start, n - SR + 1, 30000) if np.array_equal(win, ramp[s : s + SR])
        ]
        assert candidates, "the window is not a contiguous slice of the file"
        starts.append(candidates[0])
    assert len(set(starts)) > 1  # random, not always the same place
    again = load_audio(tmp_path / "ramp.wav", max_seconds=1.0, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(again, load_audio(
        tmp_path / "ramp.wav", max_seconds=1.0, rng=np.random.default_rng(0)))  # fmt: skip
    # Shorter than max_seconds: the whole file.
    assert load_audio(tmp_path / "ramp.wav", max_seconds=60.0).shape == (n,)


def test_one_hour_file_is_read_by_window_only(tmp_path, monkeypatch):
    path = tmp_path / "hour.wav"
    sr = 8000
    write_pcm16_wav_header(path, 3600 * sr, sr)  # 57.6 MB on paper, nothing on disk
    assert audio_io.audio_info(path) == (3600 * sr, sr, 1)

    reads, seeks = [], []
    real_read, real_seek = sf.SoundFile.read, sf.SoundFile.seek

    def spy_read(self, frames=-1, *args, **kwargs):
        out = real_read(self, frames, *args, **kwargs)
        reads.append(len(out))
        return out

    def spy_seek(self, frames, whence=os.SEEK_SET):
        if whence == os.SEEK_SET:  # soundfile itself asks for the position with SEEK_CUR
            seeks.append(frames)
        return real_seek(self, frames, whence)

    monkeypatch.setattr(sf.SoundFile, "read", spy_read)
    monkeypatch.setattr(sf.SoundFile, "seek", spy_seek)
    starts = []
    for seed in (0, 1):
        reads.clear(), seeks.clear()
        out = load_audio(path, max_seconds=2.0, rng=np.random.default_rng(seed))
        assert out.shape == (2 * SR,) and out.dtype == np.float32 and not out.any()
        assert reads == [2 * sr]  # two seconds decoded, out of an hour
        assert 0 < seeks[0] <= 3600 * sr - 2 * sr  # the window start, chosen at random
        starts.append(seeks[0])
    assert starts[0] != starts[1]
    reads.clear()
    assert load_audio(path, max_seconds=2.0).shape == (2 * SR,)  # no rng: from the start
    assert reads == [2 * sr]


# ------------------------------------------------------------------------------ bad inputs


def assert_audio_error(path, match: str = "") -> AudioError:
    with pytest.raises(AudioError) as info:
        load_audio(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    if match:
        assert match.lower() in msg.lower(), msg
    return info.value


def test_empty_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    assert_audio_error(tmp_path / "empty.wav")
    with pytest.raises(AudioError, match="empty.wav"):
        audio_io.audio_info(tmp_path / "empty.wav")


def test_truncated_header(tmp_path):
    sf.write(tmp_path / "ok.wav", tone(0.5, SR), SR)
    (tmp_path / "cut.wav").write_bytes((tmp_path / "ok.wav").read_bytes()[:30])
    assert_audio_error(tmp_path / "cut.wav")


def test_truncated_data_keeps_what_is_there_and_says_so(tmp_path, caplog):
    """A WAV cut short (libsndfile hides it: its frame count is what is there) and a FLAC
    whose decoder loses sync part-way: read as far as they go, each file named in a warning
    (once per file), by `load_audio` and by `iter_blocks` alike; a whole file gives none."""
    y, y2 = tone(0.5, SR), tone(2.0, SR)
    sf.write(tmp_path / "ok.wav", y, SR, subtype="PCM_16")
    sf.write(tmp_path / "ok.flac", y2, SR)
    wav, flac = (tmp_path / "ok.wav").read_bytes(), (tmp_path / "ok.flac").read_bytes()
    for reader in ("load", "blocks"):  # a copy per reader: each warns of its own file
        (tmp_path / f"{reader}.wav").write_bytes(wav[: len(wav) - 2 * (y.size - 4000)])
        (tmp_path / f"{reader}.flac").write_bytes(flac[: len(flac) // 2])
    caplog.set_level("WARNING", logger="msm_mae_jax")

    def warned():
        out = [r.getMessage() for r in caplog.records]
        caplog.clear()
        return out

    out = load_audio(tmp_path / "load.wav")
    assert out.shape == (4000,)
    np.testing.assert_allclose(out, y[:4000], atol=1 / 32768)
    load_audio(tmp_path / "load.wav")  # once per file
    assert [w.split(" (")[0] for w in warned()] == [
        f"{tmp_path / 'load.wav'}: cut short: 4000 of the 8000 samples its header promises are "
        "there"
    ]
    blocks = np.concatenate(list(audio_io.iter_blocks(tmp_path / "blocks.wav", 999)))
    np.testing.assert_array_equal(blocks, out)
    assert [w.split(":")[0] for w in warned()] == [str(tmp_path / "blocks.wav")]
    flac_out = load_audio(tmp_path / "load.flac")
    assert 4096 <= flac_out.size < 16000  # whole blocks up to the lost sync
    np.testing.assert_allclose(flac_out, y2[: flac_out.size], atol=1e-4)
    assert [w.split(":")[0] for w in warned()] == [str(tmp_path / "load.flac")]
    streamed = np.concatenate(list(audio_io.iter_blocks(tmp_path / "blocks.flac", 4096)))
    assert streamed.size >= 4096
    (w,) = warned()
    assert w.startswith(f"{tmp_path / 'blocks.flac'}: cut short: ") and "fetch it again" in w
    load_audio(tmp_path / "ok.wav")
    load_audio(tmp_path / "ok.flac")
    list(audio_io.iter_blocks(tmp_path / "ok.flac", 4096))
    assert warned() == []


def test_non_audio_file_with_audio_extension(tmp_path):
    (tmp_path / "notes.flac").write_text("these are meeting notes, not audio\n" * 20)
    assert_audio_error(tmp_path / "notes.flac", match="not recognised")
    (tmp_path / "image.wav").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    assert_audio_error(tmp_path / "image.wav")


def test_missing_file(tmp_path):
    assert_audio_error(tmp_path / "nope.wav", match="No such file")


def test_permission_denied_is_reported(tmp_path, monkeypatch):
    sf.write(tmp_path / "locked.wav", tone(0.5, SR), SR)

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "locked.wav"))

    monkeypatch.setattr(audio_io.sf, "SoundFile", deny)
    assert_audio_error(tmp_path / "locked.wav", match="Permission denied")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads mode-000 files")
def test_permission_denied_chmod(tmp_path):
    path = tmp_path / "locked.wav"
    sf.write(path, tone(0.5, SR), SR)
    path.chmod(0)
    try:
        assert_audio_error(path, match="Permission denied")
    finally:
        path.chmod(0o644)


def test_zero_samples(tmp_path):
    sf.write(tmp_path / "zero.wav", np.zeros(0, np.float32), SR)
    assert sf.info(tmp_path / "zero.wav").frames == 0  # a valid header, no data
    assert_audio_error(tmp_path / "zero.wav", match="no audio samples")


@pytest.mark.parametrize("frames", [1, 2, 100])
def test_too_short(tmp_path, frames):
    sf.write(tmp_path / "short.wav", np.full(frames, 0.1, np.float32), SR)
    assert_audio_error(tmp_path / "short.wav", match="too short")
    # One STFT hop (10 ms) is the shortest clip accepted.
    sf.write(tmp_path / "hop.wav", np.full(160, 0.1, np.float32), SR)
    assert load_audio(tmp_path / "hop.wav").shape == (160,)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_samples(tmp_path, bad):
    y = tone(0.5, SR, channels=2)
    y[1234, 1] = bad
    sf.write(tmp_path / "bad.wav", y, SR, subtype="FLOAT")
    assert_audio_error(tmp_path / "bad.wav", match="NaN/Inf")
    # Also when the bad value sits inside a requested window.
    with pytest.raises(AudioError, match="bad.wav"):
        load_audio(tmp_path / "bad.wav", max_seconds=0.1)


@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE"])
def test_float_file_scaled_as_integers_is_refused(tmp_path, subtype):
    """Float samples are stored unscaled: a peak of 4e5 would inflate the normalisation std.
    Up to MAX_ABS_SAMPLE passes (a little clipping); integer PCM cannot exceed full scale."""
    y = tone(0.5, SR)  # peak 0.5
    sf.write(tmp_path / "loud.wav", y * 8e5, SR, subtype=subtype)
    assert_audio_error(tmp_path / "loud.wav", match="reach 4e+05, far outside [-1, 1]")
    sf.write(tmp_path / "hot.wav", y * 2 * audio_io.MAX_ABS_SAMPLE, SR, subtype=subtype)
    np.testing.assert_allclose(
        np.abs(load_audio(tmp_path / "hot.wav")).max(), audio_io.MAX_ABS_SAMPLE, rtol=1e-4
    )
    sf.write(tmp_path / "pcm.wav", np.clip(y * 8e5, -1, 1), SR, subtype="PCM_16")
    assert np.abs(load_audio(tmp_path / "pcm.wav")).max() <= 1.0
    with audio_io.ClipReader(tmp_path / "loud.wav") as f:  # the training crops' reader
        with pytest.raises(AudioError, match=r"loud\.wav: sample values reach 4e\+05"):
            f.read(0, 1600)
    with audio_io.ClipReader(tmp_path / "hot.wav") as f:
        assert np.abs(f.read(0, SR // 2)).max() > 1.0


def test_argument_errors(tmp_path):
    sf.write(tmp_path / "a.wav", tone(0.5, SR), SR)
    with pytest.raises(ValueError, match="max_seconds"):
        load_audio(tmp_path / "a.wav", max_seconds=0.0)
    with pytest.raises(TypeError, match="Generator"):
        load_audio(tmp_path / "a.wav", max_seconds=0.1, rng=3)


# ---------------------------------------------------------------------------- spans of a file


@pytest.mark.parametrize(
    ("sr", "channels"), [(16000, 1), (16000, 2), (8000, 1), (44100, 2), (48000, 1)]
)
def test_clip_reader_spans_are_spans_of_load_audio(tmp_path, sr, channels):
    # Training decodes only a crop's span; it must be that span of what evaluation reads.
    rng = np.random.default_rng(sr + channels)
    y = (0.2 * rng.standard_normal((int(2.3 * sr), channels))).astype(np.float32)
    sf.write(tmp_path / "x.flac", y, sr)
    whole = load_audio(tmp_path / "x.flac")
    with audio_io.ClipReader(tmp_path / "x.flac") as f:
        assert f.samples == whole.shape[0]
        for a, b in [
            (0, 5000),
            (20000, 20001),
            (1234, 30000),
            (whole.shape[0] - 7000, whole.shape[0]),
            (10, 400),
        ]:
            span = f.read(a, b)
            assert span.dtype == np.float32 and span.shape == (b - a,)
            if sr == SR:
                np.testing.assert_array_equal(span, whole[a:b])
            else:  # resampled around the span: equal up to the resampler's float32 rounding
                np.testing.assert_allclose(span, whole[a:b], atol=1e-5)


def test_clip_reader_decodes_only_the_span(tmp_path, monkeypatch):
    path = tmp_path / "hour.wav"
    write_pcm16_wav_header(path, 3600 * SR, SR)
    decoded = []
    real = audio_io._read_frames_into

    def spy(f, out):
        decoded.append(out.shape[0])
        return real(f, out)

    monkeypatch.setattr(audio_io, "_read_frames_into", spy)
    with audio_io.ClipReader(path) as f:
        assert f.samples == 3600 * SR
        assert not f.read(1800 * SR, 1800 * SR + 33680).any()
    assert decoded == [33680]


def test_clip_reader_bad_files(tmp_path):
    nan = np.full(8000, 0.1, np.float32)
    nan[4321] = np.nan
    sf.write(tmp_path / "nan.wav", nan, SR, subtype="FLOAT")
    with audio_io.ClipReader(tmp_path / "nan.wav") as f:
        assert f.read(0, 4000).shape == (4000,)  # the span holds no NaN: usable
        with pytest.raises(AudioError, match=r"nan\.wav: 1 NaN/Inf"):
            f.read(4000, 8000)
    # A cut FLAC download: the header promises 2 s, the data stops after ~1 s.
    sf.write(tmp_path / "ok.flac", 0.1 * np.random.default_rng(0).standard_normal(32000), SR)
    data = (tmp_path / "ok.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(data[: len(data) // 2])
    with audio_io.ClipReader(tmp_path / "cut.flac") as f:
        assert f.samples == 32000
        with pytest.raises(audio_io.TruncatedAudio, match=r"cut\.flac"):
            f.read(30000, 32000)
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(AudioError, match=r"text\.wav: cannot read audio"):
        audio_io.ClipReader(tmp_path / "text.wav")
