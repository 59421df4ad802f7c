"""The paper's EVAR downstream tasks in one table, and the settings file of a built task.

One row per task (EVAR `evar/ds_tasks.py` keeps the same facts): folds, clip length
`unit_sec`, classes, metric, the clip count of the complete dataset, and the accuracies the
official MSM-MAE weights reached (official README, single runs, seed 42). The column order of
`ORDER` is EVAR's `summarize.py` order.

A task built by `msm-mae tasks make NAME DATASET_DIR OUT_DIR` is two files in OUT_DIR:
`NAME.csv` (EVAR's metadata format: `file_name,label,split` or `file_name,label,fold`;
`file_name` relative to the settings' `audio_dir`) and `NAME.json` (`TaskSettings`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable

from msm_mae_jax.core import fs, outputs
from msm_mae_jax.core.config_checks import Rule
from msm_mae_jax.core.errors import TaskError

SETTINGS_VERSION = 1


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """What EVAR fixes for one task."""

    name: str
    folds: int  # 1: train/valid/test split; > 1: leave-one-fold-out
    unit_sec: float
    classes: int
    expected_clips: int | None  # clips of the complete dataset in EVAR's task; None: unknown
    multilabel: bool = False
    # published accuracy (%) of the official weights, by run-name prefix of the input size
    published: tuple[tuple[str, float], ...] = ()

    @property
    def metric(self) -> str:
        return "mAP" if self.multilabel else "accuracy"


def _pub(a208: float | None, a512: float | None) -> tuple[tuple[str, float], ...]:
    out = []
    if a208 is not None:
        out.append(("80x208p16x16", a208))
    if a512 is not None:
        out.append(("80x512p16x16", a512))
    return tuple(out)


TASKS: dict[str, TaskInfo] = {
    t.name: t
    for t in (
        TaskInfo("esc50", 5, 5.0, 50, 2_000, published=_pub(87.1, 89.1)),
        TaskInfo("us8k", 10, 4.0, 10, 8_732, published=_pub(82.2, 84.3)),
        TaskInfo("spcv2", 1, 1.0, 35, 105_829, published=_pub(91.1, 93.1)),
        TaskInfo("vc1", 1, 8.2, 1_251, 153_516, published=_pub(49.7, 56.1)),
        TaskInfo("voxforge", 1, 5.8, 6, 176_428, published=_pub(95.6, 97.5)),
        TaskInfo("cremad", 1, 2.5, 6, 7_438, published=_pub(66.9, 70.1)),
        TaskInfo("gtzan", 1, 30.0, 10, 930, published=_pub(75.9, 79.3)),  # of 1,000 files
        TaskInfo("nsynth", 1, 4.0, 11, 305_979, published=_pub(76.5, 76.9)),
        # 2,084 tones (EVAR's tone list) x 88 pitches, MIDI 21-108
        TaskInfo("surge", 1, 4.0, 88, 183_392, published=_pub(37.8, 37.5)),
        TaskInfo("fsd50k", 1, 7.6358, 200, 51_197, multilabel=True),
    )
}
ORDER = tuple(TASKS)  # EVAR's column order


@dataclasses.dataclass
class TaskSettings:
    """`NAME.json` beside a built task's `NAME.csv`."""

    name: str
    csv: str  # the CSV's file name, in the settings' folder
    audio_dir: str  # file_name values start here; relative: to the settings' folder
    unit_sec: float
    folds: int
    classes: int
    metric: str
    published: dict[str, float]  # run-name prefix -> published accuracy/mAP (%)
    expected_clips: int | None
    found_clips: int
    split: str  # where the split comes from: "official", or how it was made
    version: int = SETTINGS_VERSION

    @classmethod
    def for_task(cls, info: TaskInfo, **kw) -> TaskSettings:  # noqa: ANN003
        return cls(
            name=info.name,
            csv=f"{info.name}.csv",
            unit_sec=info.unit_sec,
            folds=info.folds,
            classes=info.classes,
            metric=info.metric,
            published=dict(info.published),
            expected_clips=info.expected_clips,
            **kw,
        )

    def csv_path(self, settings_path: str) -> str:
        return fs.join(fs.dirname(fs.absolute(settings_path)), self.csv)

    def audio_path(self, settings_path: str) -> str:
        if fs.is_remote(self.audio_dir) or os.path.isabs(self.audio_dir):
            return self.audio_dir
        return fs.join(fs.dirname(fs.absolute(settings_path)), self.audio_dir)


