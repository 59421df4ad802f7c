"""Fine-tuning: data, gradients, frozen encoder = linear probe, multi-label end to end, early
stopping and the best parameters, the CLI."""

import dataclasses
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import soundfile as sf
from finetune_utils import MICRO, encoder_params, ft_config, synthetic_csv, write_encoder

from msm_mae_jax.cli import finetune as cli
from msm_mae_jax.data import audio
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.finetune import data, export, model, optimizer, run, state
from msm_mae_jax.model import mae
from msm_mae_jax.model.frames import encode_frames
from msm_mae_jax.tasks import metrics, specs
from msm_mae_jax.train import checkpoints


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return write_encoder(str(tmp_path_factory.mktemp("enc") / "encoder"))


@pytest.fixture(scope="module")
def task_csv(tmp_path_factory):
    return synthetic_csv(str(tmp_path_factory.mktemp("task")))


# ---- data -----------------------------------------------------------------------------------
def test_log_mels_equal_the_log_mel_of_each_clip():
    rng = np.random.default_rng(0)
    wavs = [rng.uniform(-0.5, 0.5, n).astype(np.float32) for n in (1, 999, 16161)]
    got = data.log_mels(wavs)
    for w, g in zip(wavs, got, strict=True):
        want = np.asarray(audio.log_mel_jax(jnp.asarray(w)))
        assert g.shape == want.shape == (80, audio.num_frames(len(w)))
        np.testing.assert_allclose(g, want, atol=2e-5)


def _store(lengths, F=4):
    # frame t of clip i holds 1000 i + t in every bin: crops can be read back
    return data.ClipStore(
        [
            np.tile(1000.0 * i + np.arange(t, dtype=np.float32), (F, 1))
            for i, t in enumerate(lengths)
        ],
        0.0,
    )


def test_train_batches_are_seeded_crops_split_over_processes():
    store = _store([30, 5, 12, 50, 8, 20, 9, 40])
    idx = np.arange(8)
    y = np.eye(8, dtype=np.float32)
    kw = dict(
        stats=NormStats(0.0, 1.0),
        seed=3,
        batch_size=4,
        crop_frames=10,
        padded_frames=16,
        time_shift=True,
    )
    one = data.TrainBatches(store, idx, y, **kw)
    assert one.steps_per_epoch == 2
    assert sorted(np.concatenate([one.epoch_order(0)])) == list(range(8))
    for step in range(5):
        x, valid, yy = one.batch(step)
        x2, valid2, _ = data.TrainBatches(store, idx, y, **kw).batch(step)
        np.testing.assert_array_equal(x, x2)  # a pure function of (seed, step)
        for r in range(4):
            i = int(np.argmax(yy[r]))  # the clip of this row
            t = store.frames(i)
            row = x[r, 0][valid[r]]
            assert valid[r, 10:].sum() == 0 and valid[r].sum() == min(t, 10)
            assert np.all(np.diff(row) == 1) and row[0] >= 1000 * i  # contiguous frames
            assert row[-1] < 1000 * i + t
            assert np.all(x[r, :, ~valid[r]] == 0)
        halves = [
            data.TrainBatches(store, idx, y, process_index=p, process_count=2, **kw).batch(step)
            for p in (0, 1)
        ]
        for k in range(3):
            np.testing.assert_array_equal(
                np.concatenate([h[k] for h in halves]), one.batch(step)[k]
            )
    shifts = {int(np.argmax(one.batch(s)[1][r])) for s in range(8) for r in range(4)}
    assert len(shifts) > 2  # clips shorter than the crop land at several offsets


