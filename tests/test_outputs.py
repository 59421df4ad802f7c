"""core/outputs.py and core/output_kinds.py: what an output may replace (never an input, never
a file of another kind), and the one way outputs are written (beside, then swapped in: a kill
leaves the old output or the new one). In-process and without jax; the commands' own checks
run in tests/test_mistakes_end_cleanly.py."""

import hashlib
import io
import json
import os
import signal
import stat
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from msm_mae_jax.core import fs, output_kinds, outputs
from msm_mae_jax.core.outputs import Input, OutputError
from msm_mae_jax.features.embed import Embeddings, save_npz

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _wav(path, seconds=0.5):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    y = (0.3 * np.sin(np.arange(int(16000 * seconds)) / 7)).astype(np.float32)
    sf.write(path, y, 16000)
    return str(path)


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _embeddings() -> Embeddings:
    return Embeddings(["a.wav"], np.ones((1, 4), np.float32), skipped=[("b.wav", "bad")])


# ---- the kinds: each recognises its writer's real output and nothing else --------------------
def test_each_kind_recognises_its_writers_output_and_not_the_others(tmp_path):
    from msm_mae_jax.finetune import results
    from msm_mae_jax.tasks.evar import layout, make
    from msm_mae_jax.tasks.specs import load_synthetic_task

    made = {}
    made["embeddings"] = save_npz(_embeddings(), str(tmp_path / "e.npz"))
    task = load_synthetic_task(12)
    res = results.collect(task, "m", [{"test": 0.5, "valid": 0.5}], {}, {})
    made["results"] = outputs.write_text(str(tmp_path / "r.json"), json.dumps(res))
    _wav(tmp_path / "esc" / "audio" / "1-100-A-0.wav")
    (tmp_path / "esc" / "meta").mkdir()
    (tmp_path / "esc" / "meta" / "esc50.csv").write_text(
        "filename,fold,target,category,esc10,src_file,take\n1-100-A-0.wav,1,0,dog,True,100,A\n"
    )
    m = make.make_task("esc50", str(tmp_path / "esc"), str(tmp_path / "tasks"))
    made["task_csv"], made["task_settings"] = m.csv_path, m.settings_path
    from msm_mae_jax.cli.plan import _write
    from msm_mae_jax.train.plan import report

    made["plan"] = str(tmp_path / "p.json")
    _write(made["plan"], report.document([], "msm-mae plan --tpu v5e-4"))
    kinds = {
        "embeddings": output_kinds.EMBEDDINGS,
        "results": output_kinds.RESULTS,
        "task_csv": output_kinds.TASK_CSV,
        "task_settings": output_kinds.TASK_SETTINGS,
        "plan": output_kinds.PLAN,
    }
    others = {
        "wav": _wav(tmp_path / "x.wav"),
        "dataset_csv": str(tmp_path / "esc" / "meta" / "esc50.csv"),
        "notes": str(tmp_path / "esc" / "notes.txt"),
    }
    (tmp_path / "esc" / "notes.txt").write_text("file_name,label\nmy notes\n")
    for name, kind in kinds.items():
        for other, path in {**made, **others}.items():
            assert kind.recognise(path) == (other == name), (name, other)
    assert layout.read_csv(m.csv_path, ["file_name", "label", "fold"])  # readable as written


def test_folder_kinds(tmp_path):
    model, lms, ft, other = (tmp_path / n for n in ("model", "lms", "ft", "other"))
    for d in (model, lms, ft, other):
        d.mkdir()
    (model / "msm_mae.json").write_text("{}")
    (lms / "lms-00000-of-00001.tfrecord").write_bytes(b"x")
    (ft / "job.json").write_text("{}")
    (other / "song.wav").write_bytes(b"RIFF")
    kinds = {"model": output_kinds.MODEL_DIR, "lms": output_kinds.LMS_DIR}
    kinds["ft"] = output_kinds.FINETUNE_WORKDIR
    for name, kind in kinds.items():
        for d in (model, lms, ft, other):
            assert kind.recognise(str(d)) == (d.name == name), (name, d)
        with pytest.raises(OutputError, match=f"--out {other} exists and is not {kind.noun}"):
            outputs.check_dir(str(other), "--out", kind)
        outputs.check_dir(str(tmp_path / name), "--out", kind)  # its own kind
        outputs.check_dir(str(tmp_path / "new" / name), "--out", kind)  # a new folder
    hidden_only = tmp_path / "hidden"
    hidden_only.mkdir()
    (hidden_only / ".DS_Store").write_bytes(b"x")
    outputs.check_dir(str(hidden_only), "--out", output_kinds.LMS_DIR)  # nothing to lose


