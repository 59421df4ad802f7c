"""`msm-mae COMMAND ...` (also `python -m msm_mae_jax COMMAND ...`).

A command is one entry of COMMANDS: its module (imported only when the command runs, so
`msm-mae --help` and every mistake caught before start-up stay fast) and a one-line summary.
The module defines `main(argv, prog) -> int`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from msm_mae_jax.cli import common
from msm_mae_jax.core import cpu_heap

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("msm_mae_jax.cli.train", "pre-train MSM-MAE (resumes in its --workdir)"),
    "eval": ("msm_mae_jax.cli.evaluate", "linear evaluation (EVAR protocol) on a labelled task"),
    "finetune": ("msm_mae_jax.cli.finetune", "fine-tune an encoder + linear head on a task"),
    "embed": ("msm_mae_jax.cli.embed", "audio files -> scene (and frame) embeddings in a .npz"),
    "prepare": ("msm_mae_jax.cli.prepare", "precompute log-mel shards of a corpus (lms: source)"),
    "convert": ("msm_mae_jax.cli.convert", "official PyTorch weights -> an encoder artifact"),
    "export": ("msm_mae_jax.cli.export", "a training run's encoder -> an encoder artifact"),
    "demo": ("msm_mae_jax.cli.demo", "pre-train, export and probe a small model end to end"),
    "tasks": (
        "msm_mae_jax.cli.tasks",
        "the paper's EVAR tasks from downloaded datasets (list, make)",
    ),
    "plan": ("msm_mae_jax.cli.plan", "memory and speed bound of a run on a TPU slice (compiled)"),
}


def usage(prog: str) -> str:
    from msm_mae_jax import __version__

    width = max(map(len, COMMANDS))
    rows = [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(
        [
            f"usage: {prog} COMMAND [ARGS ...]   ({prog} COMMAND --help for its options)",
            "",
            f"MSM-MAE in JAX/Flax, version {__version__}. Commands:",
            *rows,
        ]
    )


def main(argv: Sequence[str] | None = None, prog: str = "msm-mae") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(prog), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else common.EXIT_USER_ERROR
    if argv[0] == "--version":
        from msm_mae_jax import __version__

        print(f"{prog} {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return common.fail(
            prog, f"unknown command {name!r}{hint} (commands: {', '.join(COMMANDS)})"
        )
    # Before jax or TensorFlow start threads that would keep malloc arenas of their own.
    cpu_heap.keep_heap()
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest, prog=f"{prog} {name}")


if __name__ == "__main__":
    sys.exit(main())