def test_balanced_weights_follow_audiomae_formula():
    y = np.array([[1, 0, 1], [1, 0, 0], [0, 1, 0], [1, 1, 0]])
    w = data.balanced_weights(y, True, 3)
    count = y.sum(0)
    want = [sum(1 / (count[c] + 0.01) for c in np.flatnonzero(r)) for r in y]
    np.testing.assert_allclose(w, want)
    np.testing.assert_allclose(
        data.balanced_weights(np.array([0, 0, 0, 1]), False, 2), [1 / 3.01] * 3 + [1 / 1.01]
    )
    store = _store([10] * 4)
    b = data.TrainBatches(
        store,
        np.arange(4),
        np.eye(2, dtype=np.float32)[[0, 0, 0, 1]],
        stats=NormStats(0.0, 1.0),
        seed=0,
        batch_size=4,
        crop_frames=10,
        padded_frames=10,
        time_shift=False,
        weights=data.balanced_weights(np.array([0, 0, 0, 1]), False, 2),
    )
    drawn = np.concatenate([b.epoch_order(e) for e in range(500)])
    assert np.mean(drawn == 3) == pytest.approx(0.5, abs=0.03)  # the rare class: half the draws


def test_eval_batches_hold_whole_clips_once():
    store = _store([5, 40, 33, 100, 7])
    seen = []
    for pos, x, valid in data.eval_batches(store, [4, 1, 3, 0, 2], 2, 16, NormStats(0.0, 1.0)):
        assert x.shape[0] == 2 and x.shape[2] % 16 == 0
        for r, p in enumerate(pos):
            i = [4, 1, 3, 0, 2][p]
            assert valid[r].sum() == store.frames(i) and valid[r, : store.frames(i)].all()
            np.testing.assert_array_equal(x[r, 0, : store.frames(i)], store.lms[i][0])
            seen.append(p)
        assert not valid[len(pos) :].any()
    assert sorted(seen) == [0, 1, 2, 3, 4]


# ---- model, gradients, frozen encoder ----------------------------------------------------------
def _batch(n=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 80, 64)).astype(np.float32)
    valid = np.zeros((n, 64), bool)
    for r in range(n):
        valid[r, : 20 + 11 * (r % 4)] = True
    x[~np.broadcast_to(valid[:, None], x.shape)] = 0
    y = np.eye(3, dtype=np.float32)[np.arange(n) % 3]
    return x, valid, y


@pytest.mark.slow
def test_head_and_every_encoder_layer_receive_gradients_and_features_pool_real_steps():
    head = model.HeadConfig(3, init_std=0.1)
    params = {
        "encoder": encoder_params(),
        "head": model.init_head(jax.random.key(1), head, MICRO),
    }
    x, valid, y = _batch()

    @jax.jit
    def run(p):
        def loss(p):
            return state.loss_fn(model.logits(p, x, valid, MICRO, head), y, False)

        feats = model.clip_features(p["encoder"], x, valid, MICRO)
        cls = model.clip_features(p["encoder"], x, valid, MICRO, "cls")
        units = [
            mae.Encoder(MICRO).apply({"params": p["encoder"]}, x[:, None, :, u : u + 32]).x_BKD
            for u in (0, 32)
        ]
        return jax.grad(loss)(p), feats, encode_frames(p["encoder"], x, MICRO), cls, units

    g, f, frames, cls, units = run(params)
    norms = {k: float(optax.global_norm(v)) for k, v in g["encoder"].items()}
    assert float(optax.global_norm(g["head"])) > 0
    for k in ("patch_embed", "cls_token", "blocks_0", "blocks_1", "norm"):
        assert norms[k] > 0, k
    # clip features: the frame features [4, 4 steps, 160] averaged over the real steps
    for r in range(4):
        steps = -(-valid[r].sum() // 16)
        np.testing.assert_allclose(
            f[r], np.asarray(frames)[r, :steps].mean(0), rtol=1e-5, atol=1e-6
        )
        # [CLS] pooling: the class token of the units holding audio, averaged
        used = [np.asarray(u)[r, 0] for k, u in enumerate(units) if valid[r, 32 * k]]
        np.testing.assert_allclose(cls[r], np.mean(used, 0), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_frozen_encoder_equals_a_linear_probe_trained_the_same_way():
    """No augmentation, a frozen encoder: the fine-tuning step trains the head exactly as an
    independent optax loop on precomputed clip features does; the encoder never changes."""
    c = ft_config(
        **{
            "freeze_encoder": "true",
            "model.drop_path": "0",
            "augment.mixup": "0",
            "augment.freq_mask": "0",
            "augment.time_mask": "0",
            "augment.rrc": "false",
            "optim.weight_decay": "0.01",
            "batch_size": "4",
        }
    )
    head = model.HeadConfig.from_config(c.head, 3, MICRO)
    sched = optimizer.schedule(c, 3)
    s = state.Setup(c, MICRO, head, False, sched, 64)
    enc = encoder_params()
    st = s.init_state(enc, seed=0)
    head0 = jax.tree.map(np.asarray, st.params["head"])
    batches = [_batch(4, seed) for seed in range(5)]
    lam, perm = np.ones(4, np.float32), np.arange(4, dtype=np.int32)
    with s.activate():
        for x, valid, y in batches:
            st, _ = s.train_step(
                st, *s.global_batch(x, valid, y), s.replicated(lam), s.replicated(perm)
            )
    # the probe: features once, then AdamW on the head alone with the same schedule / decay
    features = jax.jit(lambda x, v: model.clip_features(enc, x, v, MICRO))
    feats = [np.asarray(features(x, v)) for x, v, _ in batches]
    tx = optax.chain(
        optax.scale_by_adam(b1=c.optim.b1, b2=c.optim.b2, eps=1e-8),
        optax.add_decayed_weights(0.01, mask=optimizer.weight_decay_mask),
        optax.scale_by_learning_rate(lambda k: s.lr_fn(k)),
    )

    def head_loss(p, f, y):
        return optax.softmax_cross_entropy(model.Head(head).apply({"params": p}, f), y).mean()

    h = head0
    opt = tx.init(h)
    grad = jax.jit(jax.grad(head_loss))
    for f, (_, _, y) in zip(feats, batches, strict=True):
        u, opt = tx.update(grad(h, f, y), opt, h)
        h = optax.apply_updates(h, u)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6),
        st.params["head"],
        h,
    )
    assert not np.allclose(np.asarray(h["fc"]["kernel"]), head0["fc"]["kernel"])
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(st.params["encoder"]), enc)


