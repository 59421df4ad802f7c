"""Users' common mistakes through the real commands: one line on stderr naming the bad value,
exit status 2, no traceback; most of them before jax or TensorFlow start."""

import concurrent.futures
import glob
import os
import re
import subprocess
import sys

import pytest

from msm_mae_jax.cli import common, config_args
from msm_mae_jax.cli import main as cli_main
from msm_mae_jax.core import config_files
from msm_mae_jax.core.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
TRAIN_M = [PY, "-m", "msm_mae_jax", "train"]
TRAIN_PY = [PY, os.path.join(ROOT, "train.py")]
EVAL_PY = [PY, os.path.join(ROOT, "evaluate.py")]
FINETUNE_PY = [PY, os.path.join(ROOT, "finetune.py"), "--random-init", "tiny"]
FINETUNE_M = [PY, "-m", "msm_mae_jax", "finetune", "--random-init", "tiny"]
# A platform this machine cannot start: cuda, unless it has an NVIDIA GPU.
MISSING_PLATFORM = "tpu" if glob.glob("/dev/nvidia[0-9]*") else "cuda"


def _task_csvs(tmp):
    """Labelled tasks a classifier cannot learn (files exist, unread: caught before)."""
    for i in range(6):
        (tmp / f"c{i}.wav").write_bytes(b"")
    rows = {
        "one_class": "a,train a,train a,valid a,test",
        "empty_split": "a,train b,train a,valid b,valid",
        "unseen_class": "a,train b,train a,valid b,valid c,test a,test",
    }
    out = {}
    for name, body in rows.items():
        lines = [f"c{i}.wav,{r}" for i, r in enumerate(body.split())]
        (tmp / f"{name}.csv").write_text("\n".join(["file,label,split", *lines]) + "\n")
        out[name] = ["--task", f"csv:{tmp / name}.csv", "--out", str(tmp / f"{name}.json")]
    return out


def _cases(tmp):
    wd = ["--workdir", str(tmp / "run")]
    ft = _task_csvs(tmp)
    empty = tmp / "no_audio"
    empty.mkdir()
    (empty / "notes.txt").write_text("not audio")
    return (
        {
            "unknown variant": (
                TRAIN_M + ["--config", "configs/msm_mae.py:tinny", *wd],
                "tinny",
                {},
            ),
            "missing files path": (
                TRAIN_PY + ["--config", "tiny", "--config.data.source=files:/nope", *wd],
                "/nope",
                {},
            ),
            "unknown source kind": (
                TRAIN_M + ["--config", "tiny", "--config.data.source=file:/x", *wd],
                "file:/x",
                {},
            ),
            "logmel on device from lms": (
                TRAIN_M
                + ["--config", "tiny", f"--config.data.source=lms:{tmp}"]
                + ["--config.data.logmel_on_device", *wd],
                "data.logmel_on_device needs an audio source",
                {},
            ),
            "bad int value": (
                TRAIN_PY + ["--config", "tiny", "--config.batch_size=abc", *wd],
                "abc",
                {},
            ),
            "unknown key": (
                TRAIN_M + ["--config", "tiny", "--config.batchsize=8", *wd],
                "batchsize",
                {},
            ),
            "missing workdir": (
                TRAIN_PY + ["--config", "configs/msm_mae.py:tiny"],
                "--workdir",
                {},
            ),
            "missing platform": (
                TRAIN_M + ["--config", "tiny", *wd],
                MISSING_PLATFORM,
                {"JAX_PLATFORMS": MISSING_PLATFORM},
            ),
            # A UserError raised inside train_and_evaluate, after jax started.
            "no audio mid-start": (
                TRAIN_M
                + ["--config", "tiny", f"--config.data.source=files:{empty}"]
                + ["--config.total_steps=0", *wd],
                str(empty),
                {},
            ),
            "eval missing csv": (
                EVAL_PY + ["--baseline", "logmel", "--task", f"csv:{tmp / 'missing.csv'}"],
                "missing.csv",
                {},
            ),
            "eval bad float": (
                EVAL_PY + ["--baseline", "logmel", "--task", "synthetic", "--unit_sec", "abc"],
                "abc",
                {},
            ),
            "eval missing checkpoint": (
                EVAL_PY + ["--checkpoint", str(tmp / "nope_ckpt"), "--task", "synthetic"],
                "nope_ckpt",
                {},
            ),
            "embed missing input": (
                [
                    PY,
                    "-m",
                    "msm_mae_jax",
                    "embed",
                    "--checkpoint",
                    ROOT,
                    "--out",
                    str(tmp / "e.npz"),
                ]
                + [str(tmp / "nope.wav")],
                "nope.wav",
                {},
            ),
            "unknown command": ([PY, "-m", "msm_mae_jax", "trian"], "trian", {}),
            # (one class, an unknown label and config mistakes: test_finetune, in-process)
            "finetune empty split": (FINETUNE_M + ft["empty_split"], "test split of split is", {}),
            "finetune unseen class": (
                FINETUNE_PY + ft["unseen_class"],
                "['c'] occur in the test",
                {},
            ),
        }
        | _value_cases(tmp, wd, ft)
        | _output_cases(tmp)
    )


