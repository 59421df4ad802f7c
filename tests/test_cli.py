"""The `msm-mae` front door and the names users depend on."""

import importlib
import importlib.metadata
import os
import subprocess
import sys

import pytest

from msm_mae_jax.cli import main as cli_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _py(*args, code=None):
    env = {**os.environ, "PYTHONPATH": ROOT}
    cmd = [sys.executable, *(["-c", code] if code else args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_console_script_is_registered():
    (ep,) = importlib.metadata.entry_points(group="console_scripts", name="msm-mae")
    assert ep.value == "msm_mae_jax.cli.main:main"
    assert ep.load() is cli_main.main


@pytest.mark.parametrize("name", list(cli_main.COMMANDS))
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main.main([name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: msm-mae {name}")
    assert "_" not in "".join(w for w in out.split() if w.startswith("--") and "." not in w)


def test_front_door_lists_commands(capsys):
    assert cli_main.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, (_, summary) in cli_main.COMMANDS.items():
        assert f"  {name}" in out and summary in out
    assert cli_main.main([]) == 2


def test_commands_and_package_do_not_import_jax():
    code = (
        "import sys, msm_mae_jax, importlib\n"
        "from msm_mae_jax.cli.main import COMMANDS\n"
        "for module, _ in COMMANDS.values(): importlib.import_module(module)\n"
        "heavy = [m for m in ('jax', 'tensorflow', 'flax') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from msm_mae_jax import Runtime\n"
        "from msm_mae_jax.features.runtime import Runtime as R\n"
        "assert Runtime is R and 'jax' in sys.modules\n"
    )
    r = _py(code=code)
    assert r.returncode == 0, r.stderr[-2000:]


def test_public_names():
    import msm_mae_jax
    from msm_mae_jax.features import hear as features_hear
    from msm_mae_jax.features.runtime import Runtime

    assert importlib.import_module("msm_mae_jax.runtime").Runtime is Runtime
    assert msm_mae_jax.Runtime is Runtime
    hear = importlib.import_module("msm_mae_jax.hear")
    for name in ("load_model", "get_scene_embeddings", "get_timestamp_embeddings"):
        assert getattr(hear, name) is getattr(features_hear, name)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = msm_mae_jax.Nope


# (`python -m msm_mae_jax [COMMAND]`, train.py, evaluate.py and finetune.py run as processes in
# test_cli_errors, each error line starting with the name the entry point gives itself)
@pytest.mark.parametrize(
    "args,usage",
    [
        (["-m", "msm_mae_jax.convert", "--help"], "usage: python -m msm_mae_jax.convert"),
        (["-m", "msm_mae_jax.export", "--help"], "usage: python -m msm_mae_jax.export"),
        (["-m", "msm_mae_jax.prepare", "--help"], "usage: python -m msm_mae_jax.prepare"),
    ],
)
def test_module_entry_points(args, usage):
    r = _py(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith(usage), r.stdout[:200]


def test_eval_passes_file_column_and_audio_dir_to_the_task(monkeypatch):
    from msm_mae_jax.cli import evaluate
    from msm_mae_jax.tasks import specs

    seen = []

    def fake_parse_task(spec, **kw):
        seen.append(kw)
        raise specs.TaskError(f"stop after parsing {spec}")

    monkeypatch.setattr(specs, "parse_task", fake_parse_task)
    base = ["--baseline", "logmel", "--task", "csv:x.csv"]
    assert evaluate.main(base) == 2
    assert evaluate.main([*base, "--file-column", "path", "--audio_dir", "/data"]) == 2
    assert seen[0]["file_column"] is None and seen[0]["audio_dir"] is None
    assert seen[1]["file_column"] == "path" and seen[1]["audio_dir"] == "/data"


def test_log_messages_go_to_the_stderr_of_the_moment(capsys):
    """A command run in-process binds no stream: once its stderr is replaced and closed (a
    notebook cell, a test), later warnings reach the new stderr, not a logging error."""
    import io
    import logging

    from msm_mae_jax.cli import common

    old, first = sys.stderr, io.StringIO()
    try:
        sys.stderr = first
        common.setup_logging()
        first.close()
        sys.stderr = second = io.StringIO()
        logging.getLogger("msm_mae_jax.test").warning("clip 3 skipped")
    finally:
        sys.stderr = old
        logging.getLogger().handlers.clear()
    assert second.getvalue().endswith("msm_mae_jax.test] clip 3 skipped\n")
    assert "Logging error" not in capsys.readouterr().err
