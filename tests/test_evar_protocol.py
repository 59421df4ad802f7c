"""EVAR's protocol against its definition: clip fitting (end padding, seeded random crops of
training clips, start crops of test clips), the statistics' clips, comma-separated labels,
early stopping on ties, and the embedding cache refusing entries that do not fit the task."""

import numpy as np
import soundfile as sf

from msm_mae_jax.data import audio, synthetic
from msm_mae_jax.evaluation import embeddings, probe
from msm_mae_jax.tasks import specs, task_audio
from msm_mae_jax.tasks.labels import encode_labels
from msm_mae_jax.tasks.splits import Fold
from msm_mae_jax.tasks.task import Task


def test_fit_length_pads_at_the_end_and_crops_where_asked():
    x = np.arange(1, 6, dtype=np.float32)
    np.testing.assert_array_equal(task_audio.fit_length(x, 8), [1, 2, 3, 4, 5, 0, 0, 0])
    np.testing.assert_array_equal(task_audio.fit_length(x, 5), x)
    np.testing.assert_array_equal(task_audio.fit_length(x, 3), [1, 2, 3])
    np.testing.assert_array_equal(task_audio.fit_length(x, 3, start=2), [3, 4, 5])
    # EVAR's np.random.randint(n - unit): uniform over [0, n - unit), seeded per clip
    starts = [task_audio.random_crop_start(13, 8, 42, i) for i in range(400)]
    assert set(starts) == set(range(5))  # 13 - 8 = 5 positions, never the last window
    counts = np.bincount(starts)
    assert counts.min() > 50  # 80 expected each
    assert starts == [task_audio.random_crop_start(13, 8, 42, i) for i in range(400)]
    assert starts != [task_audio.random_crop_start(13, 8, 43, i) for i in range(400)]
    assert task_audio.random_crop_start(8, 8, 42, 0) == 0  # not longer: no crop


def _task(tmp_path, seconds, folds=None):
    """Synthetic clips of the given lengths; a `fold` or a train/valid/test split column."""
    files, labels = [], []
    for i, s in enumerate(seconds):
        wav, y = synthetic.make_clip(i, 3, s)
        files.append(str(tmp_path / f"{i}.wav"))
        sf.write(files[-1], wav, 16000)
        labels.append(synthetic.CLASS_NAMES[y % 2])
    n = len(seconds)
    if folds:
        path = specs.write_csv(str(tmp_path / "t.csv"), files, labels, folds=folds)
    else:
        split = ["train", "train", "valid", "test"]
        path = specs.write_csv(
            str(tmp_path / "t.csv"), files, labels, splits=[split[i % 4] for i in range(n)]
        )
    return specs.parse_task(f"csv:{path}")


def test_views_are_start_crops_for_test_and_seeded_windows_for_training(tmp_path):
    seconds = [0.3, 0.7, 0.5, 0.9] * 3  # unit 0.5 s: 0.7 and 0.9 s clips are cropped
    task = _task(tmp_path, seconds)
    S = 8000
    wavs = list(task.source.iterate(range(len(task))))
    test, train = task_audio.task_views(task)
    np.testing.assert_array_equal(test, [i % 4 == 3 for i in range(12)])
    np.testing.assert_array_equal(train, ~test)

    def starts(clips):
        out = {}
        for i, views, row, n in clips.rows(task_audio.extraction_plan(task), "t"):
            w = wavs[i]
            assert n == min(len(w), S) and row.shape == (S,)
            if len(w) <= S:  # one row for every view: the clip, zeros after it
                assert views == ((task_audio.TEST,) if test[i] else (task_audio.TRAIN,))
                np.testing.assert_array_equal(row, np.pad(w, (0, S - len(w))))
                continue
            if views == (task_audio.TEST,):
                np.testing.assert_array_equal(row, w[:S])
                continue
            # the training fit: the window at the clip's seeded start in [0, len - S)
            s = task_audio.random_crop_start(len(w), S, clips.crop_seed, i)
            assert views == (task_audio.TRAIN,) and 0 <= s < len(w) - S
            np.testing.assert_array_equal(row, w[s : s + S])
            out[i] = s
        return out

    a = starts(task_audio.Clips(task, 0.5, progress=False, crop_seed=42))
    assert sorted(a) == [1, 5, 9]  # the long training clips (0.7 s), not the 0.9 s test ones
    assert len(set(a.values())) > 1  # not one fixed offset
    b = starts(task_audio.Clips(task, 0.5, progress=False, crop_seed=42))
    assert a == b  # reproducible
    c = starts(task_audio.Clips(task, 0.5, progress=False, crop_seed=7))
    assert c != a