@pytest.mark.slow
def test_sharded_accumulated_steps_equal_one_device_steps():
    """8 devices (data 4 x fsdp 2) with 2 accumulation micro-batches = 1 device, whole batch
    (no augmentation or drop path: the loss is a mean over equal micro-batches)."""
    off = {
        "model.drop_path": "0",
        "augment.mixup": "0",
        "augment.freq_mask": "0",
        "augment.time_mask": "0",
        "augment.rrc": "false",
    }
    head = model.HeadConfig(3, init_std=0.1)
    enc = encoder_params()
    batches = [_batch(16, seed) for seed in range(2)]
    lam, perm = np.ones(16, np.float32), np.arange(16, dtype=np.int32)
    out = []
    for kw in (
        {},
        {"mesh": "(('data',4),('fsdp',2),('tensor',1))", "grad_accum_steps": "2"},
    ):
        c = ft_config(**{**off, "batch_size": "16", **kw})
        s = state.Setup(c, MICRO, head, False, optimizer.schedule(c, 2), 64)
        st = s.init_state(enc, seed=0)
        with s.activate():
            for x, valid, y in batches:
                st, m = s.train_step(
                    st, *s.global_batch(x, valid, y), s.replicated(lam), s.replicated(perm)
                )
        kernel = st.params["encoder"]["blocks_0"]["mlp"]["fc1"]["kernel"]
        out.append((jax.device_get(st.params), float(m["loss"]), len(kernel.sharding.device_set)))
    assert out[0][2] == 1 and out[1][2] == 8
    assert out[0][1] == pytest.approx(out[1][1], abs=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), out[0][0], out[1][0])


