"""Task builders for the music datasets: GTZAN, NSynth and the Surge synthesizer tones."""

from __future__ import annotations

import json
import os

from msm_mae_jax.tasks.evar.layout import (
    SPLITS,
    Built,
    DatasetLayoutError,
    check_dir,
    left_out,
    list_files,
    shipped_split,
)

GTZAN_GENRES = (
    "blues",
    "classical",
    "country",
    "disco",
    "hiphop",
    "jazz",
    "metal",
    "pop",
    "reggae",
    "rock",
)


def gtzan(dataset_dir: str) -> Built:
    """GTZAN genres: `<genre>/<genre>.000NN.au` as in genres.tar.gz (or `.wav`, as in the
    copies that convert it, e.g. Kaggle's genres_original/); label = genre; split = the
    artist-filtered lists EVAR uses (shipped: 443 / 197 / 290; the other 70 files unused)."""
    base = check_dir(dataset_dir)
    for sub in ("", "genres", "genres_original", "Data/genres_original", "gtzan"):
        root = os.path.join(base, sub) if sub else base
        if any(os.path.isdir(os.path.join(root, g)) for g in GTZAN_GENRES):
            break
    else:
        raise DatasetLayoutError(
            f"{dataset_dir}: no genre folders ({', '.join(GTZAN_GENRES[:3])}, ...) (expected "
            "GTZAN's genres/ folder, or the folder holding it)"
        )
    table = shipped_split("gtzan_split.csv")
    rows, unused, seen = [], 0, set()
    for f in list_files(root, exts=(".wav", ".au")):
        genre, _, name = f.partition("/")
        if genre not in GTZAN_GENRES or "/" in name:
            continue
        key = f"{genre}/{os.path.splitext(name)[0]}"
        if key not in table:
            unused += 1
        elif key not in seen:  # a clip present as both .au and .wav counts once
            seen.add(key)
            rows.append((f, genre, table[key]))
    return Built(
        root,
        rows,
        "split",
        "EVAR's artist-filtered lists (jongpillee/music_dataset_split GTZAN_split)",
        left_out(unused, "files outside the artist-filtered lists left out (as in EVAR)"),
    )


def nsynth(dataset_dir: str) -> Built:
    """NSynth: `nsynth-{train,valid,test}/examples.json` and `.../audio/<note_str>.wav`;
    label = instrument_family_str; split = the folder."""
    base = check_dir(dataset_dir)
    for sub in ("", "nsynth"):
        root = os.path.join(base, sub) if sub else base
        present = [s for s in SPLITS if os.path.exists(_nsynth_json(root, s))]
        if present:
            break
    else:
        raise DatasetLayoutError(
            f"{dataset_dir}: no nsynth-train/examples.json, nsynth-valid/examples.json or "
            "nsynth-test/examples.json (expected the folder holding NSynth's nsynth-train, "
            "nsynth-valid and nsynth-test)"
        )
    rows = []
    for split in present:
        path = _nsynth_json(root, split)
        try:
            with open(path, encoding="utf-8") as f:
                examples = json.load(f)
            labels = {k: v["instrument_family_str"] for k, v in examples.items()}
        except (OSError, ValueError, AttributeError, TypeError, KeyError) as e:
            raise DatasetLayoutError(
                f"{path}: not NSynth's examples.json (a note -> attributes mapping with "
                f"instrument_family_str): {type(e).__name__}: {e}"
            ) from None
        have = set(list_files(root, f"nsynth-{split}/audio"))
        for key, label in labels.items():
            file = f"nsynth-{split}/audio/{key}.wav"
            if file in have:
                rows.append((file, label, split))
    missing = [f"nsynth-{s}" for s in SPLITS if s not in present]
    return Built(
        root,
        rows,
        "split",
        "official: the nsynth-train / nsynth-valid / nsynth-test folders",
        [f"{', '.join(missing)} not found: no clips from there"] if missing else [],
    )


def _nsynth_json(root: str, split: str) -> str:
    return os.path.join(root, f"nsynth-{split}", "examples.json")


def surge(dataset_dir: str) -> Built:
    """The Surge synthesizer pitch dataset (zenodo.org/record/4677097): `<tone>/<pitch>.ogg`;
    label = the file stem (pitch); split = EVAR's tone split (shipped: 1,692 / 195 / 197 of
    2,084 tones)."""
    base = check_dir(dataset_dir)
    for sub in ("", "surge"):
        root = os.path.join(base, sub) if sub else base
        files = [f for f in list_files(root, exts=(".ogg",)) if f.count("/") == 1]
        if files:
            break
    else:
        raise DatasetLayoutError(
            f"{dataset_dir}: no <tone>/<pitch>.ogg files (expected the Surge dataset folder: "
            "one folder per tone, surge-patches-...-velocity64/, one .ogg per pitch)"
        )
    tones = shipped_split("surge_tone_splits.csv")
    rows, unknown = [], 0
    for f in files:
        tone, _, name = f.partition("/")
        if tone in tones:
            rows.append((f, os.path.splitext(name)[0], tones[tone]))
        else:
            unknown += 1
    return Built(
        root,
        rows,
        "split",
        "EVAR's tone split (evar/predefined/dataset_surge_tone_splits.csv)",
        left_out(unknown, "files of tones outside EVAR's tone list left out"),
    )
