"""Long recordings: clips run in chunks of whole units (waveform windows with the log-mel's
overlap), packed in calls of a bounded size, and give the features of the clip in one piece;
files are read block by block. The chunk sizes are shrunk (2 units, calls of 4 units) so
short clips cross many chunk and call boundaries; one test keeps the default sizes."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile as sf
from model_utils import small_model

from msm_mae_jax.data import audio, audio_io
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.features import chunking, embed
from msm_mae_jax.features.runtime import Runtime
from msm_mae_jax.model import artifact, mae

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = small_model()
STATS = NormStats(-6.5, 3.5)
ATOL = 1e-5
N = 2 * 208  # frames of a shrunk chunk


@pytest.fixture(scope="module")
def params():
    return mae.init_params(CFG, jax.random.key(7))["encoder"]


@pytest.fixture(scope="module")
def whole(params):
    """Every clip in one piece and one call: the unchunked path."""
    rt = Runtime(CFG, params, STATS)
    rt.chunk_units, rt.units_per_call = 10**6, 10**9
    return rt


@pytest.fixture(scope="module")
def chunked(params):
    rt = Runtime(CFG, params, STATS)
    rt.chunk_units, rt.units_per_call = 2, 4  # 2 rows of 2 units per call
    return rt


def _noise(n, seed=0):
    return (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def _lengths():
    """Samples around the chunk boundaries: a clip of S samples has 1 + S // 160 frames, so
    160 (k N - 1) is the first length with k whole chunks; 160 (k + 1) N + 40 the first with
    chunk k's window complete in a stream; 160 k N the first with one frame in chunk k, whose
    end padding reflects back into chunk k - 1. Plus a clip shorter than the reflect padding."""
    out = [150, 5000, 160 * (3 * N - 1) + 1]
    for edge in (160 * (N - 1), 160 * N, 160 * N + 40):
        out += [edge - 1, edge, edge + 1]
    return out


@pytest.mark.parametrize("norm", ["dataset", "batch"])
def test_chunked_features_equal_the_whole_clip(whole, chunked, norm):
    for i, n in enumerate(_lengths()):
        x = _noise(n, seed=i)
        want = whole.encode(x, normalization=norm)
        got = chunked.encode(x, normalization=norm)
        assert got.shape == want.shape == (whole.num_steps(audio.num_frames(n)), 320), n
        np.testing.assert_allclose(got, want, atol=ATOL, err_msg=f"{n} samples")
        np.testing.assert_allclose(
            chunked.scene_embeddings(x, normalization=norm), want.mean(0), atol=ATOL
        )
        # The stream of blocks of an odd size: windows cut while the clip arrives.
        s = chunked.stream_features(
            lambda x=x: (x[a : a + 777] for a in range(0, len(x), 777)), norm, frames=True
        )
        assert s.samples == n
        np.testing.assert_allclose(s.frames, want, atol=ATOL, err_msg=f"stream, {n} samples")
        np.testing.assert_allclose(s.scene, want.mean(0), atol=ATOL)
    # An independent path: the log-mel of the whole clip, normalised, cut into units.
    x = _noise(160 * 3 * N + 999, seed=50)
    lms = np.asarray(audio.log_mel_jax(x[None]))
    np.testing.assert_allclose(
        chunked.encode(x[None], normalization=norm),
        whole.encode_lms(lms, normalization=norm),
        atol=ATOL,
    )
    np.testing.assert_allclose(
        chunked.encode_lms(lms, normalization=norm),
        whole.encode_lms(lms, normalization=norm),
        atol=ATOL,
    )


def test_lists_batches_layers_timestamps_and_resampling(whole, chunked):
    clips = [_noise(n, seed=n) for n in (3_000, 140_000, 66_399, 300)]
    for norm in ("dataset", "batch"):  # batch: the statistics of every clip's real frames
        want = whole.encode(clips, normalization=norm, return_layers=True)
        got = chunked.encode(clips, normalization=norm, return_layers=True)
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape and g.shape[0] == CFG.depth
            np.testing.assert_allclose(g, w, atol=ATOL)
        np.testing.assert_allclose(
            chunked.scene_embeddings(clips, normalization=norm),
            whole.scene_embeddings(clips, normalization=norm),
            atol=ATOL,
        )
    batch = np.stack([_noise(70_000, seed=s) for s in range(3)])
    f_want, t_want = whole.timestamp_embeddings(batch)
    f_got, t_got = chunked.timestamp_embeddings(batch)
    np.testing.assert_allclose(f_got, f_want, atol=ATOL)
    np.testing.assert_array_equal(t_got, t_want)
    # 44.1 kHz: resampled chunk by chunk with the streaming resampler, as one piece.
    x = _noise(44_100 * 9 + 7, seed=3)
    np.testing.assert_allclose(
        chunked.encode(x, sample_rate=44_100),
        whole.encode(audio_io.resample(x, 44_100, 16_000)),
        atol=ATOL,
    )


def test_default_chunk_size(params, whole):
    """Default sizes: a 70 s clip is three chunks of 16 units."""
    rt = Runtime(CFG, params, STATS)
    assert rt.chunk_frames == 16 * 208
    x = _noise(16_000 * 70, seed=9)
    np.testing.assert_allclose(rt.encode(x), whole.encode(x), atol=ATOL)


def test_a_bounded_number_of_compilations(params):
    """Clips of 20 lengths from 1 s to 40 s compile the few (rows, units) buckets of a call,
    not one function per length. (A config of its own: the count is per config.)"""
    rt = Runtime(CFG.replace(remat=True), params, STATS)
    rt.chunk_units, rt.units_per_call = 2, 4
    for seconds in np.linspace(1.0, 40.0, 20):
        rt.scene_embeddings(_noise(int(16_000 * seconds), seed=int(seconds * 10)))
    assert rt.num_traces <= 4  # rows 1 or 2 x units 1 or 2


def test_windows_of_a_stream_are_the_clip_windows():
    """The windows themselves: each is the reflect-padded clip's samples its frames see,
    whatever the block sizes."""
    for n in (1, 7, 199, 200, 201, 2 * 160 * N, 3 * 160 * N + 40, 5 * 160 * N + 123):
        x = _noise(n, seed=n).astype(np.float64)
        padded = np.pad(x, 200, mode="reflect") if n > 1 else np.full(n + 400, x[0])
        frames = audio.num_frames(n)
        for block in (1000, 10**6):
            got = list(chunking.windows((x[a : a + block] for a in range(0, n, block)), N, 208))
            assert sum(real for _, real in got) == frames
            for k, (w, real) in enumerate(got):
                first = k * N * 160  # index into `padded` of the window's first sample
                need = chunking.window_samples(real)  # the samples its real frames see
                np.testing.assert_array_equal(w[:need], padded[first : first + need])
                assert len(w) == chunking.window_samples(-(-real // 208) * 208)


def _write(path, seconds, sr, channels, seed=0):
    y = 0.2 * np.random.default_rng(seed).standard_normal((int(seconds * sr), channels))
    sf.write(path, y.astype(np.float32), sr, subtype="PCM_16")


def test_files_read_in_blocks_equal_whole_reads(tmp_path):
    for sr, ch in ((16_000, 1), (44_100, 2)):
        path = tmp_path / f"{sr}.flac"
        _write(path, 3.3, sr, ch)
        want = audio_io.load_audio(path)
        got = np.concatenate(list(audio_io.iter_blocks(path, block_frames=10_007)))
        np.testing.assert_array_equal(got, want)
    bad = np.zeros(40_000, np.float32)
    bad[30_000] = np.nan
    sf.write(tmp_path / "nan.wav", bad, 16_000, subtype="FLOAT")
    with pytest.raises(
        audio_io.AudioError, match=r"nan\.wav: 1 NaN/Inf sample value\(s\) from 1\.0"
    ):
        list(audio_io.iter_blocks(tmp_path / "nan.wav", block_frames=16_000))


def test_embed_streams_long_files(whole, chunked, tmp_path, monkeypatch):
    """A file longer than a chunk, alone in its batch, is embedded block by block (never
    loaded whole), equal to the whole file."""
    _write(tmp_path / "long.flac", 13.7, 44_100, 2, seed=1)  # 6.6 shrunk chunks
    _write(tmp_path / "short.wav", 1.5, 16_000, 1, seed=2)
    items = embed.find_audio([str(tmp_path)])
    loaded = []
    load = audio_io.load_audio
    monkeypatch.setattr(audio_io, "load_audio", lambda p, *a, **k: loaded.append(p) or load(p))
    for norm in ("dataset", "batch"):  # batch: each file its own statistics (batches of one)
        got = embed.embed_files(
            chunked, items, frames=True, normalization=norm, batch_size=1, progress=False
        )
        assert got.paths == ["long.flac", "short.wav"]
        assert [os.path.basename(p) for p in loaded] == ["short.wav"]
        loaded.clear()
        for k, (path, _) in enumerate(items):
            wav = load(path)
            f, t = whole.timestamp_embeddings(wav[None], normalization=norm)
            np.testing.assert_allclose(got.frames[k], f[0], atol=ATOL)
            np.testing.assert_allclose(got.timestamps_ms[k], t[0], atol=1e-3)
            np.testing.assert_allclose(got.scene_ND[k], f[0].mean(0), atol=ATOL)


def test_embed_command_on_a_long_recording(params, whole, tmp_path):
    """The real command with the default chunk: a 40 s recording (2 chunks) read in blocks."""
    model = artifact.save_model_dir(str(tmp_path / "m"), CFG, params, STATS, source="init")
    _write(tmp_path / "long.flac", 40.0, 16_000, 1, seed=4)
    out = tmp_path / "emb.npz"
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "msm_mae_jax",
            "embed",
            "--checkpoint",
            model,
            "--out",
            str(out),
            "--no-progress",
            str(tmp_path / "long.flac"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    with np.load(out) as z:
        scene = z["scene"]
    want = whole.scene_embeddings(audio_io.load_audio(tmp_path / "long.flac"))
    np.testing.assert_allclose(scene[0], want, atol=ATOL)