def test_fold_tasks_embed_long_clips_in_both_fits(tmp_path):
    """A clip tested in one fold and trained on in another: its test fit in the main rows,
    its training fit in the training rows; logmel statistics checked against numpy."""
    seconds = [0.5, 0.8] * 8
    task = _task(tmp_path, seconds, folds=[1 + (i // 2) % 2 for i in range(16)])
    clips = task_audio.Clips(task, 0.5, progress=False, crop_seed=42)
    feats = embeddings.logmel_features(clips, task_audio.extraction_plan(task), batch_size=4)
    np.testing.assert_array_equal(feats.alt_index, np.arange(1, 16, 2))
    wavs = list(task.source.iterate(range(16)))

    def stats(w):  # per-band mean/std over the frames centred inside the audio
        lms = np.asarray(audio.log_mel_jax(np.asarray(w, np.float32)), np.float64)
        lms = lms[:, np.arange(lms.shape[1]) * 160 < 8000]
        return np.concatenate([lms.mean(1), lms.std(1)])

    test_fit = np.stack([stats(w[:8000]) for w in wavs])
    s = [task_audio.random_crop_start(len(w), 8000, 42, i) for i, w in enumerate(wavs)]
    train_fit = np.stack([stats(w[s[i] : s[i] + 8000]) for i, w in enumerate(wavs)])
    np.testing.assert_allclose(feats["logmel"], test_fit, atol=2e-3)
    np.testing.assert_allclose(feats.train_rows("logmel"), train_fit, atol=2e-3)
    assert np.abs(train_fit - test_fit)[1::2].max() > 0.1  # the fits differ


def test_norm_stats_clips_are_the_first_folds_training_clips():
    idx = np.arange(20)
    fold_task = Task(
        "t",
        None,
        idx % 2,
        ["a", "b"],
        False,
        [
            Fold("fold1", idx[5:17], idx[17:], idx[:5]),
            Fold("fold2", idx[:15], idx[15:17], idx[17:]),
        ],
    )
    np.testing.assert_array_equal(task_audio.norm_stats_indices(fold_task, 0), idx[5:])
    got = task_audio.norm_stats_indices(fold_task, 0, limit=6)
    assert len(got) == 6 and set(got) <= set(idx[5:]) and np.all(np.diff(got) > 0)
    np.testing.assert_array_equal(got, task_audio.norm_stats_indices(fold_task, 0, limit=6))
    split_task = Task(
        "t", None, idx % 2, ["a", "b"], False, [Fold("split", idx[:12], idx[12:15], idx[15:])]
    )
    np.testing.assert_array_equal(task_audio.norm_stats_indices(split_task, 0), idx[:12])
    assert task_audio.NORM_STATS_CLIPS == 40 * 128  # EVAR: batches of 128 until >= 5,000


def test_comma_separated_labels_and_rows_without_a_split(tmp_path):
    y, names, multi = encode_labels(["a,b", "b", " c ; a ", "c"], "w")
    assert multi and names == ["a", "b", "c"]
    np.testing.assert_array_equal(y, [[1, 1, 0], [0, 1, 0], [1, 0, 1], [0, 0, 1]])
    y, names, multi = encode_labels(["dog", "cat", "dog"], "w")
    assert not multi and names == ["cat", "dog"] and list(y) == [1, 0, 1]
    # EVAR's CSV: labels quoted in one field, an unnamed index column, a row with no split
    for i in range(5):
        sf.write(tmp_path / f"{i}.wav", np.zeros(1600, np.float32), 16000)
    (tmp_path / "fsd.csv").write_text(
        ',file_name,label,split\n0,0.wav,"Bark,Dog",train\n1,1.wav,Dog,train\n'
        '2,2.wav,"Dog,Bark",valid\n3,3.wav,Bark,test\n4,4.wav,Cat,\n'
    )
    task = specs.parse_task(f"csv:{tmp_path / 'fsd.csv'}")
    assert task.multilabel and task.class_names == ["Bark", "Dog"] and len(task) == 4
    np.testing.assert_array_equal(task.y, [[1, 1], [0, 1], [1, 1], [1, 0]])


def test_early_stopping_counts_a_tie_as_better():
    """Separable data: validation accuracy reaches 1.0 and stays there, every epoch ties; EVAR
    keeps the latest tie and restarts its patience, so training runs to the epoch cap."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    x = (rng.normal(size=(300, 4)) + 6.0 * y[:, None]).astype(np.float32)
    r = probe.linear_probe(
        x[:200],
        y[:200],
        x[200:250],
        y[200:250],
        x[250:],
        y[250:],
        patience=3,
        max_epochs=30,
        lr=1e-2,
    )
    first = int(np.argmax(r.valid_curve == 1.0))
    assert first < 20 and (r.valid_curve[first:] == 1.0).all()  # ties from `first` on
    assert r.epochs_run == 30 and r.best_epoch == 30


def test_cache_entries_that_do_not_fit_the_task_are_misses(tmp_path, caplog):
    task = _task(tmp_path, [0.5] * 12)
    kw = dict(baseline="logmel", unit_sec=0.5, cache_dir=str(tmp_path / "c"), progress=False)
    feats, info = embeddings.extract(task, log=lambda m: None, **kw)
    path = info["cache_file"]
    meta = np.load(path)["__meta__"]
    x = feats["logmel"]
    plants = {  # what is planted -> what the warning says
        "has shape (11, 160); the task has 12 clips": x[:-1],
        "holds NaN or Inf": np.where(np.eye(12, 160) > 0, np.nan, x),
        "has shape (12,)": x[:, 0],
    }
    for why, bad in plants.items():
        caplog.clear()
        rows = np.zeros((0, 160), np.float32)
        np.savez(
            path,
            __meta__=meta,
            __alt_index__=np.zeros(0, np.int64),
            logmel=bad,
            **{"logmel@train": rows},
        )
        again, info = embeddings.extract(task, log=lambda m: None, **kw)
        assert not info["cache_hit"] and why in caplog.text, (why, caplog.text)
        np.testing.assert_array_equal(again["logmel"], x)
        again, info = embeddings.extract(task, log=lambda m: None, **kw)
        assert info["cache_hit"], why  # the entry was rewritten
        np.testing.assert_array_equal(again["logmel"], x)
