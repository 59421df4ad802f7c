"""The commands, flags, config keys, make targets and links quoted in README.md and docs/*.md,
read and checked as far as parsing goes (tests/test_docs_commands.py runs it).

In fenced shell blocks and inline code, each `msm-mae COMMAND ...`, `python train.py |
evaluate.py | finetune.py ...` and `python -m msm_mae_jax[.COMMAND] ...` must name a real
command and only flags of that command's argparse parser (the parsers are built in-process,
without jax); its `--config.KEY=VALUE` overrides must parse against the config file it names
(or the command's default config); a command without placeholders must parse as a whole. A
bare `--config.KEY` in prose must be a key of a bundled config. `make TARGET` must be a
Makefile target, `python|bash PATH` an existing file, and every relative link must reach a
file and, with `#anchor`, one of its headings. A finding names the file and line.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import inspect
import pathlib
import re
import shlex

import ml_collections

from msm_mae_jax.cli import common, config_args
from msm_mae_jax.cli import main as cli_main
from msm_mae_jax.core import config_files
from msm_mae_jax.core.errors import UserError

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = {"train.py": "train", "evaluate.py": "eval", "finetune.py": "finetune"}
OVERRIDES = {"train", "plan", "demo", "finetune"}  # the commands that read --config.KEY=VALUE
PLACEHOLDER_KEYS = {"KEY", "key"}  # `--config.KEY=VALUE` stands for any key
SEPARATORS = {"&&", "||", ";", "|", ";;", "&"}
SHELL_FENCES = {"bash", "sh", "shell"}  # every line a command; in others only `$ ` lines
STARTERS = {"msm-mae", "python", "python3", "bash", "make"}
# flags that name a model config (not the command's own config file)
MODEL_CONFIG_FLAGS = {("eval", "--config"), ("finetune", "--random-init")}


@dataclasses.dataclass(frozen=True)
class Quote:
    """Shell text quoted in a doc: fenced (one command line) or inline code."""

    path: str
    line: int
    text: str
    inline: bool


def doc_files(root: pathlib.Path = ROOT) -> list[pathlib.Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def quotes(path: str, text: str) -> list[Quote]:
    """Command lines of shell fences (continuations joined, `$ ` prompts dropped) and inline
    code spans outside fences (a span may run over lines)."""
    out: list[Quote] = []
    prose: list[str] = []
    fence, pending, start = None, "", 0
    for n, line in enumerate(text.split("\n"), 1):
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
            prose.append("")
            continue
        if fence is None:
            prose.append(line)
            continue
        prose.append("")
        if not pending:
            if fence not in SHELL_FENCES and not line.startswith("$ "):
                continue
            start = n
            line = line.removeprefix("$ ")
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append(Quote(path, start, pending + line, inline=False))
        pending = ""
    body = "\n".join(prose)
    for m in re.finditer(r"(`+)(.+?)\1", body, re.S):
        if "\n\n" not in m.group(2):
            line = body.count("\n", 0, m.start()) + 1
            out.append(Quote(path, line, " ".join(m.group(2).split()), inline=True))
    return out


def tokens(text: str) -> list[str]:
    """Shell words, separators as words of their own; a quoted string that holds a command
    (gcloud's --command='...') is split in place. [] around optional parts are dropped."""
    lex = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lex.whitespace_split = True
    lex.commenters = "#"
    try:
        words = list(lex)
    except ValueError:  # an unbalanced quote in prose: read it without quotes
        words = text.replace('"', " ").replace("'", " ").split()
    out: list[str] = []
    for w in words:
        inner = w.split("=", 1)[1] if w.startswith("--command=") else w
        if " " in inner and re.search(r"\b(msm-mae|python3?|make)\b", inner):
            out += tokens(inner)
        else:
            out.append(w.strip("[]"))
    return [w for w in out if w]


@dataclasses.dataclass
class Invocation:
    """One command of a quote: `kind` is msm-mae, make, module or file."""

    kind: str
    name: str
    args: list[str]


def _program(word: str) -> str:
    return word.rsplit("/", 1)[-1]


def _invocation(prog: str, rest: list[str]) -> Invocation | None:
    """The command that `prog rest` runs, where it is one the docs can get wrong."""
    if not rest:
        return None
    if prog == "msm-mae":
        return Invocation("msm-mae", rest[0], rest[1:])
    if prog == "make":
        return None if rest[0].startswith("-") else Invocation("make", rest[0], rest[1:])
    if prog == "bash":
        return Invocation("file", rest[0], rest[1:]) if rest[0].endswith(".sh") else None
    first = rest[0]  # python
    if first in SCRIPTS:
        return Invocation("msm-mae", SCRIPTS[first], rest[1:])
    if first.endswith(".py") and "/" in first:
        return Invocation("file", first, rest[1:])
    if first == "-m" and len(rest) > 1 and rest[1].split(".")[0] == "msm_mae_jax":
        sub = rest[1].partition(".")[2]
        if not sub:
            return Invocation("msm-mae", rest[2], rest[3:]) if len(rest) > 2 else None
        if sub in cli_main.COMMANDS:
            return Invocation("msm-mae", sub, rest[2:])
        return Invocation("module", rest[1], rest[2:])
    return None


def invocations(words: list[str]) -> list[Invocation]:
    """The commands of a quote's words, each up to the next separator."""
    out: list[Invocation] = []
    i = 0
    while i < len(words):
        prog = _program(words[i])
        if prog not in STARTERS:
            i += 1
            continue
        end = next((k for k in range(i + 1, len(words)) if words[k] in SEPARATORS), len(words))
        inv = _invocation("python" if prog == "python3" else prog, words[i + 1 : end])
        if inv is not None:
            out.append(inv)
        i = end
    return out


@functools.cache
def make_targets(root: pathlib.Path = ROOT) -> frozenset[str]:
    text = (root / "Makefile").read_text()  # `name:` rules, not `.PHONY:` nor `X := ...`
    return frozenset(re.findall(r"^([A-Za-z0-9_][A-Za-z0-9_.-]*)\s*:(?!=)", text, re.M))


def _placeholder(word: str) -> bool:
    """DIR, FILE, VARIANT, ...: a word the reader replaces."""
    return bool(re.fullmatch(r"[A-Z][A-Z0-9_]*", word)) or word == "..."


@functools.cache
def build_parser(command: str) -> common.Parser:
    """The command's parser as `msm-mae COMMAND` builds it (with its default config; ~15 ms
    for a config's help text, hence built once)."""
    module = importlib.import_module(cli_main.COMMANDS[command][0])
    prog = f"msm-mae {command}"
    if len(inspect.signature(module.build_parser).parameters) > 1:
        return module.build_parser(prog, module.DEFAULT_CONFIG)
    return module.build_parser(prog)


def _subparsers(p: common.Parser) -> dict[str, common.Parser]:
    for action in p._actions:
        if isinstance(action.choices, dict):
            return action.choices
    return {}


def _flag_value(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def _spec(spec: str) -> str | None:
    """A config spec as written, a placeholder variant (`msm_mae.py:VARIANT`) read as the
    file's default; None where the reader fills it in ($VAR, PATH)."""
    head, sep, variant = spec.rpartition(":")
    if "$" in spec or "[" in spec or _placeholder(spec) or (sep and _placeholder(head)):
        return None
    return head + sep if sep and _placeholder(variant) else spec


def _configs(
    command: str, args: list[str], p: common.Parser, overrides: list[str], values: list
) -> list[str]:
    """The configs a command line names, read as the command reads them; the overrides whose
    values are still to parse go to `values`."""
    problems = []
    for flag in [f for c, f in MODEL_CONFIG_FLAGS if c == command]:
        value = _flag_value(args, flag)
        if value and _spec(value) is not None:
            try:
                config_files.resolve(_spec(value))
            except UserError as e:
                problems.append(f"msm-mae {command} {flag} {value}: {common.one_line(e)}")
    if command not in OVERRIDES:
        if overrides:
            problems.append(f"msm-mae {command} takes no --config.KEY=VALUE ({overrides[0]})")
        return problems
    default_file = config_files.DEFAULT_FILE
    if command == "finetune":
        default_file = importlib.import_module(cli_main.COMMANDS[command][0]).CONFIG_FILE
    spec = _spec(_flag_value(args, "--config") or p.get_default("config"))
    if spec is not None:
        try:  # the variant and the keys here; the values with the others of this config
            config_args.override_tokens(_load(spec, default_file), overrides)
            values.append((spec, default_file, tuple(overrides), f"msm-mae {command}: "))
        except UserError as e:
            problems.append(f"msm-mae {command}: {common.one_line(e)}")
    return problems


@functools.cache
def _load(spec: str, default_file: str) -> ml_collections.ConfigDict:
    return config_files.load_file(*config_files.resolve(spec, default_file))


def value_problems(values: list[tuple[str, str, tuple[str, ...], str]]) -> list[str]:
    """Override values parsed as the commands parse them (absl), one parse per config (a
    parse costs ~70 ms); where one fails, each line's alone, to name the line."""
    problems = []
    configs = {v[:2]: config_files.resolve(*v[:2]) for v in values}  # the same file, variant
    for config in dict.fromkeys(configs.values()):
        mine = [v for v in values if configs[v[:2]] == config]
        spec, default_file = mine[0][:2]
        every = list(dict.fromkeys(o for v in mine for o in v[2]))
        try:
            config_args.parse_config(spec, every, default_file=default_file)
            continue
        except UserError:
            pass
        for _, _, overrides, where in mine:
            try:
                config_args.parse_config(spec, list(overrides), default_file=default_file)
            except UserError as e:
                problems.append(f"{where}{common.one_line(e)}")
    return problems


def check_command(command: str, args: list[str], whole: bool, values: list) -> list[str]:
    """What is wrong with `msm-mae COMMAND ARGS` as the parsers and configs read it; `whole`:
    a command line of its own (not a phrase in prose), parsed whole unless it holds
    placeholders."""
    if _placeholder(command) or command in ("--help", "-h", "--version"):
        return []
    if command not in cli_main.COMMANDS:
        return [f"no command {command!r} (msm-mae has {', '.join(cli_main.COMMANDS)})"]
    problems: list[str] = []
    parser = build_parser(command)
    subs = _subparsers(parser)
    chosen = next((subs[a] for a in args if a in subs), None)
    known = set(parser._option_string_actions)
    if chosen is not None:
        known |= set(chosen._option_string_actions)
    overrides, loose = [], not whole
    for a in args:
        if a == "--":
            break
        if not a.startswith("--"):
            loose |= a in ("...", "|") or "<" in a or "$" in a
            continue
        name = a.split("=", 1)[0]
        m = re.fullmatch(r"--(no)?config\.(.+)", name)
        if m:
            loose |= m[2] in PLACEHOLDER_KEYS or "$" in a
            if m[2] not in PLACEHOLDER_KEYS:
                overrides.append(a)
        elif common.hyphenate([name])[0] not in known:
            flags = sorted(f for f in known if f.startswith("--"))
            problems.append(f"msm-mae {command} has no flag {name} (its flags: {' '.join(flags)})")
    problems += _configs(command, args, parser, overrides, values)
    if problems or loose or {"-h", "--help"} & set(args):
        return problems
    try:  # no placeholders left: the command line must parse as it stands
        _, extras = parser.parse_known_args(args)
    except UserError as e:
        return [f"msm-mae {command} {' '.join(args)}: {common.one_line(e)}"]
    extras = [a for a in extras if not re.match(r"--(no)?config\.", a)]
    if extras:
        return [f"msm-mae {command}: unrecognized arguments {' '.join(extras)}"]
    return []


@functools.cache
def bundled_keys() -> frozenset[str]:
    """Every key of the bundled configs' default variants."""
    keys: set[str] = set()
    for name in config_files.bundled_files():
        keys |= set(config_args.flatten(config_files.load_config(f"{name}:")))
    return frozenset(keys)


def check_quote(q: Quote, values: list, root: pathlib.Path = ROOT) -> list[str]:
    """The problems of one quote, each as `PATH:LINE: what`."""
    words = tokens(q.text)
    problems: list[str] = []
    for inv in invocations(words):
        if inv.kind == "msm-mae":
            problems += check_command(inv.name, inv.args, not q.inline, values)
        elif inv.kind == "make" and inv.name not in make_targets(root):
            problems.append(f"no make target {inv.name!r} (Makefile: {sorted(make_targets(root))})")
        elif inv.kind == "file" and not (root / inv.name).is_file():
            problems.append(f"no file {inv.name}")
        elif inv.kind == "module" and importlib.util.find_spec(inv.name) is None:
            problems.append(f"no module {inv.name}")
    if q.inline and words and re.match(r"--(no)?config\.", words[0]):
        key = re.match(r"--(no)?config\.([^=\s]+)", words[0])[2]
        if key not in PLACEHOLDER_KEYS and key not in bundled_keys():
            problems.append(f"{words[0]}: no config key {key!r} in the bundled configs")
    return [f"{q.path}:{q.line}: {p}" for p in problems]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"`|\*\*", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    out, fence = set(), False
    for line in text.split("\n"):
        if line.startswith("```"):
            fence = not fence
        elif not fence and (m := re.match(r"#+\s+(.*)", line)):
            out.add(slug(m[1]))
    return out


def check_links(path: pathlib.Path, text: str, root: pathlib.Path = ROOT) -> list[str]:
    """Relative links `[text](file#anchor)` that reach no file or no heading."""
    problems = []
    rel = path.relative_to(root)
    for m in re.finditer(r"\]\(([^)\s]+)\)", text):
        target = m[1]
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        line = text.count("\n", 0, m.start()) + 1
        if not dest.exists():
            problems.append(f"{rel}:{line}: link to {target}: no file {file}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            problems.append(f"{rel}:{line}: link to {target}: no heading #{anchor} in {file}")
    return problems


def doc_problems(root: pathlib.Path = ROOT) -> list[str]:
    problems, values = [], []
    for path in doc_files(root):
        text = path.read_text()
        for q in quotes(str(path.relative_to(root)), text):
            mine: list = []
            problems += check_quote(q, mine, root)
            values += [(*v[:3], f"{q.path}:{q.line}: {v[3]}") for v in mine]
        problems += check_links(path, text, root)
    return problems + value_problems(values)