# ---- multi-label end to end ----------------------------------------------------------------
@pytest.mark.slow
def test_multilabel_task_end_to_end_with_export(tmp_path, encoder_dir):
    csv = synthetic_csv(str(tmp_path / "task"), n=36, multilabel=True)
    task = specs.parse_task(f"csv:{csv}")
    assert task.multilabel and task.num_classes == 6
    c = ft_config(**{"epochs": "3", "data.balanced": "true", "num_seeds": "2"})
    logs = []
    res = run.finetune(
        task, encoder_dir, c, str(tmp_path / "work"), log=logs.append, progress=False
    )
    assert res["metric"] == "mAP" and "accuracy" not in res
    assert len(res["mAP"]["per_seed"]) == 2 and len(res["runs"]) == 2
    assert res["mAP"]["mean"] == pytest.approx(np.mean(res["mAP"]["per_seed"]))
    assert res["mAP"]["std"] == pytest.approx(np.std(res["mAP"]["per_seed"]))
    assert res["clips"] == {"train": 24, "valid": 6, "test": 6}
    r0 = res["runs"][0]
    assert r0["steps"] == 9 and r0["fold"] == "split" and r0["seed"] == 0
    # the exported best model reproduces the test score from waveforms
    ft = export.load(r0["export"])
    assert ft.multilabel and ft.classes == task.class_names
    fold = task.folds[0]
    wavs = list(task.source.iterate(fold.test))
    scores = ft.predict(wavs)
    assert np.all((scores > 0) & (scores < 1))
    m = float(
        metrics.mean_average_precision(
            jnp.asarray(scores), jnp.asarray(task.y[fold.test], jnp.float32)
        )
    )
    assert m == pytest.approx(r0["test"], abs=1e-6)
    from msm_mae_jax.features.runtime import Runtime

    assert Runtime.load(r0["export"]).feature_dim == MICRO.feature_dim
    rows = [
        json.loads(line) for line in open(tmp_path / "work" / "split" / "seed0" / "metrics.jsonl")
    ]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 10))
    assert [r["step"] for r in rows if "valid/mAP" in r] == [3, 6, 9]
    # a second call finds every run complete
    again = run.finetune(
        task, encoder_dir, c, str(tmp_path / "work"), log=logs.append, progress=False
    )
    assert again["mAP"] == res["mAP"] and again["runs"] == res["runs"]


