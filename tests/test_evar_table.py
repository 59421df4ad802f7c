"""The paper's task table against its sources, and the settings file of a built task: every
key checked, a bad value named with its file and key, never read as another value."""

import dataclasses
import json
import math
import pathlib
import re

import pytest

from msm_mae_jax.core.errors import TaskError
from msm_mae_jax.tasks.evar.table import (
    ORDER,
    SETTINGS_RULES,
    TASKS,
    TaskSettings,
    read_settings,
    write_settings,
)

# The official README's EVAR rows (single runs, seed 42), typed from the MSM-MAE repository's
# README as the project's reference notes give them, in EVAR's column order.
README_80x208 = dict(
    esc50=87.1,
    us8k=82.2,
    spcv2=91.1,
    vc1=49.7,
    voxforge=95.6,
    cremad=66.9,
    gtzan=75.9,
    nsynth=76.5,
    surge=37.8,
)
README_80x512 = dict(
    esc50=89.1,
    us8k=84.3,
    spcv2=93.1,
    vc1=56.1,
    voxforge=97.5,
    cremad=70.1,
    gtzan=79.3,
    nsynth=76.9,
    surge=37.5,
)
# EVAR's evar/ds_tasks.py (folds, unit_sec, classes), as in the reference notes' task table.
EVAR_TASKS = {
    "esc50": (5, 5.0, 50),
    "us8k": (10, 4.0, 10),
    "spcv2": (1, 1.0, 35),
    "vc1": (1, 8.2, 1251),
    "voxforge": (1, 5.8, 6),
    "cremad": (1, 2.5, 6),
    "gtzan": (1, 30.0, 10),
    "nsynth": (1, 4.0, 11),
    "surge": (1, 4.0, 88),
    "fsd50k": (1, 7.6358, 200),
}


def test_the_published_rows_are_the_official_readmes():
    assert ORDER == tuple(EVAR_TASKS)  # EVAR summarize.py's column order
    for name, info in TASKS.items():
        expected = {}
        if name in README_80x208:
            expected["80x208p16x16"] = README_80x208[name]
        if name in README_80x512:
            expected["80x512p16x16"] = README_80x512[name]
        # fsd50k: no published number
        assert dict(info.published) == expected, f"{name}: not the official README's numbers"
    # what a built task's settings carry (`tasks make`), for both input sizes
    for name in ORDER:
        s = TaskSettings.for_task(TASKS[name], audio_dir=".", found_clips=1, split="x")
        assert s.published == dict(TASKS[name].published)


def test_every_task_has_evars_folds_clip_length_classes_and_metric():
    for name, (folds, unit_sec, classes) in EVAR_TASKS.items():
        info = TASKS[name]
        got = (info.folds, info.unit_sec, info.classes)
        assert got == (folds, unit_sec, classes), f"{name}: not EVAR's folds, unit_sec, classes"
        assert info.metric == ("mAP" if name == "fsd50k" else "accuracy"), name
        s = TaskSettings.for_task(info, audio_dir=".", found_clips=1, split="x")
        assert (s.folds, s.unit_sec, s.classes, s.metric) == (folds, unit_sec, classes, info.metric)


def _settings_json(tmp_path, **changes):
    s = TaskSettings.for_task(TASKS["cremad"], audio_dir="audio", found_clips=12, split="test")
    path = write_settings(str(tmp_path / "cremad.json"), s)
    raw = json.loads(open(path).read())
    raw.update(changes)
    return path, raw


