"""Outputs that would destroy inputs, odd files in scanned folders, outputs checked before the
long part: each case through the real command (a subprocess with a timeout) ends in one line
and exit status 2, or in the right result; no input file changes (checked by hash); nothing
hangs. The refusals come before jax or TensorFlow start (about half a second each)."""

import concurrent.futures
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MSM = [sys.executable, "-m", "msm_mae_jax"]
TIMEOUT = 120


def _env():
    return {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}


def _run(argv, cwd, timeout=TIMEOUT):
    return subprocess.run(
        MSM + argv, capture_output=True, text=True, env=_env(), cwd=cwd, timeout=timeout
    )


def _wav(path, seconds=0.5, sr=16000):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    y = (0.3 * np.sin(np.arange(int(sr * seconds)) / 7)).astype(np.float32)
    sf.write(path, y, sr, subtype="PCM_16")
    return str(path)


def _tree(root):
    """{relative path: sha256} of every regular file below `root` (FIFOs, links to outside
    are left out: they are not opened)."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            if os.path.isfile(p) and os.path.realpath(p).startswith(str(root)):
                with open(p, "rb") as f:
                    out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _dataset(root):
    """A task folder (t.csv over D/c*.wav), an ESC-50 folder as published (one clip) and a
    suite made of it, a file where a folder goes, a training-run folder, and a folder holding
    a copy of the suite's settings (not results)."""
    for i in range(6):
        _wav(root / "D" / f"c{i}.wav")
    rows = [f"c{i}.wav,{'ab'[i % 2]},{('train', 'valid', 'test')[i // 2]}" for i in range(6)]
    (root / "t.csv").write_text("\n".join(["file,label,split", *rows]) + "\n")
    _wav(root / "esc" / "audio" / "1-100-A-0.wav")
    (root / "esc" / "meta").mkdir()
    (root / "esc" / "meta" / "esc50.csv").write_text(
        "filename,fold,target,category,esc10,src_file,take\n1-100-A-0.wav,1,0,dog,True,100,A\n"
    )
    (root / "a_file").write_text("x")
    (root / "run" / "checkpoints").mkdir(parents=True)
    (root / "run" / "config.json").write_text("{}")
    from msm_mae_jax.tasks.evar import make

    make.make_task("esc50", str(root / "esc"), str(root / "suite"))  # a suite of one task
    (root / "other").mkdir()
    (root / "other" / "esc50.json").write_text((root / "suite" / "esc50.json").read_text())