def _swapped_valid_task(root) -> str:
    """Two classes, a low and a high tone (easy to learn), whose validation labels are
    swapped: the better the model learns the training labels, the worse its validation score,
    while its test score (true labels) improves."""
    os.makedirs(os.path.join(root, "clips"))
    files, labels, splits = [], [], []
    for i, split in enumerate(["train"] * 16 + ["valid"] * 8 + ["test"] * 8):
        rng = np.random.default_rng(i)
        y = i % 2
        t = np.arange(int(16000 * (0.4 + 0.05 * (i // 2 % 4)))) / 16000
        f0 = rng.uniform(200, 400) if y == 0 else rng.uniform(3000, 5000)
        wav = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.01 * rng.standard_normal(len(t))
        files.append(os.path.join(root, "clips", f"{i}.wav"))
        sf.write(files[-1], wav.astype(np.float32), 16000)
        labels.append(["low", "high"][1 - y if split == "valid" else y])
        splits.append(split)
    return specs.write_csv(os.path.join(root, "task.csv"), files, labels, splits=splits)


def test_early_stopping_keeps_and_tests_the_best_parameters(tmp_path, encoder_dir):
    """Validation gets worse as training goes on (patience 1, an evaluation every epoch of 2
    steps): the run stops at the second evaluation without a better score, the best step is
    the first best one, and the test score reported and exported is the best parameters',
    not the last ones'."""
    task = specs.parse_task(f"csv:{_swapped_valid_task(str(tmp_path / 'task'))}")
    off = {"augment.mixup": "0", "augment.rrc": "false", "model.drop_path": "0"}
    off.update({"augment.freq_mask": "0", "augment.time_mask": "0"})
    c = ft_config(**{**off, "epochs": "10", "early_stop_patience": "1", "optim.lr": "3e-3"})
    res = run.finetune(
        task, encoder_dir, c, str(tmp_path / "work"), log=lambda m: None, progress=False
    )
    (r,) = res["runs"]
    run_dir = tmp_path / "work" / "split" / "seed0"
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    valid = {row["step"]: row["valid/accuracy"] for row in rows if "valid/accuracy" in row}
    assert list(valid) == list(range(2, r["steps"] + 1, 2))  # every epoch
    best = min(step for step, v in valid.items() if v == max(valid.values()))
    assert r["best_step"] == best and r["valid"] == valid[best]
    assert r["early_stopped"] and r["steps"] == best + 2 * 2 < r["total_steps"] == 20
    # the test score: the best parameters' (as exported), not the last ones'
    fold = task.folds[0]
    wavs, y = list(task.source.iterate(fold.test)), task.y[fold.test]
    ft = export.load(r["export"])
    saved = checkpoints.load_state_numpy(str(run_dir), r["steps"])[0]
    jax.tree.map(np.testing.assert_array_equal, ft.params, saved["best_params"])
    accuracy = lambda m: float(np.mean(np.argmax(m.predict(wavs), -1) == y))  # noqa: E731
    last = dataclasses.replace(ft, params=saved["params"])
    assert r["test"] == accuracy(ft) < accuracy(last), (r["test"], accuracy(last))
    assert res["accuracy"]["mean"] == r["test"]


# ---- command line ----------------------------------------------------------------------------
def _one_class_csv(root):
    csv = synthetic_csv(root)
    rows = open(csv).read().splitlines()
    body = [",".join(r.split(",")[:1] + ["dog"] + r.split(",")[2:]) for r in rows[1:]]
    with open(csv, "w") as f:
        f.write("\n".join([rows[0], *body]) + "\n")
    return csv


@pytest.mark.parametrize(
    "case,match",
    [
        ("one_class", "class 'dog'.*two classes or more"),
        ("unknown_label", "no label column 'genre'"),
        ("unknown_key", "unknown config key 'optim.no_such'"),
        ("bad_value", "bad value 'many' for config key epochs"),
        ("bad_variant", "unknown config variant 'huge'"),
        ("no_checkpoint", "--checkpoint .*missing: no such model directory"),
        ("no_workdir", "give --workdir"),
        ("bad_random_init", "unknown config variant 'nope'"),
        ("both_encoders", "not allowed with argument"),
        ("stray_argument", "unrecognized argument '--epochs=3'"),
    ],
)
def test_cli_mistakes_are_one_line_errors(case, match, tmp_path, encoder_dir, task_csv, capsys):
    # (an empty split and an unseen class: test_cli_errors, through the real commands)
    edit = {"one_class": _one_class_csv}.get(case)
    csv = edit(str(tmp_path / "t")) if edit else task_csv
    argv = ["--checkpoint", encoder_dir, "--task", f"csv:{csv}", "--out", str(tmp_path / "o.json")]
    argv += ["--config", "configs/finetune.py:tiny", "--no-progress"]
    if case == "unknown_label":
        argv += ["--label", "genre"]
    elif case == "unknown_key":
        argv += ["--config.optim.no_such=1"]
    elif case == "bad_value":
        argv += ["--config.epochs", "many"]
    elif case == "bad_variant":
        argv[argv.index("configs/finetune.py:tiny")] = "configs/finetune.py:huge"
    elif case == "no_checkpoint":
        argv[1] = str(tmp_path / "missing")
    elif case == "bad_random_init":
        argv[:2] = ["--random-init", "configs/msm_mae.py:nope"]
    elif case == "stray_argument":
        argv += ["--epochs=3"]
    elif case == "both_encoders":
        argv += ["--random-init", "tiny"]
    elif case == "no_workdir":
        argv.remove("--out")
        argv.remove(str(tmp_path / "o.json"))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error:" in line]
    assert errors == err[-1:] and err[-1].startswith("msm-mae finetune: error: "), err
    assert re.search(match, err[-1]), err[-1]


def test_cli_refuses_another_jobs_workdir(tmp_path, encoder_dir, task_csv, capsys):
    csv = task_csv
    wd = tmp_path / "work"
    wd.mkdir()
    (wd / "job.json").write_text(json.dumps({"task": "csv:other.csv"}))
    argv = ["--checkpoint", encoder_dir, "--task", f"csv:{csv}", "--workdir", str(wd)]
    assert cli.main(argv + ["--config", "tiny", "--no-progress"]) == 2
    assert "holds another fine-tuning job" in capsys.readouterr().err


def test_random_init_baseline_through_the_command(tmp_path, task_csv, capsys):
    """`finetune --random-init tiny`: the tiny model's encoder with random weights is
    fine-tuned, tested and exported; the same command again finds the run complete."""
    out = tmp_path / "ft.json"
    argv = ["--random-init", "tiny", "--task", f"csv:{task_csv}", "--out", str(out)]
    argv += [
        "--config",
        "tiny",
        "--no-progress",
        "--config.mesh=(('data',1),('fsdp',1),('tensor',1))",
    ]
    assert cli.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["model"] == "random init (tiny, seed 0)" and res["metric"] == "accuracy"
    (r,) = res["runs"]
    assert r["steps"] == r["total_steps"] == 6 and 0 <= r["test"] <= 1
    assert res["accuracy"]["mean"] == r["test"] and "accuracy (%)" in capsys.readouterr().out
    ft = export.load(r["export"])
    assert (ft.model_config.input_size, ft.model_config.embed_dim) == ((80, 208), 64)
    init = run.random_init("tiny").params
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), ft.params["encoder"], init)
    assert min(jax.tree.leaves(moved)) > 0  # every encoder array fine-tuned
    assert cli.main(argv) == 0 and json.loads(out.read_text())["runs"] == res["runs"]
    assert "holds another" not in capsys.readouterr().err


def test_a_non_finite_loss_stops_with_one_line(
    tmp_path, encoder_dir, task_csv, capsys, monkeypatch
):
    """NaN input at step 3: one line naming the step and the latest good checkpoint (step 2,
    saved after its evaluation), exit 2; that checkpoint holds finite values."""
    real = data.TrainBatches.batch

    def poisoned(self, step):
        x, valid, y = real(self, step)
        return (np.full_like(x, np.nan) if step == 2 else x), valid, y

    monkeypatch.setattr(data.TrainBatches, "batch", poisoned)
    wd = tmp_path / "work"
    argv = ["--checkpoint", encoder_dir, "--task", f"csv:{task_csv}", "--workdir", str(wd)]
    argv += ["--config", "tiny", "--no-progress", "--config.eval_every_steps=2"]
    argv += ["--config.mesh=(('data',1),('fsdp',1),('tensor',1))"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    run_dir = wd / "split" / "seed0"
    assert err[-1] == (
        "msm-mae finetune: error: [split seed 0] non-finite loss (nan) or gradient norm (nan) "
        f"at step 3; the latest good checkpoint is 2 in {run_dir / 'checkpoints'}"
    ), err[-3:]
    assert not any("Traceback" in line for line in err)
    saved = checkpoints.load_state_numpy(str(run_dir), 2)[0]
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(saved["params"]))
    assert checkpoints.Checkpointer(str(run_dir)).all_steps() == [2]


def test_config_overrides_are_typed_and_bare_variants_name_the_finetune_configs():
    c = cli.load_config(
        "tiny",
        [
            "--config.epochs=7",
            "--config.augment.rrc=false",
            "--config.mesh=(('data', 2),)",
            "--config.head.pooling",
            "cls",
        ],
    )
    assert c.epochs == 7.0 and c.augment.rrc is False and c.mesh == (("data", 2),)
    assert c.head.pooling == "cls" and c.variant == "tiny"


def test_results_of_fold_tasks_average_folds_as_the_linear_evaluation():
    from msm_mae_jax.finetune import results

    s = results.summarize(np.array([[0.5, 0.7], [0.9, 1.0]]), ["fold1", "fold2"])
    assert s["mean"] == pytest.approx(0.775) and s["per_seed"] == pytest.approx([0.7, 0.85])
    assert s["std"] == pytest.approx(np.std([0.6, 0.95]))  # over folds of the seed means
    assert s["per_fold"] == pytest.approx({"fold1": 0.6, "fold2": 0.95})
    one = results.summarize(np.array([[0.5, 0.7]]), ["split"])
    assert one["std"] == pytest.approx(0.1) and "per_fold" not in one
