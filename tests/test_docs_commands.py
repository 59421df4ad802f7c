"""Every command quoted in README.md and docs/*.md runs as written, as far as parsing goes
(the reading and the checks: tests/doc_checks.py); every finding names the file and line."""

from __future__ import annotations

import pathlib
import re

import pytest
from doc_checks import (
    ROOT,
    build_parser,
    doc_files,
    doc_problems,
    invocations,
    quotes,
    tokens,
)

from msm_mae_jax.cli import common
from msm_mae_jax.cli import main as cli_main


def test_every_quoted_command_names_real_commands_flags_keys_and_targets():
    found = [q for p in doc_files() for q in quotes(p.name, p.read_text())]
    commands = [i for q in found for i in invocations(tokens(q.text)) if i.kind == "msm-mae"]
    assert len(commands) > 100, len(commands)  # the reading finds the docs' commands
    problems = doc_problems()
    assert not problems, "\n".join(problems)


def test_the_readme_opens_with_the_two_commands_and_tours_every_command():
    text = (ROOT / "README.md").read_text()
    first = [q for q in quotes("README.md", text) if not q.inline][:2]
    assert [q.text.split("#")[0].strip() for q in first] == ["make demo", "make test"]
    assert [q.line for q in first] == [4, 5]
    toured = {
        i.name
        for q in quotes("README.md", text)
        if not q.inline
        for i in invocations(tokens(q.text))
        if i.kind == "msm-mae"
    }
    assert toured >= set(cli_main.COMMANDS), set(cli_main.COMMANDS) - toured


def _doc(tmp_path: pathlib.Path, text: str) -> list[str]:
    (tmp_path / "docs").mkdir()
    (tmp_path / "Makefile").write_text("demo: x\n\ttrue\ntest:\n\ttrue\n")
    (tmp_path / "README.md").write_text("# Top\n")
    (tmp_path / "docs" / "guide.md").write_text(text)
    return doc_problems(tmp_path)


def _fence(*lines: str) -> str:
    return "```bash\n" + "\n".join(lines) + "\n```\n"


G = "docs/guide.md"
WRONG = {  # a doc's text -> the start of the one finding
    "misspelt flag": (
        _fence("msm-mae eval --checkpoint x --task csv:t.csv --unitsec 1"),
        f"{G}:2: msm-mae eval has no flag --unitsec",
    ),
    "misspelt flag, inline": (
        "Run\n`msm-mae plan --tpu v4-8 --swep`.\n",
        f"{G}:2: msm-mae plan has no flag --swep",
    ),
    "unknown make target": (_fence("make bench-gpu"), f"{G}:2: no make target 'bench-gpu'"),
    "unknown command": (
        _fence("msm-mae evaluate --checkpoint x"),
        f"{G}:2: no command 'evaluate'",
    ),
    "unknown config key, continued line": (
        "x\n\n" + _fence("python train.py --config tiny --workdir w \\", "  --config.optim.blrr=1"),
        f"{G}:4: msm-mae train: unknown config key 'optim.blrr'",
    ),
    "bad config value": (
        _fence("msm-mae finetune --checkpoint c --task csv:t --config frozen --config.epochs=x"),
        f"{G}:2: msm-mae finetune: bad value 'x' for config key epochs",
    ),
    "override on a command without a config": (
        _fence("msm-mae eval --checkpoint c --task csv:t --config.seed=1"),
        f"{G}:2: msm-mae eval takes no --config.KEY=VALUE",
    ),
    "bad flag value": (
        _fence("msm-mae eval --checkpoint c --task csv:t --unit-sec -1"),
        f"{G}:2: msm-mae eval --checkpoint c --task csv:t --unit-sec -1: argument",
    ),
    "unknown config key, prose": (
        "a\n`--config.data.sorce=files:/x` b\n",
        f"{G}:2: --config.data.sorce=files:/x: no config key",
    ),
    "missing script": (_fence("bash scripts/nothing.sh"), f"{G}:2: no file scripts/nothing.sh"),
    "missing heading": (
        "See [there](../README.md#nowhere).\n",
        f"{G}:1: link to ../README.md#nowhere: no heading",
    ),
    "missing file": ("See [there](gone.md).\n", f"{G}:1: link to gone.md: no file gone.md"),
}


@pytest.mark.parametrize("case", WRONG)
def test_a_wrong_quote_is_named_with_its_file_and_line(tmp_path, case):
    text, expected = WRONG[case]
    problems = _doc(tmp_path, text)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_quotes_that_are_right_pass(tmp_path):
    text = (
        "```bash\nmsm-mae train --config base_208 --workdir w --config.model.dtype=bfloat16 "
        "&& make demo  # a comment --nope\n"
        "gcloud x --command='cd r && .venv/bin/msm-mae export --workdir w --out e'\n```\n"
        "`msm-mae tasks make esc50 DATASET_DIR OUT_DIR`, [top](../README.md#top), "
        "`--config.num_seeds=5`, `make test`\n"
    )
    assert _doc(tmp_path, text) == []


def test_a_flag_removed_from_a_parser_is_found(monkeypatch):
    from msm_mae_jax.cli import plan

    built = plan.build_parser

    def without_sweep(prog: str, spec: str) -> common.Parser:
        p = built(prog, spec)
        p._option_string_actions.pop("--sweep")
        return p

    monkeypatch.setattr(plan, "build_parser", without_sweep)
    build_parser.cache_clear()
    try:
        problems = [p for p in doc_problems() if "has no flag --sweep" in p]
    finally:
        build_parser.cache_clear()
    assert problems and all(re.match(r"(README|docs/\S+)\.md:\d+: ", p) for p in problems)