# name -> (argv, what the one line must say); all run in a folder made by `_dataset`
CASES = {
    "embed --out is the input": (
        ["embed", "--checkpoint", "run", "--out", "D/c0.wav", "D/c0.wav"],
        "--out D/c0.wav is one of the INPUT files (an input)",
    ),
    "embed --out is a CSV": (
        ["embed", "--checkpoint", "run", "--out", "t.csv", "D"],
        "--out t.csv exists and is not an embeddings .npz of msm-mae embed (it is a CSV file)",
    ),
    "eval --out is the task CSV": (
        ["eval", "--baseline", "logmel", "--task", "csv:t.csv", "--audio-dir", "D"]
        + ["--out", "t.csv"],
        "--out t.csv is the task CSV (an input)",
    ),
    "eval --out is a WAV": (
        ["eval", "--baseline", "logmel", "--task", "synthetic", "--out", "D/c1.wav"],
        "--out D/c1.wav exists and is not a results JSON of msm-mae eval or finetune (it is a "
        "WAV file)",
    ),
    "finetune --out is the task CSV": (
        ["finetune", "--random-init", "tiny", "--task", "csv:t.csv", "--audio-dir", "D"]
        + ["--out", "t.csv"],
        "--out t.csv is the task CSV (an input)",
    ),
    "finetune --workdir is the checkpoint": (
        ["finetune", "--checkpoint", "run", "--task", "synthetic", "--workdir", "run"],
        "--workdir run is the checkpoint (an input)",
    ),
    "finetune --workdir holds other files": (
        ["finetune", "--random-init", "tiny", "--task", "synthetic", "--workdir", "esc"],
        "--workdir esc exists and is not a fine-tuning workdir of msm-mae finetune (it is a "
        "folder of other files)",
    ),
    "export --out is the workdir": (
        ["export", "--workdir", "run", "--out", "run"],
        "--out run is the training workdir (an input)",
    ),
    "export --out holds the workdir": (
        ["export", "--workdir", "run", "--out", "."],
        "--out . holds the training workdir (run, an input), and the output replaces the whole",
    ),
    "convert OUT_DIR holds SRC": (
        ["convert", "D/c0.wav", "D", "--per-batch-norm"],
        "OUT_DIR D holds SRC, the weights (D/c0.wav, an input)",
    ),
    "prepare OUT is SRC": (["prepare", "D", "D"], "OUT D is SRC, the corpus (an input)"),
    "prepare OUT holds other files": (
        ["prepare", "D", "esc"],
        "OUT esc exists and is not a log-mel shard folder of msm-mae prepare",
    ),
    "plan --json is a CSV": (
        ["plan", "--tpu", "v5e-16", "--batch", "8", "--json", "t.csv"],
        "--json t.csv exists and is not a plan JSON of msm-mae plan (it is a CSV file)",
    ),
    "plan --json below a file": (
        ["plan", "--tpu", "v5e-16", "--batch", "8", "--json", "a_file/p.json"],
        "a_file is a file, not a folder",
    ),
    "plan --tpu empty": (["plan", "--tpu", "", "--batch", "8"], "--tpu '': no slice given"),
    "plan --gpu empty": (["plan", "--gpu", " , ", "--batch", "8"], "--gpu ' , ': no slice given"),
    "plan --breakdown 0": (
        ["plan", "--tpu", "v5e-16", "--batch", "8", "--breakdown", "0"],
        "--breakdown 0: the number of largest ops to list, >= 1",
    ),
    "tasks make OUT_DIR is a file": (
        ["tasks", "make", "esc50", "esc", "a_file"],
        "OUT_DIR a_file is a file; give a folder to write into",
    ),
    "tasks make NAME.csv is the dataset's CSV": (
        ["tasks", "make", "esc50", "esc", "esc/meta"],
        "esc/meta/esc50.csv exists and is not a task CSV of msm-mae tasks make (it is a CSV file)",
    ),
}


# the suite's refusals come after its tasks are found (jax is imported by then: ~3 s each)
SUITE_CASES = {
    "eval --suite --out is the suite": (
        ["eval", "--baseline", "logmel", "--suite", "suite", "--out", "suite"],
        "--out suite: the results folder is the --suite folder",
    ),
    "eval --suite --out holds settings": (
        ["eval", "--baseline", "logmel", "--suite", "suite", "--out", "other"],
        "--out: other/esc50.json exists and is not a results JSON of msm-mae eval or finetune "
        "(it is JSON of another kind)",
    ),
}


@pytest.mark.parametrize("cases", ["commands", pytest.param("suite", marks=pytest.mark.slow)])
def test_outputs_that_would_replace_inputs_are_one_line_errors(tmp_path, cases):
    _dataset(tmp_path)
    (tmp_path / "made" / "esc50.csv").mkdir(parents=True)  # NAME.csv is a folder
    cases = dict(CASES if cases == "commands" else SUITE_CASES)
    cases["tasks make NAME.csv is a folder"] = (
        ["tasks", "make", "esc50", "esc", "made"],
        "OUT_DIR made: esc50.csv there is a folder, where the task's esc50.csv goes",
    )
    before = _tree(tmp_path)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = {name: pool.submit(_run, argv, tmp_path) for name, (argv, _) in cases.items()}
        results = {name: f.result() for name, f in runs.items()}
    for name, (_, want) in cases.items():
        r = results[name]
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, (name, r.returncode, r.stderr[-2000:])
        assert ": error: " in lines[0] and want in lines[0], (name, lines[0])
    assert _tree(tmp_path) == before  # not one byte changed, nothing new
    want = ["D", "a_file", "esc", "made", "other", "run", "suite", "t.csv"]
    assert sorted(os.listdir(tmp_path)) == want