def write_settings(path: str, settings: TaskSettings) -> str:
    text = json.dumps(dataclasses.asdict(settings), indent=2) + "\n"
    return outputs.write_text(path, text, "OUT_DIR:")


def read_settings(path: str) -> TaskSettings:
    """A task's settings file, every key checked (`SETTINGS_RULES`); TaskError naming the file
    and the key when it is not valid settings: never a value read as another (a `unit_sec` of
    0 as "the longest clip", "5" or true as a number)."""
    try:
        raw = json.loads(fs.read_text(path), object_pairs_hook=_no_repeated_keys)
    except FileNotFoundError:
        raise TaskError(f"task settings not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TaskError(f"{path}: task settings cannot be read ({e})") from None
    except (json.JSONDecodeError, _RepeatedKey) as e:
        raise TaskError(f"{path}: task settings are not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise TaskError(f"{path}: task settings are a JSON {type(raw).__name__}, not an object")
    missing = [k for k in SETTINGS_RULES if k not in raw and k != "version"]
    unknown = [k for k in raw if k not in SETTINGS_RULES]
    if missing or unknown:
        what = "; ".join(
            f"{label} key{'s' if len(keys) > 1 else ''} {', '.join(map(json.dumps, keys))}"
            for label, keys in (("missing", missing), ("unknown", unknown))
            if keys
        )
        raise TaskError(f"{path}: {what} (task settings hold {', '.join(SETTINGS_RULES)})")
    for key, value in raw.items():
        rule = SETTINGS_RULES[key]
        if not rule.ok(value):
            raise TaskError(f'{path}: "{key}": {json.dumps(value)}; expected {rule.what}')
    return TaskSettings(**raw)


class _RepeatedKey(ValueError):
    pass


def _no_repeated_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose keys are all different (json.loads would keep the last one)."""
    out = {}
    for k, v in pairs:
        if k in out:
            raise _RepeatedKey(f"key {json.dumps(k)} given twice")
        out[k] = v
    return out


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(low: int) -> Callable[[object], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _text(v: object) -> bool:
    return isinstance(v, str) and v.strip() != ""


def _published(v: object) -> bool:
    return isinstance(v, dict) and all(
        _text(k) and _number(x) and 0 <= x <= 100 for k, x in v.items()
    )


# What each key of a settings file may hold (every key of `TaskSettings`, in its order).
SETTINGS_RULES: dict[str, Rule] = {
    "name": Rule(_text, "the task's name (a non-empty string)"),
    "csv": Rule(_text, "the task CSV's file name (a non-empty string)"),
    "audio_dir": Rule(_text, "the audio folder (a non-empty string)"),
    "unit_sec": Rule(lambda v: _number(v) and v > 0, "the clip length, a number of seconds > 0"),
    "folds": Rule(_integer(1), "an integer >= 1"),
    "classes": Rule(_integer(1), "an integer >= 1"),
    "metric": Rule(lambda v: v in ("accuracy", "mAP"), '"accuracy" or "mAP"'),
    "published": Rule(_published, "an object of run-name prefix -> accuracy in % (0 to 100)"),
    "expected_clips": Rule(lambda v: v is None or _integer(1)(v), "null or an integer >= 1"),
    "found_clips": Rule(_integer(0), "an integer >= 0"),
    "split": Rule(_text, "where the split comes from (a non-empty string)"),
    "version": Rule(lambda v: type(v) is int and v == SETTINGS_VERSION, f"{SETTINGS_VERSION}"),
}
