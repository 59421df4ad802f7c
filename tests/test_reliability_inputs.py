"""Bad inputs and places through the real commands (subprocesses with timeouts): names from a
task's data that would escape the workdir, repeated and leaking task rows, outputs that
cannot be written, a corpus that never decodes, damaged metadata, statistics, job, result and
weight files. Each ends in one line on stderr (or, for the names, a run that stays inside its
folders). Input data failing mid-run (files that stop decoding, a truncated log-mel shard),
in-process: a DataError naming the source."""

import concurrent.futures
import fractions
import json
import os
import shlex
import shutil
import subprocess
import types

import numpy as np
import pytest
import soundfile as sf
from finetune_utils import write_encoder
from run_utils import MSM, error_line, run_cmd
from train_utils import RUN_FLAGS, tiny_config

from msm_mae_jax.core import config_files
from msm_mae_jax.core.errors import DataError
from msm_mae_jax.core.names import path_component
from msm_mae_jax.data import synthetic
from msm_mae_jax.model.config import ModelConfig
from msm_mae_jax.tasks import specs
from msm_mae_jax.tasks.task import leaks, report_leaks
from msm_mae_jax.train import checkpoints, loop, workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ESCAPE = "../../../../ESCAPED"  # WORKDIR/fold<value> would be two folders above the workdir


def _files(root):
    return {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs} | {
        os.path.join(d, s) for d, ss, _ in os.walk(root) for s in ss
    }


# ---- names from the task's data never choose where files go ---------------------------------
def _escaping_task(tmp):
    """A fold task whose fold values and labels are paths that climb out, with file names of
    dots and spaces; each fold lists two clips twice, and one clip is in both folds."""
    data = tmp / "data"
    data.mkdir()
    paths = []
    for i in range(16):
        wav, _ = synthetic.make_clip(i % 2 * 3, 100 + i, 0.4)  # two classes, 0.4 s
        paths.append(data / f"clip {i}..wav")
        sf.write(paths[-1], wav, synthetic.SAMPLE_RATE)
    task_dir = tmp / "a" / "b" / "c"
    task_dir.mkdir(parents=True)
    labels = ["../../../zero", "one/../../.."]
    # 11 rows per fold (the same schedule: the second fold's programs come from the cache)
    rows = [(i, ESCAPE) for i in [*range(9), 0, 1]] + [(i, "..") for i in [*range(8, 16), 9, 10]]
    lines = ["file,label,fold"] + [
        f"{os.path.relpath(paths[i], task_dir)},{labels[i % 2]},{fold}" for i, fold in rows
    ]
    (task_dir / "task.csv").write_text("\n".join(lines) + "\n")
    return task_dir / "task.csv"


def _independent_leaks(csv_path):
    """The expected counts, by plain set arithmetic on the parsed task's paths."""
    task = specs.parse_task(f"csv:{csv_path}")
    paths = task.source.paths
    dup = len(paths) - len(set(paths))
    per = {}
    for f in task.folds:
        seen = {paths[i] for i in np.concatenate([f.train, f.valid])}
        per[f.name] = sum(paths[i] in seen for i in f.test)
    return dup, per


@pytest.fixture(scope="module")
def escaping_runs(tmp_path_factory, env):
    """`finetune` and `eval` on the escaping task, each run once for the tests below."""
    tmp = tmp_path_factory.mktemp("escape")
    csv_path = _escaping_task(tmp)
    enc = write_encoder(str(tmp / "enc"))
    before = _files(tmp)
    ft_dir, ev_dir = tmp / "a" / "b" / "c" / "ft", tmp / "a" / "b" / "c" / "ev"
    ft_cmd = MSM + ["finetune", "--checkpoint", enc, "--task", f"csv:{csv_path}"]
    ft_cmd += ["--config", "tiny", "--no-progress", "--config.batch_size=4", "--config.epochs=1"]
    ft_cmd += ["--config.mesh=(('data',1),('fsdp',1),('tensor',1))"]
    ft = run_cmd(ft_cmd + ["--workdir", str(ft_dir), "--out", str(ft_dir / "ft.json")], env)
    ev = run_cmd(
        MSM
        + ["eval", "--baseline", "logmel", "--task", f"csv:{csv_path}", "--no-progress"]
        + ["--out", str(ev_dir / "ev.json"), "--cache-dir", str(ev_dir / "cache")]
        + ["--seeds", "1", "--max-epochs", "3"],
        env,
    )
    return types.SimpleNamespace(
        tmp=tmp,
        csv=csv_path,
        before=before,
        ft_dir=ft_dir,
        ev_dir=ev_dir,
        ft_cmd=ft_cmd,
        ft=ft,
        ev=ev,
    )


