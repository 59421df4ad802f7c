"""Embedding extraction, baselines, cache and the evaluate.py CLI."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from msm_mae_jax.data import audio, synthetic
from msm_mae_jax.evaluation import embeddings, linear
from msm_mae_jax.evaluation.protocol import Model, Protocol
from msm_mae_jax.model.config import load_model_config
from msm_mae_jax.tasks import specs, task_audio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lms(wav):
    return np.asarray(audio.log_mel_jax(np.asarray(wav, np.float32)), np.float64)


def _fsdd_task(fsdd_dir, tmp_path, every=1):
    """Digits task: takes 0-4 test, the rest train (10% of it valid); every k-th file."""
    files = sorted(str(p) for p in fsdd_dir.glob("*.wav"))[::every]
    assert files, fsdd_dir
    names = [os.path.basename(f)[:-4].split("_") for f in files]
    splits = ["test" if int(n[2]) < 5 else "train" for n in names]
    path = specs.write_csv(str(tmp_path / "fsdd.csv"), files, [n[0] for n in names], splits)
    return specs.parse_task(f"csv:{path}")


def _synthetic_csv(tmp_path, n=48, seconds=0.5, folds=None):
    files, labels = [], []
    for i in range(n):
        wav, y = synthetic.make_clip(i, 7, seconds)
        files.append(str(tmp_path / "clips" / f"{i}.wav"))
        os.makedirs(os.path.dirname(files[-1]), exist_ok=True)
        sf.write(files[-1], wav, 16000)
        labels.append(synthetic.CLASS_NAMES[y])
    if folds:
        return specs.write_csv(
            str(tmp_path / "t.csv"), files, labels, folds=[(i // 6) % folds for i in range(n)]
        )
    splits = ["train" if i < n * 2 // 3 else "test" for i in range(n)]
    return specs.write_csv(str(tmp_path / "t.csv"), files, labels, splits=splits)


def test_norm_stats_and_logmel_features_match_numpy():
    task = specs.parse_task("synthetic:12")
    clips = task_audio.Clips(task, unit_sec=0.5, progress=False)
    wavs = [task_audio.fit_length(w, 8000) for w in task.source.iterate(range(12), 0.5)]
    lms = np.stack([_lms(w) for w in wavs])
    # statistics of the training fit: the 2 s clips cropped at their seeded random starts
    crops = [
        _lms(task_audio.fit_length(w, 8000, task_audio.random_crop_start(len(w), 8000, 0, i)))
        for i, w in zip([0, 3, 5], task.source.iterate([0, 3, 5]), strict=True)
    ]
    stats = task_audio.task_norm_stats(clips, [0, 3, 5], batch_size=2)
    assert stats.mean == pytest.approx(np.mean(crops), rel=1e-5)
    assert stats.std == pytest.approx(np.std(crops), rel=1e-4)
    stats = task_audio.task_norm_stats(clips, [0, 3, 5], batch_size=2, view=task_audio.TEST)
    assert stats.mean == pytest.approx(lms[[0, 3, 5]].mean(), rel=1e-5)
    assert stats.std == pytest.approx(lms[[0, 3, 5]].std(), rel=1e-4)
    # clips exactly unit length: the per-band mean and std of the frames centred inside the
    # clip (all but the last, centred on the end sample)
    feats = embeddings.logmel_features(clips, np.arange(12), batch_size=5)["logmel"]
    inside = lms[..., np.arange(lms.shape[-1]) * 160 < 8000]
    assert inside.shape[-1] == lms.shape[-1] - 1
    ref = np.concatenate([inside.mean(-1), inside.std(-1)], axis=1)
    np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-4)
    # padding to a longer unit leaves the statistics of the clip's own frames (almost) as they
    # were: only the frames at the edges see zeros instead of reflected audio
    longer = embeddings.logmel_features(task_audio.Clips(task, 2.0, progress=False), np.arange(12))[
        "logmel"
    ]
    assert np.median(np.abs(longer - ref)[:, :80]) < 0.5
    padded_lms = _lms(task_audio.fit_length(wavs[0], 32000))
    assert np.abs(padded_lms.mean(-1) - ref[0, :80]).max() > 3  # what counting padding does


def _chance_bar(n_test, n_classes, z):
    """Accuracy z binomial standard deviations above guessing among n_classes on n_test clips."""
    p = 1.0 / n_classes
    return p + z * math.sqrt(p * (1 - p) / n_test)


def test_logmel_baseline_on_fsdd_digits(fsdd_dir, fsdd_synthetic, tmp_path):
    task = _fsdd_task(fsdd_dir, tmp_path)
    if fsdd_synthetic:  # tests/fsdd_like.py: 6 classes x 6 speakers x takes 0-14
        assert task.folds[0].sizes() == {"train": 324, "valid": 36, "test": 180}
    else:
        assert task.folds[0].sizes() == {"train": 2430, "valid": 270, "test": 300}
    res = linear.evaluate(
        task,
        Model(baseline="logmel"),
        Protocol(seeds=(0,)),
        unit_sec=1.0,
        cache_dir=None,
        progress=False,
        log=lambda m: None,
    )
    assert res["feature_dim"] == 160
    # FSDD: per-band log-mel statistics tell the ten digits of six speakers apart (0.92).
    # The synthetic stand-in has classes built so that such statistics do not separate them
    # well, 8 kHz audio and 324 training clips (two probe steps an epoch): 0.50 (seeds 0-2:
    # 0.43-0.50). Its bar, 0.35, is 6.6 binomial standard deviations above chance (1/6).
    bar = 0.35 if fsdd_synthetic else 0.90
    assert bar > _chance_bar(res["clips"]["test"], task.num_classes, z=6)
    assert res["accuracy"]["mean"] >= bar, res["accuracy"]


def test_random_tiny_encoder_full_path_on_fsdd(fsdd_dir, tmp_path):
    every = max(1, len(list(fsdd_dir.glob("*.wav"))) // 600)  # FSDD: every 5th; stand-in: all
    task = _fsdd_task(fsdd_dir, tmp_path, every=every)
    res = linear.evaluate(
        task,
        Model(baseline="random", config=os.path.join(ROOT, "configs/msm_mae.py:tiny")),
        Protocol(seeds=(0, 1), layers="all"),
        unit_sec=1.0,
        cache_dir=None,
        progress=False,
        log=lambda m: None,
    )
    assert set(res["layers"]) == {"layer1", "layer2"}
    assert res["features"] == "layer2" and res["feature_dim"] == 5 * 64
    # Random encoder features carry what the log-mel does: both layers beat chance clearly
    # (FSDD, 60 test clips: 0.45-0.75; stand-in, 180 test clips: 0.29-0.38).
    bar = _chance_bar(res["clips"]["test"], task.num_classes, z=3)
    for name, r in res["layers"].items():
        assert len(r["per_seed"]) == 2 and r["mean"] >= bar, (name, r, bar)
    assert res["accuracy"] == res["layers"]["layer2"]
    # The statistics normalising the encoder's input: those of the log-mels of the training
    # clips (EVAR: the train split; valid is held out of it here) in their training fit to
    # the 1 s unit (end padding, or the crop seeded by (first seed, clip index)).
    train = task.folds[0].train
    wavs = task.source.iterate(list(train), max_seconds=None)
    fitted = [
        task_audio.fit_length(w, 16000, task_audio.random_crop_start(len(w), 16000, 0, i))
        for i, w in zip(train, wavs, strict=True)
    ]
    lms = _lms(np.stack(fitted))
    stats = res["settings"]["norm_stats"]
    assert stats["mean"] == pytest.approx(lms.mean(), rel=1e-4)
    assert stats["std"] == pytest.approx(lms.std(), rel=1e-4)


def test_cache_hit_skips_extraction(tmp_path, monkeypatch):
    task = specs.parse_task(f"csv:{_synthetic_csv(tmp_path)}")
    kw = dict(
        model=Model(baseline="logmel"),
        protocol=Protocol(seeds=(0,), probe_kw={"max_epochs": 5}),
        unit_sec=0.5,
        cache_dir=str(tmp_path / "cache"),
        progress=False,
        log=lambda m: None,
    )
    first = linear.evaluate(task, **kw)
    assert not first["timing"]["cache_hit"] and os.path.isfile(first["settings"]["cache_file"])

    def no_extraction(*a, **k):
        raise AssertionError("extraction ran despite a cached result")

    with monkeypatch.context() as m:
        m.setattr(embeddings, "Clips", no_extraction)
        second = linear.evaluate(task, **kw)
        assert second["timing"]["cache_hit"] and second["accuracy"] == first["accuracy"]
        # other settings: another cache entry, so extraction is needed
        with pytest.raises(AssertionError, match="extraction ran"):
            linear.evaluate(task, **{**kw, "unit_sec": 0.4})

    # A damaged entry (cut short, then garbage) is a miss: recomputed and replaced.
    path = first["settings"]["cache_file"]
    size = os.path.getsize(path)
    for damage in (lambda f: f.truncate(size // 2), lambda f: f.write(b"\0" * size)):
        with open(path, "r+b") as f:
            damage(f)
        again = linear.evaluate(task, **kw)
        assert not again["timing"]["cache_hit"] and again["accuracy"] == first["accuracy"]
        assert linear.evaluate(task, **kw)["timing"]["cache_hit"]  # the entry was rewritten
    assert [p for p in os.listdir(tmp_path / "cache") if p.endswith(".tmp.npz")] == []


def test_cache_entry_of_a_checkpoint_is_not_reused_once_its_files_change(tmp_path):
    """The cache key holds the checkpoint's files (names, sizes, versions): a file edited in
    place (same size) or new weights written to the same path are misses and give their own
    features; unchanged files are a hit."""
    from msm_mae_jax.data.normalization import NormStats
    from msm_mae_jax.model import artifact

    cfg = load_model_config(os.path.join(ROOT, "configs/msm_mae.py:tiny"))
    path = str(tmp_path / "model")

    def write(seed):
        params = embeddings.random_runtime(cfg, NormStats(-5.0, 3.0), seed=seed)._params
        return artifact.save_model_dir(path, cfg, params, NormStats(-5.0, 3.0), source="t")

    task = specs.parse_task("synthetic:12")
    kw = dict(checkpoint=write(1), norm="checkpoint", unit_sec=0.5, progress=False)
    kw.update(cache_dir=str(tmp_path / "cache"), log=lambda m: None)
    first, info = embeddings.extract(task, **kw)
    again, info2 = embeddings.extract(task, **kw)
    assert not info["cache_hit"] and info2["cache_hit"]
    np.testing.assert_array_equal(again["final"], first["final"])
    meta = tmp_path / "model" / artifact.META_FILE
    text = meta.read_text()
    assert text.count("-5.0") == 1
    meta.write_text(text.replace("-5.0", "-4.0"))  # the stored mean, edited in place
    edited, info3 = embeddings.extract(task, **kw)
    assert not info3["cache_hit"] and info3["norm_stats"]["mean"] == -4.0
    assert np.abs(edited["final"] - first["final"]).max() > 0.01
    write(2)  # other weights at the same path
    new, info4 = embeddings.extract(task, **kw)
    assert not info4["cache_hit"] and np.abs(new["final"] - first["final"]).max() > 0.1
    assert embeddings.extract(task, **kw)[1]["cache_hit"]


def test_fold_task_reports_mean_and_std_over_folds(tmp_path):
    task = specs.parse_task(f"csv:{_synthetic_csv(tmp_path, n=60, folds=3)}")
    res = linear.evaluate(
        task,
        Model(baseline="logmel"),
        Protocol(seeds=(0, 1), probe_kw={"max_epochs": 10}),
        unit_sec=0.5,
        cache_dir=None,
        progress=False,
        log=lambda m: None,
    )
    acc = res["accuracy"]
    per_fold = np.array(list(acc["per_fold"].values()))
    assert list(acc["per_fold"]) == ["fold0", "fold1", "fold2"]
    assert acc["mean"] == pytest.approx(per_fold.mean())
    assert acc["std"] == pytest.approx(per_fold.std())
    assert "3 folds" in linear.format_table(res)


def test_argument_errors(tmp_path):
    task = specs.parse_task("synthetic:12")
    with pytest.raises(ValueError, match="exactly one"):
        embeddings.extract(task, unit_sec=0.5)
    with pytest.raises(ValueError, match="--norm checkpoint needs"):
        embeddings.extract(task, baseline="random", norm="checkpoint", unit_sec=0.5)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        embeddings.extract(task, checkpoint=str(tmp_path / "nowhere"), unit_sec=0.5)
    with pytest.raises(ValueError, match="block 3 outside 1..2"):
        embeddings.parse_layers("1,3", 2)
    assert embeddings.parse_layers("1,-1", 12) == [0, 11]


def test_unreadable_clips_are_skipped_named_and_left_out(tmp_path, capsys):
    """A corrupt WAV and a float WAV scaled as integers: both left out of every split, counted
    and named in the results and the table, the rest evaluated; through the command's entry
    point (test_cli_smoke runs a real process)."""
    from msm_mae_jax.cli import evaluate

    path = _synthetic_csv(tmp_path, n=24)
    with open(tmp_path / "clips" / "3.wav", "wb") as f:
        f.write(b"RIFF\x10\x00\x00\x00WAVEfmt not a wav file")
    wav, _ = synthetic.make_clip(20, 7, 0.5)
    sf.write(tmp_path / "clips" / "20.wav", wav * 4e5, 16000, subtype="FLOAT")
    out = tmp_path / "res.json"
    argv = ["--baseline", "logmel", "--task", f"csv:{path}", "--unit-sec", "0.5", "--seeds", "1"]
    argv += ["--max-epochs", "3", "--no-cache", "--no-progress", "--out", str(out)]
    assert evaluate.main(argv) == 0
    r = capsys.readouterr()
    assert "Traceback" not in r.err
    res = json.loads(out.read_text())
    assert res["skipped"]["count"] == 2
    by_index = {c["index"]: c for c in res["skipped"]["clips"]}
    assert sorted(by_index) == [3, 20]
    assert by_index[3]["name"].endswith("3.wav") and "cannot read audio" in by_index[3]["reason"]
    assert "far outside [-1, 1]" in by_index[20]["reason"]
    sizes = res["clips"]  # clips 0-15 train (and valid), 16-23 test: one fewer in each
    assert sizes["train"] + sizes["valid"] == 15 and sizes["test"] == 7
    (line,) = [x for x in r.out.splitlines() if x.startswith("skipped 2 clip(s)")]
    assert "3.wav" in line and "20.wav" in line


def test_cli_smoke(tmp_path):
    """evaluate.py as a process, from another folder, with the underscore spellings (a
    missing task file: test_cli_errors)."""
    out = tmp_path / "res.json"
    cmd = [
        sys.executable,
        os.path.join(ROOT, "evaluate.py"),
        "--baseline",
        "logmel",
        "--task",
        "synthetic:36",
        "--unit_sec",
        "0.5",
        "--seeds",
        "2",
        "--max_epochs",
        "5",
        "--no_cache",
        "--no_progress",
        "--out",
        str(out),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "accuracy (%)" in r.stdout and "logmel" in r.stdout
    res = json.loads(out.read_text())
    assert set(res["accuracy"]) >= {"mean", "std", "per_seed"}
    assert len(res["accuracy"]["per_seed"]) == 2
    assert res["clips"] == {"train": 25, "valid": 4, "test": 7}
    assert {"extraction_s", "probe_s"} <= set(res["timing"])


def test_checkpoint_features_with_checkpoint_norm_and_layers(tmp_path):
    """A checkpoint's features: with --norm checkpoint the stored statistics normalise the
    input (and with --norm task the task's); each `layers` feature is its own block's output
    (Runtime.encode(..., return_layers=True)) averaged over time, the last one the final
    features."""
    from msm_mae_jax.data.normalization import NormStats
    from msm_mae_jax.model import artifact

    cfg = load_model_config(os.path.join(ROOT, "configs/msm_mae.py:tiny"))
    rt = embeddings.random_runtime(cfg, NormStats(-5.0, 3.0), seed=1)
    ckpt = artifact.save_model_dir(
        str(tmp_path / "model"), cfg, rt._params, NormStats(-5.0, 3.0), source="test"
    )
    task = specs.parse_task("synthetic:24")
    run = dict(unit_sec=0.5, cache_dir=None, progress=False, log=lambda m: None)
    kw = dict(checkpoint=ckpt, **run)
    protocol = Protocol(seeds=(0,), norm="checkpoint", probe_kw={"max_epochs": 3})
    own = linear.evaluate(task, Model(checkpoint=ckpt), protocol, **run)
    assert own["settings"]["norm_stats"] == {"mean": -5.0, "std": 3.0}
    assert own["feature_dim"] == cfg.feature_dim and own["model"] == ckpt
    # 2 s clips, 0.5 s unit: test clips cropped from the start, the others (train and valid)
    # at their random starts seeded by (crop seed 42, clip index)
    test = set(task.folds[0].test.tolist())
    wav_NS = np.stack(
        [
            task_audio.fit_length(
                w, 8000, 0 if i in test else task_audio.random_crop_start(len(w), 8000, 42, i)
            )
            for i, w in enumerate(task.source.iterate(range(24)))
        ]
    )
    blocks_LND = np.asarray(rt.encode(wav_NS, normalization=(-5.0, 3.0), return_layers=True)).mean(
        -2
    )
    assert blocks_LND.shape == (cfg.depth, 24, cfg.feature_dim)
    assert np.abs(blocks_LND[0] - blocks_LND[1]).max() > 0.1
    layers, _ = embeddings.extract(task, norm="checkpoint", layers="all", **kw)
    assert sorted(layers) == ["layer1", "layer2"]
    for k in range(cfg.depth):
        np.testing.assert_allclose(layers[f"layer{k + 1}"], blocks_LND[k], rtol=1e-4, atol=1e-4)
    final, _ = embeddings.extract(task, norm="checkpoint", **kw)
    np.testing.assert_allclose(final["final"], blocks_LND[-1], rtol=1e-4, atol=1e-4)
    # --norm task: the task's statistics (those reported), not the stored ones
    feats, info = embeddings.extract(task, **kw)
    assert info["norm_stats"] != {"mean": -5.0, "std": 3.0}
    ref = rt.scene_embeddings(wav_NS, normalization=tuple(info["norm_stats"].values()))
    np.testing.assert_allclose(feats["final"], ref, rtol=1e-4, atol=1e-4)
