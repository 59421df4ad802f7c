"""`msm-mae tasks make NAME DATASET_DIR OUT_DIR`: one of the paper's tasks from its dataset.

`BUILDERS` maps each task of `table.TASKS` to its builder and to the folder the user points
at. `make_task` checks OUT_DIR first (`check_out_dir`), runs the builder, writes
OUT_DIR/NAME.csv (EVAR's metadata format) and OUT_DIR/NAME.json (`table.TaskSettings`) and
returns the lines to show: how many of the expected clips were found, what was left out (files
the scans skipped: FIFOs, empty files, links out of the dataset), the clips per split or fold,
and any split or fold left empty.
"""

from __future__ import annotations

import csv
import dataclasses
from collections import Counter
from collections.abc import Callable

from msm_mae_jax.core import fs, output_kinds, outputs
from msm_mae_jax.tasks.evar import make_music, make_sound, make_speech
from msm_mae_jax.tasks.evar.layout import SPLITS, Built, DatasetLayoutError, scan_notes
from msm_mae_jax.tasks.evar.table import ORDER, TASKS, TaskSettings, write_settings


@dataclasses.dataclass(frozen=True)
class Builder:
    build: Callable[[str], Built]
    point_at: str  # the DATASET_DIR to give, in words


BUILDERS: dict[str, Builder] = {
    "esc50": Builder(make_sound.esc50, "ESC-50-master/ (meta/esc50.csv, audio/)"),
    "us8k": Builder(make_sound.us8k, "UrbanSound8K/ (metadata/, audio/fold1..10/)"),
    "spcv2": Builder(make_speech.spcv2, "speech_commands_v0.02/ (word folders, *_list.txt)"),
    "vc1": Builder(make_speech.vc1, "the folder with VoxCeleb1's wav/ and iden_split.txt"),
    "voxforge": Builder(make_speech.voxforge, "the wget -x download, archives unpacked in place"),
    "cremad": Builder(make_speech.cremad, "CREMA-D's AudioWAV/ (or the CREMA-D checkout)"),
    "gtzan": Builder(make_music.gtzan, "GTZAN's genres/ (<genre>/<genre>.000NN.au|wav)"),
    "nsynth": Builder(make_music.nsynth, "the folder with nsynth-train/, -valid/, -test/"),
    "surge": Builder(make_music.surge, "the Surge folder (<tone>/<pitch>.ogg)"),
    "fsd50k": Builder(make_sound.fsd50k, "the folder with FSD50K.ground_truth/ and *_audio/"),
}


@dataclasses.dataclass
class Made:
    settings: TaskSettings
    csv_path: str
    settings_path: str
    lines: list[str]  # what to show the user


def check_out_dir(name: str, out_dir: str) -> None:
    """OUT_DIR takes NAME.csv and NAME.json (`core.outputs`): checked before the dataset is
    scanned; an existing NAME.csv or NAME.json must be a task's (made here before)."""
    outputs.check_dir(out_dir, "OUT_DIR")
    kinds = {f"{name}.csv": output_kinds.TASK_CSV, f"{name}.json": output_kinds.TASK_SETTINGS}
    for file, kind in kinds.items():
        path = fs.join(out_dir, file)
        if fs.isdir(path):
            raise outputs.OutputError(
                f"OUT_DIR {out_dir}: {file} there is a folder, where the task's {file} goes; "
                "give another OUT_DIR or move it; nothing was done"
            )
        outputs.check_file(path, kind, "OUT_DIR:")


def make_task(name: str, dataset_dir: str, out_dir: str) -> Made:
    """Builds task `name` from `dataset_dir` into `out_dir` (created; `check_out_dir` first);
    DatasetLayoutError (a TaskError) when the folder is not the dataset or holds none of its
    clips."""
    info, builder = TASKS[name], BUILDERS[name]
    check_out_dir(name, out_dir)
    with scan_notes() as skipped:  # what the builder's scans of the dataset left out
        built = builder.build(dataset_dir)
    if not built.rows:
        raise DatasetLayoutError(
            f"{dataset_dir}: none of the {name} clips found (expected {builder.point_at})"
            + "".join(f"; {note}" for note in skipped)
        )
    csv_path = fs.join(out_dir, f"{name}.csv")
    with outputs.writing(csv_path, flag="OUT_DIR:") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file_name", "label", built.by])
        w.writerows(built.rows)
    settings = TaskSettings.for_task(
        info, audio_dir=built.root, found_clips=len(built.rows), split=built.split_source
    )
    settings_path = write_settings(fs.join(out_dir, f"{name}.json"), settings)

    found, expected = len(built.rows), info.expected_clips
    of = f" of {expected:,}" if expected else ""
    lines = [f"{name}: {found:,}{of} clips found in {dataset_dir}"]
    lines += [f"{name}: {note}" for note in [*skipped, *built.notes]]
    lines.append(
        f"{name}: wrote {csv_path} ({_summary(built, info.multilabel)}) and "
        f"{fs.basename(settings_path)}"
    )
    lines += [f"{name}: {gap}" for gap in _gaps(built, info.folds)]
    return Made(settings, csv_path, settings_path, lines)


def _summary(built: Built, multilabel: bool) -> str:
    labels = {lab for _, label, _ in built.rows for lab in _labels(label, multilabel)}
    counts = Counter(group for _, _, group in built.rows)
    if built.by == "fold":
        parts = [f"fold {k} {counts[k]:,}" for k in sorted(counts, key=_fold_key)]
    else:
        parts = [f"{s} {counts[s]:,}" for s in SPLITS if counts[s]]
    return f"{len(labels)} classes; " + ", ".join(parts)


def _gaps(built: Built, folds: int) -> list[str]:
    """Splits or folds with no clip: the task can be built, but not evaluated as EVAR does."""
    groups = {g for _, _, g in built.rows}
    if built.by == "fold":
        empty = [str(k) for k in range(1, folds + 1) if str(k) not in groups]
        return [f"no clips in fold {', '.join(empty)}"] if empty else []
    return [f"no {s} clips" for s in SPLITS if s not in groups]


def _labels(label: str, multilabel: bool) -> list[str]:
    return label.split(",") if multilabel else [label]


def _fold_key(fold: str) -> tuple[int, str]:
    return (int(fold), fold) if fold.isdigit() else (1 << 30, fold)


def describe_tasks() -> list[str]:
    """The task table as text lines: protocol, clip length, classes, clips, metric, published
    accuracies of the official weights and the folder to point at."""
    head = f"{'task':<9} {'protocol':<17} {'unit_sec':>8} {'classes':>7} {'clips':>8}  "
    head += f"{'metric':<8} {'published 208/512':<18} DATASET_DIR"
    lines = [head]
    for name in ORDER:
        info = TASKS[name]
        protocol = f"{info.folds} folds" if info.folds > 1 else "train/valid/test"
        pub = dict(info.published)
        published = " / ".join(
            f"{pub[k]:.1f}" if k in pub else "-" for k in ("80x208p16x16", "80x512p16x16")
        )
        clips = f"{info.expected_clips:,}" if info.expected_clips else "?"
        lines.append(
            f"{name:<9} {protocol:<17} {info.unit_sec:>8g} {info.classes:>7,} {clips:>8}  "
            f"{info.metric:<8} {published:<18} {BUILDERS[name].point_at}"
        )
    return lines