@pytest.mark.slow
def test_names_from_task_data_stay_inside_the_workdir(escaping_runs):
    """Fold values `../../../../ESCAPED` and `..` (run folders WORKDIR/fold<value>/seed<k>),
    labels that are paths, file names of dots: fine-tuning and evaluation write below their
    workdir, --out and cache only, and finish; the repeated and leaking rows are counted,
    warned about in one line and recorded in the results."""
    x = escaping_runs
    ft, ev, ft_dir, ev_dir = x.ft, x.ev, x.ft_dir, x.ev_dir
    assert ft.returncode == 0, ft.stderr[-3000:]
    assert ev.returncode == 0, ev.stderr[-3000:]
    new = _files(x.tmp) - x.before
    outside = sorted(p for p in new if not p.startswith((str(ft_dir), str(ev_dir))))
    assert outside == [] and not any(p.endswith("/ESCAPED") for p in _files(x.tmp.parent))
    run_dirs = {d for d in os.listdir(ft_dir) if d.startswith("fold")}
    assert run_dirs == {path_component(f"fold{v}") for v in (ESCAPE, "..")}, run_dirs
    for d in run_dirs:
        assert (ft_dir / d / "seed0" / "export" / "msm_mae.json").is_file()

    dup, per = _independent_leaks(x.csv)
    assert dup == 5 and sorted(per.values()) == [1, 1]  # the CSV as built
    for r, out in ((ft, ft_dir / "ft.json"), (ev, ev_dir / "ev.json")):
        checks = json.loads(out.read_text())["task_checks"]
        assert checks["duplicate_rows"] == dup and checks["test_in_train"] == sum(per.values())
        assert {k: v["test_in_train"] for k, v in checks["per_fold"].items()} == per
        warned = [x for x in r.stderr.splitlines() if "warning:" in x and "task.csv" in x]
        assert len(warned) == 1, r.stderr[-2000:]
        assert "5 row(s) list a clip an earlier row lists" in warned[0]
        assert "2 test clip(s) are also training clips" in warned[0]


def test_damaged_finetune_job_and_result_files_are_one_line(escaping_runs, tmp_path, env):
    """The finished workdir copied twice: its job.json replaced by binary bytes, one run's
    result.json by JSON whose score is not a number. Rerunning the command ends in one line
    naming the file and what to do (the job file is read before any clip, the result
    before that fold would be trained again), never a JSON decoder's message."""
    x = escaping_runs
    assert x.ft.returncode == 0, x.ft.stderr[-3000:]
    fold = path_component(f"fold{ESCAPE}")
    job, res = tmp_path / "job", tmp_path / "result"
    for d in (job, res):
        shutil.copytree(x.ft_dir, d)
    (job / "job.json").write_bytes(b"\x89PNG\r\n\x1a\n\0\0")
    (res / fold / "seed0" / "result.json").write_text('{"test": "0.9", "valid": 0.5}')
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = {d: pool.submit(run_cmd, x.ft_cmd + ["--workdir", str(d)], env) for d in (job, res)}
        lines = {d: error_line(f.result()) for d, f in runs.items()}
    assert (
        f"{job / 'job.json'}: the job file is damaged (byte 0x89 at offset 0 is not text); use "
        "a new --workdir, or delete the file to start over"
    ) in lines[job], lines[job]
    assert (
        f"{res / fold / 'seed0' / 'result.json'}: a finished run's result is damaged ('test' is "
        '"0.9", not a finite number); delete it to run this fold and seed again'
    ) in lines[res], lines[res]