# ---- check_file / check_dir -------------------------------------------------------------------
def test_an_output_that_is_an_input_or_another_kind_is_refused(tmp_path):
    wav = _wav(tmp_path / "a.wav")
    csv = tmp_path / "t.csv"
    csv.write_text("file,label,split\na.wav,x,train\n")
    link = tmp_path / "link.npz"
    os.symlink(wav, link)
    E = output_kinds.EMBEDDINGS
    cases = {  # (path, kind, inputs) -> the message's part
        (wav, E, (Input(wav, "one of the INPUT files"),)): "is one of the INPUT files (an input)",
        (str(link), E, (Input(wav, "one of the INPUT files"),)): "is one of the INPUT files",
        (wav, E, ()): "exists and is not an embeddings .npz of msm-mae embed (it is a WAV file)",
        (str(csv), output_kinds.RESULTS, ()): "(it is a CSV file)",
        (str(csv), output_kinds.PLAN, (Input(str(csv), "the task CSV"),)): "is the task CSV",
        (str(tmp_path), E, ()): f"is a folder; give the file to write, e.g. {tmp_path}/",
        (str(tmp_path / "a.wav" / "x.npz"), E, ()): "a.wav is a file, not a folder",
    }
    before = {p: _digest(p) for p in (wav, csv)}
    for (path, kind, inputs), part in cases.items():
        with pytest.raises(OutputError, match=None) as e:
            outputs.check_file(path, kind, "--out", inputs)
        assert part in str(e.value) and "\n" not in str(e.value), (path, str(e.value))
    assert {p: _digest(p) for p in (wav, csv)} == before
    ok = tmp_path / "ok.npz"
    save_npz(_embeddings(), str(ok))
    outputs.check_file(str(ok), E)  # an output of that kind: replaced by the next run
    (tmp_path / "empty.npz").write_bytes(b"")
    outputs.check_file(str(tmp_path / "empty.npz"), E)  # nothing to lose
    outputs.check_file(str(tmp_path / "new" / "deeper" / "e.npz"), E)


def test_a_fifo_where_an_output_goes_is_refused_without_opening_it(tmp_path):
    fifo = tmp_path / "out.json"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="is a named pipe \\(FIFO\\), not a regular file"):
        outputs.check_file(str(fifo), output_kinds.RESULTS)  # would block if it were opened


def test_a_folder_output_that_holds_an_input_is_refused_when_it_replaces_the_folder(tmp_path):
    run = tmp_path / "runs" / "base"
    run.mkdir(parents=True)
    inputs = [Input(str(run), "the training workdir")]
    K = output_kinds.MODEL_DIR
    with pytest.raises(OutputError, match="is the training workdir \\(an input\\)"):
        outputs.check_dir(str(run), "--out", K, inputs, replaces=True)
    with pytest.raises(OutputError, match="holds the training workdir .*replaces the whole"):
        outputs.check_dir(str(tmp_path / "runs"), "--out", K, inputs, replaces=True)
    outputs.check_dir(str(tmp_path / "runs" / "export"), "--out", K, inputs, replaces=True)


def test_read_only_is_refused_before_any_work(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    script = (
        "from msm_mae_jax.core import outputs, output_kinds as k\n"
        f"outputs.check_file({str(ro / 'e.npz')!r}, k.EMBEDDINGS)\n"
    )
    cmd = [sys.executable, "-c", script]
    if os.geteuid() == 0:  # root writes anywhere: a read-only bind mount instead
        inner = f'mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && exec "$@"'
        cmd = ["unshare", "-rm", "sh", "-c", inner, "sh", *cmd]
    else:
        ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=_env())
    if os.geteuid() == 0 and "mount" in r.stderr and "OutputError" not in r.stderr:
        pytest.skip(f"no read-only bind mount here: {r.stderr.strip()[-200:]}")
    assert "is not writable (in " in r.stderr and "nothing was done" in r.stderr, r.stderr


def test_remote_outputs_are_checked_for_what_is_there():
    root = "memory://outputs-test"
    fs.write_bytes(f"{root}/a.wav", b"RIFF\x00\x00\x00\x00WAVEfmt ")
    with pytest.raises(OutputError, match="(it is a WAV file)"):
        outputs.check_file(f"{root}/a.wav", output_kinds.EMBEDDINGS)
    with pytest.raises(OutputError, match="is one of the INPUT files"):
        outputs.check_file(
            f"{root}/a.wav",
            output_kinds.EMBEDDINGS,
            "--out",
            [Input(f"{root}/a.wav", "one of the INPUT files")],
        )
    outputs.write_text(f"{root}/r.json", json.dumps({"task": {}, "metric": "accuracy"}))
    outputs.check_file(f"{root}/r.json", output_kinds.RESULTS)
    fs.rmtree(root)


