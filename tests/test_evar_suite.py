"""`msm-mae eval --suite`: every task of a folder, one results JSON each, the table; a rerun
reuses what is finished (and only that), a killed suite goes on from the unfinished task;
unreadable clips are skipped and counted in every mode, in `eval` and `finetune`."""

import csv
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from finetune_utils import MICRO, synthetic_csv, write_encoder
from train_utils import xla_flags

from msm_mae_jax.cli import evaluate
from msm_mae_jax.data import synthetic
from msm_mae_jax.evaluation import embeddings
from msm_mae_jax.tasks import specs
from msm_mae_jax.tasks.evar.table import TASKS, TaskSettings, write_settings

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
        specs.write_csv(path, files, labels, folds=[1 + (i // 6) % folds for i in range(n)])
    else:
        split = ["train", "train", "train", "train", "valid", "test"]
        specs.write_csv(path, files, labels, splits=[split[(i + i // 6) % 6] for i in range(n)])
    s = TaskSettings.for_task(TASKS[name], audio_dir=".", found_clips=n, split="test")
    write_settings(os.path.join(root, f"{name}.json"), dataclasses.replace(s, unit_sec=unit_sec))
    return path


def make_evar_task(metadata_dir, audio_root, name, n, seconds, classes=2):
    """EVAR's layout: metadata_dir/NAME.csv (`file_name,label,split`, file_name relative to
    the task's audio folder) and the clips in audio_root/NAME/<label>/; every class in every
    split (train 8, valid 2, test 2 of 12)."""
    os.makedirs(metadata_dir, exist_ok=True)
    split = ["train", "train", "train", "train", "valid", "test"]
    lines = ["file_name,label,split"]
    for i in range(n):
        wav, y = synthetic.make_clip(i, 13, seconds[i % len(seconds)])
        label = synthetic.CLASS_NAMES[y % classes]
        rel = f"{label}/{i:03d}.wav"
        os.makedirs(os.path.join(audio_root, name, label), exist_ok=True)
        sf.write(os.path.join(audio_root, name, rel), wav, 16000)
        lines.append(f"{rel},{label},{split[(i + i // 6) % 6]}")
    with open(os.path.join(metadata_dir, f"{name}.csv"), "w") as f:
        f.write("\n".join(lines) + "\n")


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_suite_writes_results_and_table_and_reuses_only_what_is_unchanged(tmp_path, capsys):
    root = tmp_path / "tasks"
    # each task its own clip length: a task run with another's would be noticed
    make_task(root, "esc50", 36, [0.5, 0.8], 0.5, folds=3)  # 0.8 s clips: random crops
    make_task(root, "fsd50k", 36, [0.4], 0.45, multilabel=True)
    make_task(root, "gtzan", 12, [0.4], 0.3, classes=2)
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
    assert fsd["settings"]["unit_sec"] == 0.45, "fsd50k ran at another task's clip length"
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
    make_task(root, "gtzan", 12, [0.4], 0.3, classes=2)
    rows = (root / "fsd50k.csv").read_text().splitlines()
    (root / "fsd50k.csv").write_text("\n".join(rows[:1] + rows[1:][::-1]) + "\n")
    stamp = (out / "esc50.json").stat().st_mtime_ns
    assert evaluate.main(argv) == 0
    err = capsys.readouterr().err
    assert "esc50: accuracy" in err and err.count("(reused)") == 1
    assert "gtzan: accuracy" in err and "fsd50k: mAP" in err and err.count("done in") == 2
    assert not (out / "gtzan.error.txt").exists()
    assert (out / "esc50.json").stat().st_mtime_ns == stamp
    gtzan = json.loads((out / "gtzan.json").read_text())
    assert gtzan["settings"]["unit_sec"] == 0.3, "gtzan ran at another task's clip length"
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


def test_suite_over_evar_metadata_csvs_each_task_its_clip_length_each_model_its_row(
    tmp_path, capsys
):
    """EVAR's own metadata CSVs with the audio in ROOT/NAME/ (the default ROOT: EVAR's
    work/16k beside evar/metadata), an 80x512 encoder: each task at the table's clip length,
    the 80x512 published row under the model's; another checkpoint with the same --out
    computes every task again, the same one reuses them."""
    meta, audio_root = tmp_path / "evar" / "metadata", tmp_path / "work" / "16k"
    make_evar_task(meta, audio_root, "spcv2", 12, [0.6, 1.3])  # unit_sec 1.0
    make_evar_task(meta, audio_root, "cremad", 12, [1.5, 2.8])  # unit_sec 2.5
    mc = dataclasses.replace(MICRO, input_size=(80, 512))
    out = tmp_path / "res"
    argv = ["--suite", str(meta), "--out", str(out), "--no-cache", *FAST]
    for seed, enc in enumerate([str(tmp_path / "enc_a"), str(tmp_path / "enc_b")]):
        write_encoder(enc, mc, seed=seed)
        assert evaluate.main(["--checkpoint", enc, *argv]) == 0
        got = capsys.readouterr()
        assert "suite [1/2] spcv2" in got.err and "suite [2/2] cremad" in got.err
        assert got.err.count("done in") == 2 and "(reused)" not in got.err, (
            f"{enc}: a task took the results of another model"
        )
        for name, unit_sec in (("spcv2", 1.0), ("cremad", 2.5)):
            r = json.loads((out / f"{name}.json").read_text())
            assert r["model"] == enc, f"{name}: results of another model"
            assert r["settings"]["unit_sec"] == unit_sec, f"{name} ran at another clip length"
            assert r["settings"]["run_name_prefix"] == "80x512p16x16"
            assert r["clips"] == {"train": 8, "valid": 2, "test": 2} and not r["skipped"]["count"]
            assert r["suite"]["task_settings"] == "EVAR table"
            assert r["suite"]["audio_dir"] == str(audio_root / name)
        table = got.out.splitlines()
        assert table[0] == "| model | spcv2 | cremad | average |"
        assert table[2].startswith(f"| {enc} | ")
        assert table[3] == "| MSM-MAE 80x512p16x16 (published) | 93.1 | 70.1 | 81.6 |"
    assert evaluate.main(["--checkpoint", enc, *argv]) == 0
    assert capsys.readouterr().err.count("(reused)") == 2


def test_a_finished_task_is_computed_again_when_its_clip_length_or_audio_changes(tmp_path, capsys):
    root = tmp_path / "tasks"
    make_task(root, "esc50", 12, [0.5], 0.5, folds=2, classes=2)
    make_task(root, "us8k", 12, [0.4], 0.4, folds=2, classes=2)
    out = tmp_path / "res"
    argv = ["--baseline", "logmel", "--suite", str(root), "--out", str(out), "--no-cache", *FAST]

    def run():
        """The tasks computed (not reused) by the same command again."""
        assert evaluate.main(argv) == 0
        ends = re.findall(r"\] (\w+): accuracy .*\((reused|done in)", capsys.readouterr().err)
        assert [n for n, _ in ends] == ["esc50", "us8k"], ends
        return [n for n, how in ends if how == "done in"]

    assert run() == ["esc50", "us8k"]
    settings = json.loads((root / "esc50.json").read_text())
    (root / "esc50.json").write_text(json.dumps({**settings, "unit_sec": 0.3}))
    assert run() == ["esc50"], "esc50 reused at its former clip length (or us8k computed)"
    assert json.loads((out / "esc50.json").read_text())["settings"]["unit_sec"] == 0.3
    # one of us8k's clips recorded again; its CSV and settings as they were
    wav, _ = synthetic.make_clip(3, 99, 0.35)
    sf.write(root / "audio" / "us8k" / "3.wav", wav, 16000)
    assert run() == ["us8k"], "us8k reused though one of its clips changed"
    assert run() == [], "a task computed again though nothing changed"


def test_extraction_refuses_a_clip_length_that_is_not_one(tmp_path):
    """Only None means "the longest clip": 0, a negative or a non-finite unit_sec is an error,
    never replaced by the longest clip's length."""
    task = specs.parse_task(
        f"csv:{make_task(tmp_path, 'esc50', 12, [0.5], 0.5, folds=2, classes=2)}"
    )
    kw = dict(baseline="logmel", cache_dir=None, progress=False, log=lambda m: None)
    for bad in (0, 0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match=f"unit_sec={bad!r}; expected a clip length > 0 s"):
            embeddings.extract(task, unit_sec=bad, **kw)
    assert embeddings.extract(task, unit_sec=None, **kw)[1]["unit_sec"] == 0.5  # the longest clip


def _hashes(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_broken_task_settings_end_the_suite_in_one_line_before_any_work(tmp_path):
    """The real command on each mistake: exit 2, one line naming the file(s) and the key,
    no results folder, every input file as it was; found before jax starts."""
    base = tmp_path / "base"
    make_task(base, "esc50", 12, [0.3], 0.5, folds=2, classes=2)
    make_task(base, "us8k", 12, [0.3], 0.4, folds=2, classes=2)

    def settings(folder, name):
        return json.loads((folder / f"{name}.json").read_text())

    def write(folder, file, value):
        text = value if isinstance(value, str) else json.dumps(value)
        (folder / file).write_text(text)

    def copied_esc50(d):  # a copy of esc50.json, its name left as it was, on us8k's CSV
        write(d, "zzz.json", {**settings(d, "esc50"), "csv": "us8k.csv"})

    def evar_csv_too(d):  # esc50's settings renamed, and EVAR's esc50.csv beside them
        (d / "esc50.json").rename(d / "esc50_small.json")
        write(d, "esc50_small.json", {**settings(d, "esc50_small"), "csv": "esc50_small.csv"})
        (d / "esc50.csv").rename(d / "esc50_small.csv")
        (d / "esc50.csv").write_bytes((d / "esc50_small.csv").read_bytes())

    def unit_sec(value):
        return lambda d: write(
            d,
            "esc50.json",
            json.dumps(settings(d, "esc50")).replace('"unit_sec": 0.5', f'"unit_sec": {value}'),
        )

    def truncated_spcv2(d):  # with spcv2.csv beside it: not taken for EVAR's CSV
        (d / "spcv2.csv").write_bytes((d / "esc50.csv").read_bytes())
        write(d, "spcv2.json", json.dumps({**settings(d, "esc50"), "name": "spcv2"})[:70])

    def garbled_custom(d):
        (d / "birds.csv").write_bytes((d / "esc50.csv").read_bytes())
        write(d, "birds.json", '{"name": "birds", "csv": "birds.csv", "unit_sec": 2,')

    def custom_without_unit_sec(d):
        s = {**settings(d, "esc50"), "name": "birds", "published": {}}
        write(d, "birds.json", {k: v for k, v in s.items() if k != "unit_sec"})

    def missing_csv(d):
        write(d, "us8k.json", {**settings(d, "us8k"), "csv": "us8k_v2.csv"})

    cases = {
        "esc50.json and {d}/zzz.json: \"name\": each is the task 'esc50'": copied_esc50,
        'esc50_small.json and {d}/esc50.csv (EVAR\'s metadata CSV): "name"': evar_csv_too,
        'esc50.json: "unit_sec": 0; expected the clip length, a number of seconds > 0': unit_sec(0),
        'esc50.json: "unit_sec": -1; expected the clip length': unit_sec(-1),
        'esc50.json: "unit_sec": NaN; expected the clip length': unit_sec("NaN"),
        "spcv2.json: task settings are not valid JSON": truncated_spcv2,
        "birds.json: task settings are not valid JSON": garbled_custom,
        'birds.json: missing key "unit_sec"': custom_without_unit_sec,
        "us8k.json: \"csv\": 'us8k_v2.csv'": missing_csv,
    }
    for k, (message, plant) in enumerate(cases.items()):
        d = tmp_path / f"case{k}"
        shutil.copytree(base, d)
        plant(d)
        before = _hashes(d)
        out = tmp_path / f"res{k}"
        cmd = [sys.executable, "-m", "msm_mae_jax", "eval", "--baseline", "logmel"]
        cmd += ["--suite", str(d), "--out", str(out), "--no-progress"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=_env())
        message = message.format(d=d)
        assert r.returncode == 2 and r.stdout == "", (message, r.stderr)
        (line,) = r.stderr.splitlines()
        assert f"eval: error: {d}/" in line and message in line, (message, line)
        assert not out.exists() and _hashes(d) == before, message
    # found before jax or TensorFlow is imported
    probe = (
        "import sys; from msm_mae_jax.cli.main import main; "
        f"rc = main(['eval', '--baseline', 'logmel', '--suite', {str(tmp_path / 'case0')!r}]); "
        "print([m for m in ('jax', 'tensorflow') if m in sys.modules]); sys.exit(rc)"
    )
    r = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert r.returncode == 2 and r.stdout.splitlines() == ["[]"], r.stderr