def test_split_values_that_are_paths_are_refused(tmp_path, env):
    (tmp_path / "c.wav").write_bytes(b"")
    (tmp_path / "t.csv").write_text("file,label,split\nc.wav,a,../../x\n")
    r = run_cmd(MSM + ["eval", "--baseline", "logmel", "--task", f"csv:{tmp_path / 't.csv'}"], env)
    assert "has split '../../x'; expected one of train/valid/test" in error_line(r)


def test_leak_counts_of_a_clean_and_a_split_task(tmp_path):
    """No counts for a clean task; a split task whose test rows repeat train rows."""
    clean = specs.load_synthetic_task(40)
    assert leaks(clean)["duplicate_rows"] == 0
    for name in "xyz":
        (tmp_path / f"{name}.wav").write_bytes(b"")
    rows = ["x.wav,a,train", "y.wav,b,train", "x.wav,a,valid", "z.wav,a,valid"]
    rows += ["z.wav,a,test", "y.wav,b,test", "y.wav,b,test"]  # z: only in valid before
    (tmp_path / "t.csv").write_text("\n".join(["file,label,split", *rows]) + "\n")
    found = leaks(specs.parse_task(f"csv:{tmp_path / 't.csv'}"))
    assert found == {
        "duplicate_rows": 4,
        "test_in_train": 3,
        "valid_in_train": 1,
        "per_fold": {"split": {"test_in_train": 3, "valid_in_train": 1}},
    }
    logged = []
    report_leaks(specs.parse_task(f"csv:{tmp_path / 't.csv'}"), logged.append)
    assert len(logged) == 1 and "4 row(s)" in logged[0] and "3 test clip(s)" in logged[0]


# ---- outputs that cannot be written: one line before any work -------------------------------
def test_read_only_and_full_outputs_are_one_line(tmp_path, env):
    """--out on a read-only file system and on a full one (a 64 KiB tmpfs, filled), for each
    command that writes one: refused at start-up, naming the path and why."""
    if not shutil.which("unshare"):
        pytest.skip("no unshare: cannot mount a read-only or a full file system")
    ro, full = tmp_path / "ro", tmp_path / "full"
    ro.mkdir(), full.mkdir()
    (tmp_path / "x.wav").write_bytes(b"")
    cases = {
        "export": (["export", "--workdir", str(tmp_path), "--out", str(ro / "x")], "ead-only"),
        "embed": (
            ["embed", "--checkpoint", str(tmp_path), "--out", str(ro / "e.npz"), "x.wav"],
            "ead-only",
        ),
        "eval": (
            ["eval", "--baseline", "logmel", "--task", "synthetic", "--out", str(full / "r.json")],
            "No space left",
        ),
        "finetune": (
            ["finetune", "--random-init", "tiny", "--task", "synthetic"]
            + ["--out", str(ro / "ft.json")],
            "ead-only",
        ),
        "prepare": (["prepare", str(tmp_path), str(full / "lms")], "No space left"),
        "convert": (["convert", "x.wav", str(full / "c"), "--per-batch-norm"], "No space left"),
    }
    script = [
        f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro}",
        f"mount -t tmpfs -o size=64k tmpfs {full} && head -c 60000 /dev/zero > {full}/fill",
    ] + [
        f"{shlex.join(MSM + cmd)} >/dev/null 2>{tmp_path / name}.err; echo $? >{tmp_path / name}.rc"
        for name, (cmd, _) in cases.items()
    ]
    inner = " && ".join(script[:2]) + " || exit 99; " + "; ".join(script[2:])
    r = run_cmd(["unshare", "-rm", "sh", "-c", inner], env, cwd=tmp_path)
    if r.returncode != 0:
        pytest.skip(f"no read-only or tmpfs mount here: {r.stderr.strip()[-200:]}")
    for name, (cmd, why) in cases.items():
        err = (tmp_path / f"{name}.err").read_text()
        rc = int((tmp_path / f"{name}.rc").read_text())
        line = error_line(subprocess.CompletedProcess(cmd, rc, "", err))
        assert "is not writable" in line and why in line and "nothing was done" in line, line