# ---- writing: beside, then swapped in ---------------------------------------------------------
def _env():
    return {**os.environ, "PYTHONPATH": ROOT}


_KILLED_WRITER = """
import sys, time
from msm_mae_jax.core import outputs
with outputs.writing(sys.argv[1]) as f:
    f.write("new, half written")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
"""


def test_a_killed_writer_leaves_the_old_file_and_the_next_write_clears_its_leftover(tmp_path):
    out = tmp_path / "r.json"
    out.write_text('{"old": true}')
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(out)],
        stdout=subprocess.PIPE,
        env=_env(),
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert out.read_text() == '{"old": true}'
    leftover = tmp_path / f".r.json.{proc.pid}.tmp"
    assert leftover.read_text() == "new, half written"
    outputs.write_text(str(out), '{"new": true}')
    assert out.read_text() == '{"new": true}' and sorted(os.listdir(tmp_path)) == ["r.json"]


def test_a_failed_write_publishes_nothing_and_cannot_write_is_one_line(tmp_path):
    out = tmp_path / "e.npz"
    save_npz(_embeddings(), str(out))
    before = _digest(out)
    with pytest.raises(RuntimeError), outputs.writing(str(out), "wb") as f:
        f.write(b"PK partial")
        raise RuntimeError("the writer failed")
    assert _digest(out) == before and os.listdir(tmp_path) == ["e.npz"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"^--json .*file/p\.json: cannot write it \("):
        outputs.write_text(str(tmp_path / "file" / "p.json"), "{}", "--json")


def test_a_replaced_folder_is_swapped_in_whole(tmp_path):
    out = tmp_path / "model"
    with outputs.replacing_dir(str(out)) as new:
        (open(os.path.join(new, "a"), "w")).write("1")
    assert (out / "a").read_text() == "1"
    with pytest.raises(RuntimeError), outputs.replacing_dir(str(out)) as new:
        (open(os.path.join(new, "a"), "w")).write("2")
        raise RuntimeError("cut")
    assert (out / "a").read_text() == "1" and sorted(os.listdir(tmp_path)) == ["model"]
    with outputs.replacing_dir(str(out)) as new:
        (open(os.path.join(new, "b"), "w")).write("3")
    assert os.listdir(out) == ["b"] and sorted(os.listdir(tmp_path)) == ["model"]
    with pytest.raises(OutputError, match=r"model/b/x: cannot write it \("):
        with outputs.replacing_dir(str(out / "b" / "x")):
            pass


def test_describe_names_common_files(tmp_path):
    _wav(tmp_path / "a.wav")
    sf.write(tmp_path / "a.flac", np.zeros(100, np.float32), 16000)
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    (tmp_path / "b.bin").write_bytes(bytes(range(256)))
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros(1))
    (tmp_path / "x.npz").write_bytes(buf.getvalue())
    got = {n: outputs.describe(str(tmp_path / n)) for n in sorted(os.listdir(tmp_path))}
    assert got == {
        "a.flac": "a FLAC file",
        "a.wav": "a WAV file",
        "b.bin": "a binary file",
        "t.csv": "a CSV file",
        "x.npz": "a zip archive (.npz)",
    }


def test_the_fsdd_csv_script_writes_the_one_way(tmp_path, fsdd_dir, capsys):
    """scripts/make_fsdd_csv.py: its CSV written beside and swapped in (no leftover); a folder
    where the CSV goes is one line and exit 2, nothing written."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_fsdd_csv", os.path.join(ROOT, "scripts", "make_fsdd_csv.py")
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "eval" / "fsdd.csv"
    assert script.main([str(out), "--root", str(fsdd_dir)]) == 0
    rows = out.read_text().splitlines()
    assert rows[0] == "file,digit,speaker,split" and len(rows) == 1 + len(os.listdir(fsdd_dir))
    assert os.listdir(tmp_path / "eval") == ["fsdd.csv"]
    capsys.readouterr()
    assert script.main([str(tmp_path / "eval"), "--root", str(fsdd_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: OUT {tmp_path / 'eval'}: cannot write it (Is a directory)"], err
    assert os.listdir(tmp_path / "eval") == ["fsdd.csv"]
