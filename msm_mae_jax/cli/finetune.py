"""Fine-tune a pre-trained MSM-MAE encoder on a labelled task and score it on the test split.

    python finetune.py --checkpoint DIR --task SPEC [--label L] --out FILE.json
        [--workdir DIR] [--config configs/finetune.py:VARIANT] [--config.KEY=VALUE ...]
    python finetune.py --random-init configs/msm_mae.py:VARIANT --task SPEC --out FILE.json

--checkpoint: a training workdir, an exported model or converted official weights;
--random-init: the encoder of a model config with random weights (the baseline).
--task: csv:FILE | folder:DIR | tfds:NAME | synthetic[:N] (as evaluate.py). Every fold and
config.num_seeds seeds are fine-tuned; the results (mean ± std of the test accuracy, or mAP
for multi-label tasks) are printed and written to --out. Runs live in --workdir (default: the
--out path without .json, plus `_finetune`); the same command again resumes them.
Exit status: 0 done, 2 a mistake in the arguments or data (one line on stderr), 3 stopped by
SIGTERM (state saved; run the same command again to continue).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from typing import Any

from msm_mae_jax.core.errors import ConfigError, UserError

CONFIG_FILE = "configs/finetune.py"
DEFAULT_CONFIG = f"{CONFIG_FILE}:base"
EXIT_USER_ERROR, EXIT_PREEMPTED = 2, 3


class _Parser(argparse.ArgumentParser):
    """Argument mistakes as one-line errors, like every other user mistake."""

    def error(self, message: str):
        raise UserError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="finetune",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="training workdir, export or converted weights")
    src.add_argument(
        "--random-init",
        "--random_init",
        dest="random_init",
        metavar="MODEL_CONFIG",
        help="a randomly initialised encoder of this model config instead (a baseline), "
        "e.g. configs/msm_mae.py:fsdd_small",
    )
    p.add_argument("--task", required=True, help="csv:FILE | folder:DIR | tfds:NAME | synthetic")
    p.add_argument("--label", default="label", help="label column (csv) or feature (tfds)")
    p.add_argument("--out", help="results JSON")
    p.add_argument("--workdir", help="run directory (default: from --out)")
    p.add_argument(
        "--config", default=DEFAULT_CONFIG, help="[FILE][:VARIANT] of configs/finetune.py"
    )
    p.add_argument("--audio-key", "--audio_key", dest="audio_key", default="audio")
    p.add_argument("--tfds-data-dir", "--tfds_data_dir", dest="tfds_data_dir", default=None)
    p.add_argument("--split-seed", "--split_seed", dest="split_seed", type=int, default=0)
    p.add_argument("--no-progress", "--no_progress", dest="no_progress", action="store_true")
    p.epilog = "Any config key: --config.KEY=VALUE (e.g. --config.epochs=20)."
    return p


def split_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Separates `--config.KEY=VALUE` / `--config.KEY VALUE` from the other arguments."""
    rest, overrides = [], {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--config."):
            key, eq, value = a[len("--config.") :].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"--config.{key} needs a value")
                value, i = argv[i + 1], i + 1
            overrides[key] = value
        else:
            rest.append(a)
        i += 1
    return rest, overrides


def parse_value(key: str, raw: str, current: Any) -> Any:
    """A command-line string -> the type of the config's current value."""
    try:
        if isinstance(current, bool):
            low = raw.strip().lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return low in ("true", "1", "yes")
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
        if isinstance(current, str):
            return raw
        value = ast.literal_eval(raw)
        return tuple(value) if isinstance(current, tuple) and isinstance(value, list) else value
    except (ValueError, SyntaxError):
        kind = type(current).__name__
        raise ConfigError(f"--config.{key}={raw!r}: expected a {kind}") from None


def load_config(spec: str, overrides: dict[str, str]):
    """The fine-tuning config of `spec` with typed overrides (declared keys only)."""
    from msm_mae_jax.core import config_files

    # The bundled file by its path: a bare 'finetune.py' in the project root is this command.
    path, variant = config_files.resolve(spec, default_file=CONFIG_FILE)
    try:
        config = config_files.load_file(path, variant)
    except AttributeError:
        raise ConfigError(
            f"--config {spec}: {path} defines no get_config(); the fine-tuning configs are "
            f"{CONFIG_FILE}:VARIANT"
        ) from None
    typed = {}
    for key, raw in overrides.items():
        node = config
        for part in key.split("."):
            if not hasattr(node, "keys") or part not in node:
                raise ConfigError(
                    f"unknown config key {key!r} (--config.{key}); every key is declared in "
                    "configs/finetune.py"
                )
            node = node[part]
        typed[key] = parse_value(key, raw, node)
    return config_files.apply_overrides(config, typed, path)


def default_workdir(out: str | None) -> str:
    if not out:
        raise ConfigError("give --workdir (or --out, which names the default workdir)")
    return os.path.splitext(os.path.abspath(out))[0] + "_finetune"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    try:
        rest, overrides = split_overrides(argv)
        args = parser.parse_args(rest)
        config = load_config(args.config, overrides)
        workdir = args.workdir or default_workdir(args.out)
        from msm_mae_jax.evaluation import tasks
        from msm_mae_jax.evaluation.finetune import results, run

        task = tasks.parse_task(
            args.task,
            label=args.label,
            seed=args.split_seed,
            audio_key=args.audio_key,
            tfds_data_dir=args.tfds_data_dir,
        )
        encoder = (
            run.random_init(args.random_init, int(config.seed))
            if args.random_init
            else run.load_pretrained(args.checkpoint)
        )
        result = run.finetune(
            task,
            encoder,
            config,
            workdir,
            log=lambda m: print(m, file=sys.stderr, flush=True),
            progress=not args.no_progress,
        )
    except UserError as e:
        print(f"finetune: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    if result is None:
        print(
            f"finetune: stopped by SIGTERM; state saved in {workdir}: run the same command "
            "again to continue",
            file=sys.stderr,
        )
        return EXIT_PREEMPTED
    print(results.format_table(result))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