# ---- a corpus whose every file fails to decode ----------------------------------------------
@pytest.mark.slow
def test_train_on_files_that_never_decode_is_one_line(tmp_path, env):
    """FLAC files whose headers are fine and whose frames are noise: the default `tiny` run
    (normalisation statistics estimated first) ends in one line naming the source and files,
    as `prepare` says it, not in TensorFlow's InvalidArgumentError traceback."""
    audio = tmp_path / "audio"
    audio.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        sf.write(audio / f"{i}.flac", rng.standard_normal(32000).astype(np.float32) * 0.1, 16000)
        data = (audio / f"{i}.flac").read_bytes()
        (audio / f"{i}.flac").write_bytes(data[:2000] + rng.bytes(len(data) - 2000))
    r = run_cmd(
        MSM
        + ["train", "--config", "tiny", "--workdir", str(tmp_path / "run")]
        + [f"--config.data.source=files:{audio}"],
        env,
    )
    line = error_line(r)
    assert f"files:{audio}" in line and "(all of them) failed to decode" in line, line
    assert "0.flac" in line and "InvalidArgumentError" not in r.stderr


# ---- damaged metadata and weight files ------------------------------------------------------
def _checkpoint(wd, meta):
    """A one-step checkpoint of a stand-in state (an encoder of one array) with `meta`."""
    ck = checkpoints.Checkpointer(str(wd))
    ck.save(1, {"params": {"encoder": {"w": np.zeros(3, np.float32)}}}, meta)
    ck.close()
    return wd


@pytest.mark.slow
def test_damaged_metadata_and_weights_are_one_line(tmp_path, env):
    """A model dir whose msm_mae.json is junk; a checkpoint whose metadata is JSON but not what
    a save writes, one whose model config has a depth "x"; a checkpoint of another model (only
    the keys that differ are named); a workdir whose saved normalisation statistics are
    invalid; a .pth that is damaged, one that holds Python objects (never the advice to load
    it unsafely), and the path named once."""
    junk = tmp_path / "junk_model"
    junk.mkdir()
    (junk / "msm_mae.json").write_text("not json {")
    garbage = _checkpoint(tmp_path / "garbage", {"step": 1})
    (garbage / "checkpoints" / "1" / "meta" / "metadata").write_text("[0, 1]")
    tiny = config_files.load_config("tiny")
    other = {**ModelConfig.from_dict(tiny.model).to_dict(), "depth": 3}
    other_model = _checkpoint(
        tmp_path / "other", {"model": other, "norm_stats": {"mean": -9.0, "std": 4.0}}
    )
    bad_depth = _checkpoint(
        tmp_path / "bad_depth",
        {"model": {**other, "depth": "x"}, "norm_stats": {"mean": -9.0, "std": 4.0}},
    )
    stats = tmp_path / "stats"  # a run stopped before its first checkpoint, statistics damaged
    stats.mkdir()
    (stats / "norm_stats.json").write_text('{"mean": -5.0, "std": 0}')
    wav = tmp_path / "x.wav"
    sf.write(wav, np.zeros(1600, np.float32), 16000)
    cases = {
        "junk model json": (
            ["embed", "--checkpoint", str(junk), "--out", str(tmp_path / "e.npz"), str(wav)],
            f"{junk / 'msm_mae.json'}: the model's metadata is damaged (not JSON",
        ),
        "garbage checkpoint meta": (
            ["export", "--workdir", str(garbage), "--out", str(tmp_path / "exp")],
            f"{garbage / 'checkpoints' / '1' / 'meta' / 'metadata'}: not a JSON object (got list)",
        ),
        "model config of wrong types": (
            ["embed", "--checkpoint", str(bad_depth), "--out", str(tmp_path / "d.npz"), str(wav)],
            f"{bad_depth / 'checkpoints'}: the checkpoint's model config is damaged (",
        ),
        "another model": (
            ["train", "--config", "tiny", "--workdir", str(other_model)],
            "is another model: model.depth 3 -> 2 (checkpoint -> config)",
        ),
        "damaged norm stats": (
            ["train", "--config", "tiny", "--workdir", str(stats)],
            f"{stats / 'norm_stats.json'}: the normalisation statistics are damaged (invalid "
            "normalisation statistics mean=-5.0 std=0.0); delete it to estimate them again",
        ),
    }
    torch = None
    try:
        import torch
    except ImportError:
        pass
    if torch is not None:
        (tmp_path / "damaged.pth").write_bytes(os.urandom(1000))
        obj = {"model": {"a": torch.zeros(2)}, "ratio": fractions.Fraction(1, 3)}
        torch.save(obj, tmp_path / "object.pth")
        for name in ("damaged", "object"):
            cases[f"{name} pth"] = (
                [
                    "convert",
                    str(tmp_path / f"{name}.pth"),
                    str(tmp_path / name),
                    "--per-batch-norm",
                ],
                f"{tmp_path / name}.pth: ",
            )
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = {k: pool.submit(run_cmd, MSM + cmd, env) for k, (cmd, _) in cases.items()}
        results = {k: f.result() for k, f in futures.items()}
    for name, (_, said) in cases.items():
        line = error_line(results[name])
        assert said in line, (name, line)
    assert "'embed_dim'" not in results["another model"].stderr  # not the two whole dicts
    if torch is not None:
        for name in ("damaged", "object"):
            line = error_line(results[f"{name} pth"])
            assert "weights_only" not in line and line.count(f"{name}.pth") == 1, line
        assert "a damaged file, or not a PyTorch checkpoint" in error_line(results["damaged pth"])
        assert "not a plain state-dict checkpoint" in error_line(results["object pth"])