def _value_cases(tmp, wd, ft):
    """Values that used to be reinterpreted silently or to fail deep inside: refused at once,
    naming the key or flag (the config rules are tested key by key in test_config_rules.py)."""
    (tmp / "binary.csv").write_bytes(bytes(range(256)) * 4)  # not UTF-8 text
    bin_task = ["--task", f"csv:{tmp / 'binary.csv'}"]
    return {
        "negative total_steps": (
            TRAIN_M + ["--config", "tiny", "--config.total_steps=-5", *wd],
            "config.total_steps=-5 must be >= 0",
            {},
        ),
        "negative lr": (
            TRAIN_PY + ["--config", "tiny", "--config.optim.lr=-1", *wd],
            "config.optim.lr=-1.0 must be >= 0",
            {},
        ),
        "nan blr": (
            TRAIN_M + ["--config", "tiny", "--config.optim.blr=nan", *wd],
            "config.optim.blr=nan: not a finite number",
            {},
        ),
        "finetune negative unit_sec": (
            FINETUNE_M + ft["one_class"] + ["--config", "tiny", "--config.data.unit_sec=-1"],
            "config.data.unit_sec=-1.0 must be >= 0",
            {},
        ),
        "eval negative unit-sec": (
            EVAL_PY + ["--baseline", "logmel", "--task", "synthetic", "--unit-sec", "-1"],
            "argument --unit-sec: '-1': expected a finite number >= 0",
            {},
        ),
        "eval nan unit-sec": (
            EVAL_PY + ["--baseline", "logmel", "--task", "synthetic", "--unit-sec=nan"],
            "argument --unit-sec: 'nan': expected a finite number >= 0",
            {},
        ),
        "eval binary csv": (
            EVAL_PY + ["--baseline", "logmel", *bin_task],
            f"{tmp / 'binary.csv'}: not a UTF-8 text CSV (byte 0x80 at offset 128",
            {},
        ),
        "finetune binary csv": (
            FINETUNE_M + bin_task + ["--out", str(tmp / "bin.json")],
            "binary.csv: not a UTF-8 text CSV",
            {},
        ),
    }