def test_tasks_make_into_a_read_only_folder_is_one_line(tmp_path):
    _dataset(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    cmd = [*MSM, "tasks", "make", "esc50", "esc", str(ro)]
    inner = f'mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && exec "$@"'
    r = subprocess.run(
        ["unshare", "-rm", "sh", "-c", inner, "sh", *cmd],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=TIMEOUT,
    )
    if r.returncode != 2 and "mount" in r.stderr:
        pytest.skip(f"no read-only bind mount here: {r.stderr.strip()[-200:]}")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"OUT_DIR {ro} is not writable: " in r.stderr and "ead-only" in r.stderr


def test_tasks_make_skips_fifos_empty_files_and_links_out_of_the_dataset(tmp_path):
    """A FIFO with an audio name, an empty clip, a link to `/` (never walked) and one to
    /etc/passwd: skipped and counted; the real clip is the task."""
    _dataset(tmp_path)
    audio = tmp_path / "esc" / "audio"
    os.mkfifo(audio / "1-101-A-0.wav")
    (audio / "1-102-A-0.wav").write_bytes(b"")
    os.symlink("/", audio / "root")
    os.symlink("/etc/passwd", audio / "1-103-A-0.wav")
    (tmp_path / "esc" / "meta" / "esc50.csv").write_text(
        "filename,fold,target,category,esc10,src_file,take\n"
        + "".join(f"1-10{i}-A-0.wav,1,0,dog,True,10{i},A\n" for i in range(4))
    )
    before = _tree(tmp_path)
    r = _run(["tasks", "make", "esc50", "esc", "tasks"], tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:4] == [
        "esc50: 1 of 2,000 clips found in esc",
        f"esc50: 2 skipped: a symbolic link out of {tmp_path / 'esc'}, not followed",
        "esc50: 1 skipped: a named pipe (FIFO), not a regular file",
        "esc50: 1 skipped: empty (0 bytes)",
    ]
    rows = (tmp_path / "tasks" / "esc50.csv").read_text().splitlines()
    assert rows == ["file_name,label,fold", "audio/1-100-A-0.wav,dog,1"]
    after = _tree(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("tasks/")} == before


_SCANS = """
import json, logging, sys
logging.disable(logging.WARNING)
from msm_mae_jax.data import file_scan
from msm_mae_jax.data.source_base import parse_spec
from msm_mae_jax.tasks import specs, task_audio
from msm_mae_jax.evaluation import suite_tasks
found = file_scan.scan_files(parse_spec("files:" + sys.argv[1], "*"))
task = specs.load_csv_task(sys.argv[2])
skipped = {}
read = [k for k, _ in task_audio.read_clips(task, range(len(task.y)), None, skipped)]
logged = []
in_suite = suite_tasks.discover(sys.argv[3], log=logged.append)
print(json.dumps({
    "files": [p.rsplit("/", 1)[1] for p in found.paths],
    "skipped": found.report.count,
    "task_clips": len(task.y),
    "read": read,
    "unread": {str(k): v.rsplit("/", 1)[1] for k, v in skipped.items()},
    "suite": [t.name for t in in_suite],
    "logged": logged,
}))
"""


def test_scans_and_readers_never_open_a_fifo(tmp_path):
    """The `files:` source, a task CSV naming a FIFO clip, a suite folder holding a FIFO
    named like settings: no hang; each FIFO is skipped and counted (where clips are read).
    (`prepare`: tests/test_prepare.py.)"""
    splits = ["train", "train", "valid", "valid", "test"]
    for i in range(len(splits)):
        _wav(tmp_path / "corpus" / f"c{i}.wav")
    os.mkfifo(tmp_path / "corpus" / "pipe.wav")
    os.mkfifo(tmp_path / "corpus" / "c9.wav")
    rows = [f"c{i}.wav,{'ab'[i % 2]},{s}" for i, s in enumerate(splits)]
    rows.append("c9.wav,b,test")
    (tmp_path / "corpus" / "t.csv").write_text("\n".join(["file,label,split", *rows]) + "\n")
    _dataset(tmp_path)
    os.mkfifo(tmp_path / "suite" / "zzz.json")
    args = [str(tmp_path / "corpus"), str(tmp_path / "corpus" / "t.csv"), str(tmp_path / "suite")]
    r = subprocess.run(
        [sys.executable, "-c", _SCANS, *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=TIMEOUT,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout)
    assert got["files"] == [f"c{i}.wav" for i in range(5)] and got["skipped"] == 2
    assert got["task_clips"] == 6 and got["read"] == [0, 1, 2, 3, 4]  # the FIFO: skipped
    assert got["unread"] == {"5": "c9.wav: a named pipe (FIFO), not a regular file"}
    assert got["suite"] == ["esc50"]
    assert got["logged"][0] == (
        f"suite: skipped in {tmp_path / 'suite'}: zzz.json (a named pipe (FIFO), not a "
        "regular file)"
    )


def test_plan_writes_its_json_into_a_new_folder_after_checking_it_first(
    tmp_path, monkeypatch, capsys
):
    """`plan --json missing/dir/p.json`: checked before the compiles, written (whole) after
    each case, its folders made; a --json that cannot be written stops before any compile.
    (The compile is replaced by a hand-made plan: tests/test_tpu_compile.py compiles.)"""
    from msm_mae_jax.cli import plan as cli
    from msm_mae_jax.train.plan import analysis, devices, planner

    compiled = []

    def fake_plan(config, slice_, devs, batch, mesh, platform="tpu", breakdown=False):
        compiled.append(slice_.name)
        mem = analysis.Memory(argument=2**30, output=0, alias=0, temp=2**29, code=0)
        a = analysis.Analysis(mem, 197e12 * 0.01, 819e9 * 0.001, (), 12.0)
        return planner.Plan(slice_, str(config.variant), "bfloat16", batch, mesh, a)

    monkeypatch.setattr(devices, "find_libtpu", lambda path=None: "/libtpu.so")
    monkeypatch.setattr(devices, "tpu_devices", lambda s, lib=None: [None] * s.chips)
    monkeypatch.setattr(planner, "plan", fake_plan)
    out = tmp_path / "missing" / "dir" / "p.json"
    argv = ["--tpu", "v5e-4,v5e-8", "--config", "tiny", "--batch", "64", "--json", str(out)]
    assert cli.main(argv) == 0
    doc = json.loads(out.read_text())
    assert [p["slice"] for p in doc["plans"]] == ["v5e-4", "v5e-8"] == compiled
    assert doc["plans"][0]["memory_bytes"] == 1610612736  # 1 GiB + 0.5 GiB of temporaries
    assert "v5e-8" in capsys.readouterr().out
    assert os.listdir(out.parent) == ["p.json"]  # no temporary file left
    (tmp_path / "notes.csv").write_text("a,b\n")
    argv[-1] = str(tmp_path / "notes.csv")
    assert cli.main(argv) == 2 and compiled == ["v5e-4", "v5e-8"]  # nothing compiled
    assert "--json" in capsys.readouterr().err


def _cut(src, dst, keep):
    """`dst`: the first `keep` of the bytes of `src` (a download cut short)."""
    data = open(src, "rb").read()
    open(dst, "wb").write(data[: int(len(data) * keep)])


@pytest.mark.slow
def test_embed_skips_a_fifo_and_reads_cut_files_as_far_as_they_go(tmp_path):
    """The hang of the issue: a FIFO named like a clip in a folder given to `embed` (and an
    empty file) are skipped and listed; a WAV and a FLAC cut short are embedded from what they
    hold, each named in a warning; the .npz says which files were skipped and why."""
    from finetune_utils import write_encoder

    model = write_encoder(str(tmp_path / "model"))
    clips = tmp_path / "clips"
    _wav(clips / "good.wav", seconds=1.0)
    _cut(clips / "good.wav", clips / "cut.wav", 0.5)
    sf.write(clips / "whole.flac", sf.read(clips / "good.wav")[0], 16000)
    _cut(clips / "whole.flac", clips / "cut.flac", 0.6)
    os.mkfifo(clips / "pipe.wav")
    (clips / "empty.wav").write_bytes(b"")
    before = _tree(clips)
    out = tmp_path / "e.npz"
    r = _run(
        ["embed", "--checkpoint", model, "--out", str(out), str(clips), "--no-progress"],
        tmp_path,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "embedded 4 of 6 file(s)" in r.stdout and "skipped 2: empty.wav, pipe.wav" in r.stdout
    warned = sorted(line.split("] ", 1)[1] for line in r.stderr.splitlines() if "cut short" in line)
    assert len(warned) == 2, r.stderr[-3000:]
    assert warned[0].startswith(f"{clips / 'cut.flac'}: cut short: ")
    assert warned[1].startswith(f"{clips / 'cut.wav'}: cut short: 7989 of the 16000 samples its")
    with np.load(out) as z:
        assert sorted(z["paths"]) == ["cut.flac", "cut.wav", "good.wav", "whole.flac"]
        assert list(z["skipped_paths"]) == ["empty.wav", "pipe.wav"]
        assert "a named pipe (FIFO), not a regular file" in z["skipped_reasons"][1]
    assert _tree(clips) == before