# ---- input data failing mid-run (in-process) ------------------------------------------------
def _nan_wavs(folder, n):
    folder.mkdir()
    for i in range(n):  # headers are fine; decoding finds NaN samples
        y = np.full(16000, np.nan, np.float32)
        sf.write(folder / f"{i}.wav", y, 16000, subtype="FLOAT")


def _train_on(folder, tmp_path):
    c = tiny_config(2, **{k: v for k, v in RUN_FLAGS.items() if k != "mesh"})
    c.mesh, c.data.source = (("data", 1), ("fsdp", 1), ("tensor", 1)), f"files:{folder}"
    loop.train_and_evaluate(c, str(tmp_path / "run"))


def test_files_that_stop_decoding_are_a_data_error(tmp_path):
    """Files that pass the header scan and fail to decode (as when the source vanishes
    mid-run): a DataError naming the source and the files (the command prints it as one
    line), not TensorFlow's wrapped traceback."""
    _nan_wavs(tmp_path / "audio", 20)
    with pytest.raises(DataError, match=r"files:.*audio.*failed to decode.*NaN/Inf") as e:
        _train_on(tmp_path / "audio", tmp_path)
    assert "Traceback" not in str(e.value)
    assert not (tmp_path / "run" / workdir_lock.LOCK_NAME).exists()


def test_one_file_that_fails_is_counted_as_one(tmp_path):
    _nan_wavs(tmp_path / "audio", 1)
    with pytest.raises(DataError, match=r"the only file \(1 file tried\) failed to decode"):
        _train_on(tmp_path / "audio", tmp_path)


def test_truncated_lms_shard_is_named(fsdd_dir, tmp_path):
    from msm_mae_jax.data import prepare

    src = tmp_path / "src"
    src.mkdir()
    for p in sorted(fsdd_dir.glob("*.wav"))[:6]:
        shutil.copy(p, src)
    m = prepare.prepare(str(src), str(tmp_path / "lms"), shard_size=3, workers=1, progress=False)
    shard = tmp_path / "lms" / m["shards"][1]["name"]
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    c = tiny_config(2, **{k: v for k, v in RUN_FLAGS.items() if k != "mesh"})
    c.mesh, c.data.source = (("data", 1), ("fsdp", 1), ("tensor", 1)), f"lms:{tmp_path / 'lms'}"
    c.data.shuffle_buffer = 2
    with pytest.raises(DataError, match=shard.name):
        loop.train_and_evaluate(c, str(tmp_path / "run"))
