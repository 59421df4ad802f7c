"""What a suite writes in its results folder, checked before the first task is evaluated.

OUT/NAME.json (a task's results), OUT/NAME.error.txt (a failed task's traceback),
OUT/summary.csv and OUT/summary.md (the table). `check_out_dir` refuses, in one line before
any work (`core.outputs`), a results folder that is the --suite folder or an input, and any
of those files that exists and is not the suite's own (a settings file, a user's notes), so a
suite never replaces what it did not write.
"""

from __future__ import annotations

from collections.abc import Sequence

from msm_mae_jax.core import fs, output_kinds, outputs
from msm_mae_jax.evaluation.protocol import Model
from msm_mae_jax.evaluation.suite import check_out_dir as check_folder
from msm_mae_jax.evaluation.suite import error_path, result_path
from msm_mae_jax.evaluation.suite_tasks import SuiteTask

SUMMARY_CSV, SUMMARY_MD = "summary.csv", "summary.md"  # the table (`summary.write_summary`)


def output_files(out_dir: str, names: Sequence[str]) -> dict[str, outputs.Kind]:
    """Every file a suite of these tasks may write in `out_dir`, with its kind."""
    files = {fs.join(out_dir, SUMMARY_CSV): output_kinds.SUITE_SUMMARY_CSV}
    files[fs.join(out_dir, SUMMARY_MD)] = output_kinds.SUITE_SUMMARY_MD
    for name in names:
        files[result_path(out_dir, name)] = output_kinds.RESULTS
        files[error_path(out_dir, name)] = output_kinds.SUITE_ERROR
    return files


def check_out_dir(
    out_dir: str, suite_dir: str, suite_tasks: Sequence[SuiteTask], model: Model
) -> None:
    """`out_dir` can take the results of `suite_tasks` (see the module docstring)."""
    check_folder(out_dir, suite_dir)
    inputs = [outputs.Input(suite_dir, "the --suite folder")]
    for t in suite_tasks:
        inputs.append(outputs.Input(t.csv, f"{t.name}'s CSV"))
        inputs.append(outputs.Input(t.audio_dir, f"{t.name}'s audio folder"))
    if model.checkpoint:
        inputs.append(outputs.Input(model.checkpoint, "the checkpoint"))
    outputs.check_dir(out_dir, "--out", inputs=inputs)
    for path, kind in output_files(out_dir, [t.name for t in suite_tasks]).items():
        outputs.check_file(path, kind, "--out:", inputs)
