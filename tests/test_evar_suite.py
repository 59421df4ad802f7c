"""`msm-mae eval --suite`: every task of a folder, one results JSON each, the table; a rerun
reuses what is finished (and only that), a killed suite goes on from the unfinished task;
unreadable clips are skipped and counted in every mode, in `eval` and `finetune`."""

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from finetune_utils import synthetic_csv, write_encoder
from train_utils import xla_flags

from msm_mae_jax.cli import evaluate
from msm_mae_jax.data import synthetic
from msm_mae_jax.evaluation import tasks
from msm_mae_jax.evaluation.evar.table import TASKS, TaskSettings, write_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--seeds", "2", "--max-epochs", "8", "--no-progress"]


def _env():
    return {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}


def make_task(root, name, n, seconds, unit_sec, folds=0, multilabel=False, classes=6):
    """A built task NAME.csv + NAME.json in `root` (audio in root/audio/NAME/): synthetic
    clips of the given lengths (cycled), labels their class modulo `classes` (+ a second
    class when multi-label, comma-separated in one field as EVAR writes them); every class
    in every split or fold."""
    adir = os.path.join(root, "audio", name)
    os.makedirs(adir, exist_ok=True)
    files, labels = [], []
    for i in range(n):
        wav, y = synthetic.make_clip(i, 11, seconds[i % len(seconds)])
        files.append(os.path.join(adir, f"{i}.wav"))
        sf.write(files[-1], wav, 16000)
        names = [synthetic.CLASS_NAMES[y % classes]]
        if multilabel:
            names.append(synthetic.CLASS_NAMES[(y + 1 + i // 6) % 6])
        labels.append(",".join(names))
    path = os.path.join(root, f"{name}.csv")
    if folds:
        tasks.write_csv(path, files, labels, folds=[1 + (i // 6) % folds for i in range(n)])
    else:
        split = ["train", "train", "train", "train", "valid", "test"]
        tasks.write_csv(path, files, labels, splits=[split[(i + i // 6) % 6] for i in range(n)])
    s = TaskSettings.for_task(TASKS[name], audio_dir=".", found_clips=n, split="test")
    write_settings(os.path.join(root, f"{name}.json"), dataclasses.replace(s, unit_sec=unit_sec))
    return path


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_suite_writes_results_and_table_and_reuses_only_what_is_unchanged(tmp_path, capsys):
    root = tmp_path / "tasks"
    make_task(root, "esc50", 36, [0.5, 0.8], 0.5, folds=3)  # 0.8 s clips: random crops
    make_task(root, "fsd50k", 36, [0.4], 0.5, multilabel=True)
    make_task(root, "gtzan", 12, [0.4], 0.5, classes=2)
    for f in (root / "audio" / "gtzan").iterdir():  # a task whose audio went missing
        f.unlink()
    (root / "notes.csv").write_text("a,b\n")  # not a task: named as ignored
    out = tmp_path / "res"
    argv = ["--baseline", "logmel", "--suite", str(root), "--out", str(out), "--no-cache", *FAST]
    assert evaluate.main(argv) == 1  # a task failed, the others completed
    got = capsys.readouterr()
    assert "ignored in" in got.err and "notes.csv" in got.err
    assert "suite [2/3] gtzan: FAILED:" in got.err and "not found" in got.err
    assert (out / "gtzan.error.txt").is_file() and not (out / "gtzan.json").exists()

    results = {n: json.loads((out / f"{n}.json").read_text()) for n in ("esc50", "fsd50k")}
    esc, fsd = results["esc50"], results["fsd50k"]
    assert esc["metric"] == "accuracy" and len(esc["accuracy"]["per_fold"]) == 3
    assert fsd["metric"] == "mAP" and fsd["task"]["multilabel"] and fsd["task"]["classes"] == 6
    assert esc["settings"]["unit_sec"] == 0.5 and esc["settings"]["seeds"] == [42, 43]
    assert esc["suite"]["published"]["80x208p16x16"] == 87.1

    # The table: EVAR's column order (esc50, gtzan, fsd50k), the average over the tasks with a
    # number in both rows (esc50: fsd50k has no published number, gtzan failed), the
    # published row below.
    table = _read_csv(out / "summary.csv")
    assert table[0] == ["model", "esc50", "gtzan", "fsd50k", "average"]
    ours, pub = table[1], table[2]
    assert ours[0] == "baseline logmel" and pub[0] == "MSM-MAE 80x208p16x16 (published)"
    assert float(ours[1]) == pytest.approx(100 * esc["accuracy"]["mean"], abs=1e-4)
    assert float(ours[3]) == pytest.approx(100 * fsd["mAP"]["mean"], abs=1e-4)
    assert ours[2] == "failed" and float(ours[4]) == pytest.approx(float(ours[1]))
    assert pub[1:] == ["87.1000", "75.9000", "", "87.1000"]
    md = got.out.splitlines()
    assert md[0] == "| model | esc50 | gtzan | fsd50k | average |"
    assert md[3] == "| MSM-MAE 80x208p16x16 (published) | 87.1 | 75.9 | — | 87.1 |"
    assert "| failed |" in md[2] and any("mAP (%) for fsd50k" in x for x in md)

    # Again, with gtzan's audio back and fsd50k's rows in another order: esc50 is reused (its
    # file untouched), gtzan and fsd50k are computed; other seeds are another result too.
    make_task(root, "gtzan", 12, [0.4], 0.5, classes=2)
    rows = (root / "fsd50k.csv").read_text().splitlines()
    (root / "fsd50k.csv").write_text("\n".join(rows[:1] + rows[1:][::-1]) + "\n")
    stamp = (out / "esc50.json").stat().st_mtime_ns
    assert evaluate.main(argv) == 0
    err = capsys.readouterr().err
    assert "esc50: accuracy" in err and err.count("(reused)") == 1
    assert "gtzan: accuracy" in err and "fsd50k: mAP" in err and err.count("done in") == 2
    assert not (out / "gtzan.error.txt").exists()
    assert (out / "esc50.json").stat().st_mtime_ns == stamp
    assert evaluate.main([*argv, "--suite-tasks", "gtzan", "--seeds", "1"]) == 0
    err = capsys.readouterr().err
    assert "(reused)" not in err and "suite [1/1] gtzan: accuracy" in err
    assert json.loads((out / "gtzan.json").read_text())["settings"]["seeds"] == [42]


@pytest.mark.slow
def test_suite_killed_after_its_first_task_goes_on_from_the_unfinished_one(tmp_path):
    root = tmp_path / "tasks"
    make_task(root, "esc50", 24, [0.5], 0.5, folds=2)
    make_task(root, "spcv2", 48, [0.5, 0.9], 0.5)
    out = tmp_path / "res"
    cmd = [sys.executable, "-m", "msm_mae_jax", "eval", "--baseline", "random"]
    cmd += ["--config", f"{ROOT}/configs/msm_mae.py:tiny"]
    cmd += ["--suite", str(root), "--out", str(out), "--cache-dir", str(tmp_path / "c"), *FAST]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    first = out / "esc50.json"
    t0 = time.time()
    while not first.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() - t0 < 300, "timed out waiting for the first task"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not (out / "spcv2.json").exists()  # killed inside the second task
    before = (first.read_bytes(), first.stat().st_mtime_ns)

    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert "suite [1/2] esc50: accuracy" in r.stderr and "(reused)" in r.stderr
    assert "suite [2/2] spcv2: accuracy" in r.stderr and r.stderr.count("(reused)") == 1
    assert (first.read_bytes(), first.stat().st_mtime_ns) == before
    assert json.loads((out / "spcv2.json").read_text())["clips"]["test"] == 8
    assert "Traceback" not in r.stderr
    table = r.stdout.splitlines()
    assert table[2].startswith("| baseline random (") and table[3].startswith(
        "| MSM-MAE 80x208p16x16 (published) | 87.1 | 91.1 | 89.1 |"  # tiny's input size
    )


def _plant_bad_files(clips_dir):
    """A file of random bytes, an empty one and a float file of unscaled integers."""
    rng = np.random.default_rng(0)
    (clips_dir / "1.wav").write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    (clips_dir / "2.wav").write_bytes(b"")
    wav, _ = synthetic.make_clip(3, 5, 0.4)
    sf.write(clips_dir / "3.wav", np.round(wav * 4e5), 16000, subtype="FLOAT")


@pytest.mark.slow
def test_unreadable_clips_are_skipped_and_counted_by_eval_and_finetune(tmp_path):
    """Default --unit-sec (the header scan), task normalisation statistics, extraction and
    fine-tuning: the three bad files are skipped and counted, never the end of the command."""
    path = synthetic_csv(str(tmp_path), n=36)
    names = [r[0] for r in _read_csv(path)[1:]]
    _plant_bad_files(tmp_path / "clips")
    assert [names[i] for i in (1, 2, 3)] == [f"clips/{i}.wav" for i in (1, 2, 3)]
    out = tmp_path / "eval.json"
    cmd = [sys.executable, "-m", "msm_mae_jax", "eval", "--baseline", "random"]
    cmd += ["--config", f"{ROOT}/configs/msm_mae.py:tiny", "--task", f"csv:{path}"]
    cmd += ["--out", str(out)]
    r = subprocess.run(
        cmd + ["--no-cache", *FAST], capture_output=True, text=True, timeout=300, env=_env()
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    res = json.loads(out.read_text())
    assert res["skipped"]["count"] == 3
    assert [c["index"] for c in res["skipped"]["clips"]] == [1, 2, 3]
    assert res["settings"]["unit_sec"] == pytest.approx(0.6, abs=0.01)  # the longest readable
    assert "skipped 3 clip(s)" in r.stdout

    enc = write_encoder(str(tmp_path / "enc"))
    out = tmp_path / "ft.json"
    cmd = [sys.executable, "-m", "msm_mae_jax", "finetune", "--checkpoint", enc]
    cmd += ["--task", f"csv:{path}", "--out", str(out)]
    cmd += ["--config", f"{ROOT}/configs/finetune.py:tiny"]
    cmd += ["--config.epochs=1", "--config.mesh=(('data',1),('fsdp',1),('tensor',1))"]
    env = {**_env(), "XLA_FLAGS": xla_flags(1)}
    r = subprocess.run(
        cmd + ["--no-progress"], capture_output=True, text=True, timeout=300, env=env
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    res = json.loads(out.read_text())
    assert res["skipped"]["count"] == 3 and "skipped 3 clip(s)" in r.stdout
    sizes = res["clips"]
    assert sizes["train"] + sizes["valid"] + sizes["test"] == 33


def test_suite_mistakes_are_one_line_before_any_work(tmp_path, capsys):
    (tmp_path / "evar").mkdir()
    (tmp_path / "evar" / "esc50.csv").write_text("file_name,label,fold\na.wav,dog,1\n")
    base = ["--baseline", "logmel", "--no-progress"]
    cases = {
        "not a folder": [*base, "--suite", str(tmp_path / "nowhere")],
        "give exactly one of --task and --suite": [*base, "--suite", "x", "--task", "synthetic"],
        "--unit-sec applies to --task": [*base, "--suite", str(tmp_path), "--unit-sec", "1"],
        "no tasks; expected NAME.json": [*base, "--suite", str(tmp_path)],
        "give --suite-audio ROOT": [*base, "--suite", str(tmp_path / "evar")],
        "--suite-tasks: us8k not in": [
            *base,
            *("--suite", str(tmp_path / "evar"), "--suite-audio", str(tmp_path)),
            *("--suite-tasks", "us8k"),
        ],
        "whose NAME.json files it would replace": [
            *("--baseline", "logmel", "--suite", str(tmp_path / "evar")),
            *("--suite-audio", str(tmp_path), "--out", str(tmp_path / "evar")),
        ],
        "--norm checkpoint needs a --checkpoint": [
            *("--baseline", "random", "--norm", "checkpoint", "--suite", str(tmp_path / "evar")),
            *("--suite-audio", str(tmp_path)),
        ],
    }
    for message, argv in cases.items():
        assert evaluate.main(argv) == 2, message
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (message, err)