def _output_cases(tmp):
    """An output location that cannot be written: one line before any work (the read-only
    and full cases are in test_reliability_inputs.py)."""
    (tmp / "a_file").write_text("x")
    (tmp / "a_dir").mkdir()
    wav = str(tmp / "c0.wav")
    under_file, a_dir, a_file = str(tmp / "a_file" / "x"), str(tmp / "a_dir"), str(tmp / "a_file")
    embed = [PY, "-m", "msm_mae_jax", "embed", "--checkpoint", str(tmp), wav]
    prog = [PY, "-m", "msm_mae_jax"]
    return {
        "embed out is a folder": (embed + ["--out", a_dir], f"--out {a_dir} is a folder", {}),
        "eval out below a file": (
            EVAL_PY + ["--baseline", "logmel", "--task", "synthetic", "--out", under_file],
            f"{a_file} is a file, not a folder",
            {},
        ),
        "finetune out is a folder": (
            FINETUNE_M + ["--task", "synthetic", "--out", a_dir],
            f"--out {a_dir} is a folder",
            {},
        ),
        "finetune workdir is a file": (
            FINETUNE_M + ["--task", "synthetic", "--workdir", a_file],
            f"--workdir {a_file} is a file",
            {},
        ),
        "export out is a file": (
            prog + ["export", "--workdir", str(tmp), "--out", a_file],
            f"--out {a_file} is a file",
            {},
        ),
        "prepare out below a file": (
            prog + ["prepare", str(tmp), under_file],
            f"OUT {under_file}: {a_file} is a file",
            {},
        ),
        "convert out is a file": (
            prog + ["convert", wav, a_file, "--per-batch-norm"],
            f"OUT_DIR {a_file} is a file",
            {},
        ),
    }


def _prog(cmd):
    """The name each entry point gives itself (in its errors and its --help usage line)."""
    if cmd[1] == "-m":  # python -m msm_mae_jax [COMMAND]
        return " ".join(["python", *cmd[1:3], *[a for a in cmd[3:4] if a in cli_main.COMMANDS]])
    return os.path.basename(cmd[1])  # train.py, evaluate.py, finetune.py


def _run(cmd, env_extra, cwd):
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", **env_extra}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=180)


def test_mistakes_are_one_line_errors(tmp_path):
    cases = _cases(tmp_path)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = {
            name: pool.submit(_run, cmd, env, tmp_path) for name, (cmd, _, env) in cases.items()
        }
        results = {name: f.result() for name, f in futures.items()}
    for name, (cmd, bad, _) in cases.items():
        r = results[name]
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (name, r.returncode, r.stderr[-2000:])
        assert "Traceback" not in r.stderr, (name, r.stderr[-2000:])
        assert len(lines) == 1, (name, lines)
        assert lines[0].startswith(f"{_prog(cmd)}: error: ") and bad in lines[0], (name, lines[0])
    assert "did you mean 'batch_size'" in results["unknown key"].stderr
    assert "tiny" in results["unknown variant"].stderr  # the known variants are listed
    for kind in ("synthetic", "files:", "tfds:", "lms:"):
        assert kind in results["unknown source kind"].stderr
    assert "available: cpu" in results["missing platform"].stderr
    assert "backend cpu" in results["no audio mid-start"].stdout  # the start-up line


def test_override_values_follow_config_flags():
    extras = [
        "--config.batch_size=8",
        "--config.mesh=(('data',1),('fsdp',2),('tensor',1))",
        "--config.model.remat",
        "--config.optim.blr",
        "2e-4",
        "--config.model.input_size=(80,96)",
        "--noconfig.model.use_cls_token",
        "--config.data.source=files:a b",
    ]
    c = config_args.parse_config("tiny", extras)
    assert c.batch_size == 8 and c.mesh == (("data", 1), ("fsdp", 2), ("tensor", 1))
    assert c.model.remat is True and c.optim.blr == 2e-4 and c.model.input_size == (80, 96)
    assert c.model.use_cls_token is False and c.data.source == "files:a b"
    assert c.variant == "tiny" and c.is_locked
    with pytest.raises(ConfigError, match=r"bad value '3.5' for config key batch_size \(int"):
        config_args.parse_config("tiny", ["--config.batch_size=3.5"])
    with pytest.raises(ConfigError, match="optim.blrr.*did you mean 'optim.blr'"):
        config_args.parse_config("tiny", ["--config.optim.blrr=1"])
    with pytest.raises(ConfigError, match="model is a group of keys"):
        config_args.parse_config("tiny", ["--config.model=3"])
    with pytest.raises(ConfigError, match="needs a value"):
        config_args.parse_config("tiny", ["--config.seed"])
    with pytest.raises(ConfigError, match="unrecognized argument '--bogus'"):
        config_args.parse_config("tiny", ["--bogus"])