def test_settings_round_trip_and_the_rules_cover_every_key(tmp_path):
    assert list(SETTINGS_RULES) == [f.name for f in dataclasses.fields(TaskSettings)]
    s = TaskSettings.for_task(TASKS["fsd50k"], audio_dir="/data/fsd", found_clips=9, split="x")
    assert read_settings(write_settings(str(tmp_path / "fsd50k.json"), s)) == s
    path, raw = _settings_json(tmp_path)
    del raw["version"]  # optional: the first version's files
    (tmp_path / "cremad.json").write_text(json.dumps(raw))
    assert read_settings(path).unit_sec == 2.5


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("unit_sec", 0, '"unit_sec": 0; expected the clip length, a number of seconds > 0'),
        ("unit_sec", -1, '"unit_sec": -1; expected the clip length'),
        ("unit_sec", math.nan, '"unit_sec": NaN; expected the clip length'),
        ("unit_sec", math.inf, '"unit_sec": Infinity; expected the clip length'),
        ("unit_sec", "2.5", '"unit_sec": "2.5"; expected the clip length'),
        ("unit_sec", True, '"unit_sec": true; expected the clip length'),
        ("unit_sec", None, '"unit_sec": null; expected the clip length'),
        ("folds", 0, '"folds": 0; expected an integer >= 1'),
        ("folds", 1.5, '"folds": 1.5; expected an integer >= 1'),
        ("metric", "acc", '"metric": "acc"; expected "accuracy" or "mAP"'),
        ("published", {"80x208p16x16": "66.9"}, '"published": {"80x208p16x16": "66.9"}'),
        ("published", {"80x208p16x16": 669}, "accuracy in % (0 to 100)"),
        ("name", "", '"name": ""; expected the task\'s name'),
        ("csv", ["cremad.csv"], '"csv": ["cremad.csv"]; expected the task CSV'),
        ("expected_clips", 0, '"expected_clips": 0; expected null or an integer >= 1'),
        ("found_clips", -1, '"found_clips": -1; expected an integer >= 0'),
        ("version", 2, '"version": 2; expected 1'),
        ("unitsec", 2.5, 'unknown key "unitsec" (task settings hold name, csv,'),
    ],
)
def test_a_bad_value_is_named_with_its_file_and_key(tmp_path, key, value, message):
    path, raw = _settings_json(tmp_path, **{key: value})
    (tmp_path / "cremad.json").write_text(json.dumps(raw))
    with pytest.raises(TaskError) as e:
        read_settings(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_a_damaged_file_is_named_never_read_in_part(tmp_path):
    path, raw = _settings_json(tmp_path)
    text = json.dumps(raw, indent=2)
    cases = {
        text[: len(text) // 2]: "task settings are not valid JSON (",
        "": "task settings are not valid JSON (Expecting value",
        "[1, 2]": "task settings are a JSON list, not an object",
        text[:-2] + ', "unit_sec": 0}': 'not valid JSON (key "unit_sec" given twice)',
        json.dumps({k: v for k, v in raw.items() if k != "unit_sec"}): 'missing key "unit_sec"',
    }
    for content, message in cases.items():
        (tmp_path / "cremad.json").write_text(content)
        with pytest.raises(TaskError) as e:
            read_settings(path)
        assert str(e.value).startswith(f"{path}: ") and message in str(e.value), str(e.value)
    (tmp_path / "cremad.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(TaskError, match="task settings cannot be read"):
        read_settings(path)


def test_the_readme_quotes_the_published_numbers():
    """README "Results" quotes both rows: the same numbers as the official README."""
    readme = " ".join((pathlib.Path(__file__).parents[1] / "README.md").read_text().split())
    names = {
        "ESC-50": "esc50",
        "US8K": "us8k",
        "SPCV2": "spcv2",
        "VoxCeleb1": "vc1",
        "VoxForge": "voxforge",
        "CREMA-D": "cremad",
        "GTZAN": "gtzan",
        "NSynth": "nsynth",
        "Surge": "surge",
    }
    quoted = re.findall(rf"\b({'|'.join(names)}) (\d+\.\d) / (\d+\.\d)\b", readme)
    assert sorted(q[0] for q in quoted) == sorted(names), quoted
    for label, a208, a512 in quoted:
        task = names[label]
        assert (float(a208), float(a512)) == (README_80x208[task], README_80x512[task]), label
