"""`msm-mae embed`: files, folders and globs -> a .npz of scene and frame embeddings."""

import os

import jax
import numpy as np
import pytest
import soundfile as sf
from model_utils import small_model

from msm_mae_jax.cli import embed as embed_cli
from msm_mae_jax.core.errors import DataError
from msm_mae_jax.data import audio_io
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.features import embed
from msm_mae_jax.features.runtime import Runtime
from msm_mae_jax.model import artifact, mae

CFG = small_model()
ATOL = 2e-5


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    params = mae.init_params(CFG, jax.random.key(3))["encoder"]
    path = tmp_path_factory.mktemp("model")
    return artifact.save_model_dir(str(path), CFG, params, NormStats(-6.5, 3.5), source="init")


def _tone(seconds, sr, freq=440.0):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_find_audio_files_folders_globs(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/b.wav", "d/sub/a.flac", "d/notes.txt", "x.wav", "y.ogg"):
        (tmp_path / name).write_bytes(b"")
    folder, glob_ = str(tmp_path / "d"), str(tmp_path / "*.wav")
    x = str(tmp_path / "x.wav")
    items = embed.find_audio([x, folder, glob_, str(tmp_path / "d" / "notes.txt")])
    assert [name for _, name in items] == [
        x,  # as given; the glob's match of the same file is not repeated
        "b.wav",  # relative to the folder; the folder's .txt is not audio
        os.path.join("sub", "a.flac"),
        str(tmp_path / "d" / "notes.txt"),  # a file given explicitly is tried whatever it is
    ]
    with pytest.raises(DataError, match="nope: no such file or folder"):
        embed.find_audio([str(tmp_path / "nope")])
    with pytest.raises(DataError, match=r"\*\.mp3: no audio file found"):
        embed.find_audio([str(tmp_path / "*.mp3")])


def test_plan_batches_bounds_clips_and_padded_units():
    frames = [100, 5000, 150, 900, 2000, 120, 1300]  # units of 208 frames: 1 25 1 5 10 1 7
    batches = embed.plan_batches(frames, 208, batch_size=2, max_units=12)
    assert sorted(i for b in batches for i in b) == list(range(7))
    for b in batches:
        assert len(b) <= 2
        assert len(b) == 1 or len(b) * max(-(-frames[i] // 208) for i in b) <= 12
    assert batches[0] == [0, 5]  # shortest first
    assert [5000] == [frames[i] for i in batches[-1]]  # too long to share: alone


def test_embed_cli_end_to_end(model_dir, fsdd_dir, tmp_path, capsys):
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    stereo = _tone(1.3, 44100)
    sf.write(folder / "sub" / "stereo.wav", np.stack([stereo, stereo], axis=1), 44100)
    (folder / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    files = [str(fsdd_dir / "0_george_0.wav"), str(fsdd_dir / "5_jackson_3.wav")]
    glob_ = str(fsdd_dir / "3_theo_1[0-2].wav")
    out = tmp_path / "res" / "emb.npz"
    argv = ["--checkpoint", model_dir, "--out", str(out), "--frames", "--batch-size", "2"]
    assert embed_cli.main([*argv, *files, str(folder), glob_, files[0]]) == 0
    captured = capsys.readouterr()
    assert "embedded 6 of 7 file(s)" in captured.out and "skipped 1: corrupt.wav" in captured.out
    assert "corrupt.wav" in captured.err  # the reason, on stderr

    z = np.load(out)
    glob_files = sorted(str(p) for p in fsdd_dir.glob("3_theo_1[0-2].wav"))
    names = [*files, os.path.join("sub", "stereo.wav"), *glob_files]
    assert list(z["paths"]) == names
    assert list(z["skipped_paths"]) == ["corrupt.wav"] and "corrupt" in z["skipped_reasons"][0]
    assert z["scene"].dtype == np.float32 and z["scene"].shape == (6, CFG.feature_dim)
    assert z["frame_offsets"].dtype == np.int64 and z["frame_offsets"].shape == (7,)
    assert z["frames"].shape == (z["frame_offsets"][-1], CFG.feature_dim)
    assert z["timestamps_ms"].shape == (z["frame_offsets"][-1],)
    assert os.listdir(out.parent) == ["emb.npz"]  # no temporary file left

    rt = Runtime.load(model_dir)
    paths = [*files, str(folder / "sub" / "stereo.wav"), *glob_files]
    for i, path in enumerate(paths):
        wav, sr = sf.read(path, dtype="float32")
        if i == 2:  # stereo 44.1 kHz: the two channels' mean, resampled to 16 kHz
            assert sr == 44100 and wav.shape == (len(stereo), 2)
            wav = wav.mean(axis=1)
        else:  # the FSDD files are 8 kHz mono
            assert sr == 8000 and wav.ndim == 1
        feats, ts = rt.timestamp_embeddings(wav[None], sample_rate=sr)
        a, b = z["frame_offsets"][i], z["frame_offsets"][i + 1]
        np.testing.assert_allclose(z["frames"][a:b], feats[0], atol=ATOL, err_msg=path)
        np.testing.assert_allclose(z["timestamps_ms"][a:b], ts[0], atol=1e-3, err_msg=path)
        np.testing.assert_allclose(z["scene"][i], feats[0].mean(axis=0), atol=ATOL, err_msg=path)


def test_embed_without_frames_and_all_bad(model_dir, tmp_path, capsys):
    sf.write(tmp_path / "a.flac", _tone(0.5, 22050), 22050)
    out = tmp_path / "emb.npz"
    base = ["--checkpoint", model_dir, "--out", str(out), "--no-progress"]
    assert embed_cli.main([*base, str(tmp_path / "a.flac")]) == 0
    z = np.load(out)
    assert set(z.files) == {"paths", "scene", "skipped_paths", "skipped_reasons"}
    want = Runtime.load(model_dir).scene_embeddings(audio_io.load_audio(tmp_path / "a.flac"))
    np.testing.assert_allclose(z["scene"][0], want, atol=ATOL)
    capsys.readouterr()
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    assert embed_cli.main([*base, str(tmp_path / "bad.wav")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "none of the 1 input file(s) is usable" in err[-1] and "bad.wav" in err[-1]
    np.testing.assert_array_equal(np.load(out)["scene"], z["scene"])  # the old file is intact