def test_train_help_lists_variants_and_common_keys(capsys):
    from msm_mae_jax.cli import train

    with pytest.raises(SystemExit) as e:
        train.main(["--config", "tiny", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    path, _ = config_files.resolve("tiny")
    for variant in config_files.file_variants(path):
        assert variant in out
    tiny = config_files.load_config("tiny")
    for key in config_args.COMMON_KEYS:
        value = config_args.flatten(tiny)[key]
        assert f"  {key} " in out and repr(value) in out, key
    assert re.search(r"^  batch_size +16$", out, re.M)  # tiny's own value, not the default's


def test_underscore_flags_are_hidden_aliases(capsys):
    p = common.Parser(prog="x")
    p.add_argument("--unit-sec", type=float, default=0.0)
    p.add_argument("--no-cache", action="store_true")
    a = p.parse_args(["--unit_sec=1.5", "--no_cache"])
    assert a.unit_sec == 1.5 and a.no_cache
    assert common.hyphenate(["--config.batch_size=1", "--out=a_b", "--", "--x_y"]) == [
        "--config.batch_size=1",
        "--out=a_b",
        "--",
        "--x_y",
    ]
    p.print_help()
    assert "--unit_sec" not in capsys.readouterr().out
    with pytest.raises(common.UsageError, match="unrecognized arguments: --nope"):
        p.parse_args(["--nope"])


_CRAFTED = """import os
with open(os.environ["CRAFTED_LOG"], "a") as f:
    f.write(os.path.abspath(__file__) + "\\n")
raise SystemExit(9)
"""


def test_configs_in_the_current_directory_never_run_unless_named_by_path(tmp_path):
    """Files named like the bundled configs in the current directory (each would log its run
    and exit 9): variants, bundled names and the commands' defaults mean the bundled files;
    only a spec written as a path (./msm_mae.py) runs a file from disk."""
    log = tmp_path / "ran.log"
    (tmp_path / "configs").mkdir()
    for name in ("msm_mae.py", "finetune.py", "msm_mae", "configs/finetune.py"):
        (tmp_path / name).write_text(_CRAFTED)
    bad = ["--config.total_steps=-5", "--workdir", str(tmp_path / "run")]
    no_task = ["--task", "csv:missing.csv", "--out", str(tmp_path / "r.json")]
    ft = [PY, "-m", "msm_mae_jax", "finetune"]
    cases = {  # -> what the bundled config's path through the command says
        "variant": (TRAIN_M + ["--config", "tiny", *bad], "config.total_steps=-5"),
        "bundled name": (TRAIN_M + ["--config", "msm_mae.py:tiny", *bad], "total_steps=-5"),
        "bundled stem": (TRAIN_M + ["--config", "msm_mae:tiny", *bad], "total_steps=-5"),
        "default": (TRAIN_PY + bad, "total_steps=-5"),
        "finetune default": (ft + ["--random-init", "tiny", *no_task], "missing.csv"),
        "finetune variant": (FINETUNE_M + ["--config", "tiny", *no_task], "missing.csv"),
        "finetune bundled": (FINETUNE_PY + ["--config", "finetune.py:tiny", *no_task], "missing"),
        "random init": (ft + ["--random-init", "msm_mae.py:tiny", *no_task], "missing.csv"),
    }
    env = {"CRAFTED_LOG": str(log)}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = {k: pool.submit(_run, cmd, env, tmp_path) for k, (cmd, _) in cases.items()}
        results = {k: f.result() for k, f in futures.items()}
    for name, (_, said) in cases.items():
        r = results[name]
        assert r.returncode == 2 and said in r.stderr, (name, r.returncode, r.stderr[-1500:])
    assert not log.exists(), log.read_text()
    # The control: the same file named by its path does run (so the checks above could fail).
    r = _run(TRAIN_M + ["--config", "./msm_mae.py:tiny", *bad], env, tmp_path)
    assert r.returncode == 9 and log.read_text() == f"{tmp_path / 'msm_mae.py'}\n"
