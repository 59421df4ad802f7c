"""The table of a suite: a column per task (EVAR's order) plus the average; the model's row and
the published MSM-MAE numbers for the same input size below it.

Cells are percentages: the mean over seeds (and folds) of the test accuracy, or mAP for a
multi-label task; "failed" for a task that did not complete, "—" where there is no number.
The average is over the tasks with a number in every row shown, so the two rows compare like
with like; a note names the tasks it leaves out. Markdown for the terminal, CSV (empty cell
where there is no number) for a spreadsheet.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import numpy as np

from msm_mae_jax.core import fs, outputs
from msm_mae_jax.evaluation.protocol import Model
from msm_mae_jax.evaluation.suite import Outcome
from msm_mae_jax.evaluation.suite_outputs import SUMMARY_CSV, SUMMARY_MD
from msm_mae_jax.model.config import ModelConfig

NONE, FAILED = "—", "failed"


def input_prefix(outcomes: Sequence[Outcome], fallback: str | None = None) -> str:
    """The evaluated encoder's run-name prefix (input and patch size, e.g. 80x208p16x16):
    from the results, else `fallback`, else the default model's."""
    for o in outcomes:
        prefix = ((o.result or {}).get("settings") or {}).get("run_name_prefix")
        if prefix:
            return prefix
    return fallback or ModelConfig().run_name_prefix


def rows(outcomes: Sequence[Outcome], label: str, prefix: str) -> tuple[list[str], list[list]]:
    """(header, rows): cells are floats (%), FAILED or None."""
    names = [o.task.name for o in outcomes]
    ours = []
    for o in outcomes:
        if o.result is None:
            ours.append(FAILED)
        else:
            ours.append(100.0 * float(o.result[o.result["metric"]]["mean"]))
    published = [o.task.published.get(prefix) for o in outcomes]
    published = [None if v is None else float(v) for v in published]
    table = [[label, *ours]]
    if any(v is not None for v in published):
        table.append([f"MSM-MAE {prefix} (published)", *published])
    numeric = [all(isinstance(r[1 + k], float) for r in table) for k in range(len(names))]
    for r in table:
        vals = [r[1 + k] for k in range(len(names)) if numeric[k]]
        r.append(float(np.mean(vals)) if vals else None)
    return ["model", *names, "average"], table


def notes(outcomes: Sequence[Outcome], header: list[str], table: list[list]) -> list[str]:
    names = header[1:-1]
    out = []
    metrics = {o.task.name: o.result["metric"] for o in outcomes if o.result}
    maps = [n for n, m in metrics.items() if m == "mAP"]
    out.append("accuracy (%)" + (f"; mAP (%) for {', '.join(maps)}" if maps else ""))
    left = [n for k, n in enumerate(names) if not all(isinstance(r[1 + k], float) for r in table)]
    if left and len(left) < len(names):
        out.append(f"average over the tasks with a number in every row (not {', '.join(left)})")
    failed = [o for o in outcomes if o.result is None]
    for o in failed:
        out.append(f"{o.task.name} failed: {o.error}")
    skipped = [
        f"{o.task.name} {o.result['skipped']['count']}"
        for o in outcomes
        if o.result and (o.result.get("skipped") or {}).get("count")
    ]
    if skipped:
        out.append(f"clips skipped as unreadable: {', '.join(skipped)}")
    return out


def _cell(v, digits: int) -> str:  # noqa: ANN001
    if v is None:
        return NONE
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown(header: list[str], table: list[list], note_lines: Sequence[str] = ()) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for k, r in enumerate(table):
        digits = 2 if k == 0 else 1  # published numbers have one decimal
        lines.append("| " + " | ".join(_cell(v, digits) for v in r) + " |")
    lines += [f"\n{n}" if i == 0 else n for i, n in enumerate(note_lines)]
    return "\n".join(lines)


def to_csv(header: list[str], table: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in table:
        w.writerow(["" if v is None else (f"{v:.4f}" if isinstance(v, float) else v) for v in r])
    return buf.getvalue()


def write_summary(out_dir: str, outcomes: Sequence[Outcome], model: Model) -> str:
    """Writes OUT/summary.csv and OUT/summary.md; returns the Markdown."""
    prefix = input_prefix(outcomes, model.input_prefix())
    header, table = rows(outcomes, model.label(), prefix)
    md = markdown(header, table, notes(outcomes, header, table))
    outputs.write_text(fs.join(out_dir, SUMMARY_CSV), to_csv(header, table), "--out:")
    outputs.write_text(fs.join(out_dir, SUMMARY_MD), md + "\n", "--out:")
    return md
