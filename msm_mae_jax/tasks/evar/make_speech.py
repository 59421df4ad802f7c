"""Task builders for the speech datasets: Speech Commands V2, VoxCeleb1, VoxForge, CREMA-D."""

from __future__ import annotations

import os
import re

from msm_mae_jax.tasks.evar.layout import (
    Built,
    DatasetLayoutError,
    check_dir,
    find_root,
    left_out,
    list_files,
    read_lines,
    seeded_split,
    shipped_split,
)


def spcv2(dataset_dir: str) -> Built:
    """Speech Commands V2: `<word>/<speaker>_nohash_<n>.wav` (not `_background_noise_`);
    `validation_list.txt` -> valid, `testing_list.txt` -> test, the rest train."""
    root = find_root(
        dataset_dir,
        "testing_list.txt",
        ("speech_commands_v0.02",),
        "the unpacked speech_commands_v0.02 folder with one folder per word and "
        "validation_list.txt / testing_list.txt",
    )
    valid = set(read_lines(_need(root, "validation_list.txt", "beside testing_list.txt")))
    test = set(read_lines(os.path.join(root, "testing_list.txt")))
    rows = []
    for f in list_files(root):
        word = f.split("/")[0]
        if f.count("/") == 1 and word[:1].islower():  # EVAR's [a-z]*/*.wav
            split = "test" if f in test else "valid" if f in valid else "train"
            rows.append((f, word, split))
    return Built(root, rows, "split", "official: validation_list.txt and testing_list.txt")


_IDEN = {"1": "train", "2": "valid", "3": "test"}


def vc1(dataset_dir: str) -> Built:
    """VoxCeleb1: `wav/idNNNNN/<video>/NNNNN.wav` and the identification split list
    `iden_split.txt` (lines `1 id10001/1zcIwhmdeo4/00001.wav`; 1 train, 2 valid, 3 test)
    beside `wav/`; label = speaker id."""
    root = find_root(
        dataset_dir,
        "iden_split.txt",
        ("VoxCeleb1",),
        "VoxCeleb1's wav/ folder and, beside it, iden_split.txt, the identification split "
        "list from the VoxCeleb1 page",
    )
    _need(root, "wav", "VoxCeleb1's wav/idNNNNN/<video>/NNNNN.wav beside iden_split.txt")
    path = os.path.join(root, "iden_split.txt")
    rows = []
    for i, line in enumerate(read_lines(path), start=1):
        parts = line.split()
        if len(parts) != 2 or parts[0] not in _IDEN or parts[1].count("/") != 2:
            raise DatasetLayoutError(
                f"{path}: line {i} is {line!r} (expected e.g. '1 id10001/1zcIwhmdeo4/00001.wav')"
            )
        rows.append((f"wav/{parts[1]}", parts[1].split("/")[0], _IDEN[parts[0]]))
    have = set(list_files(root, "wav"))
    return Built(root, [r for r in rows if r[0] in have], "split", "official: iden_split.txt")


VOXFORGE_LANGUAGES = ("de", "en", "es", "fr", "it", "ru")
VOXFORGE_SEED = 42
VOXFORGE_RATIOS = (0.70, 0.15, 0.15)


def voxforge(dataset_dir: str) -> Built:
    """VoxForge, the archives TFDS lists (voxforge_urls.txt), downloaded with `wget -x` and
    unpacked in place: `.../<lang>/Trunk/Audio/Main/16kHz_16bit/<archive>/wav/*.wav`. Label =
    the language folder; split: archive-disjoint 70/15/15 drawn from a seeded hash of
    language/archive (EVAR also splits by archive, but its own draw is not published)."""
    root = check_dir(dataset_dir)
    rows, outside = [], 0
    for f in list_files(root):
        parts = f.split("/")
        lang = next((p for p in parts[:-1] if p in VOXFORGE_LANGUAGES), None)
        if lang is None:
            outside += 1
            continue
        archive = parts[-3] if len(parts) >= 3 and parts[-2] == "wav" else parts[-2]
        rows.append((f, lang, seeded_split(f"{lang}/{archive}", VOXFORGE_SEED, VOXFORGE_RATIOS)))
    if not rows:
        raise DatasetLayoutError(
            f"{dataset_dir}: no .wav files below a language folder "
            f"({', '.join(VOXFORGE_LANGUAGES)}) (expected the VoxForge archives unpacked in "
            "place: .../<lang>/Trunk/Audio/Main/16kHz_16bit/<archive>/wav/*.wav)"
        )
    return Built(
        root,
        rows,
        "split",
        f"seeded: archive-disjoint 70/15/15 (sha256 of seed {VOXFORGE_SEED} and "
        "language/archive); EVAR's own archive split is not published",
        left_out(outside, ".wav files outside a language folder left out"),
    )


_CREMAD = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})\.wav$")


def cremad(dataset_dir: str) -> Built:
    """CREMA-D: `AudioWAV/{actor}_{sentence}_{EMO}_{level}.wav`; label = EMO (ANG DIS FEA
    HAP NEU SAD); split = EVAR's speaker-disjoint actor split (shipped: 63/9/19 actors)."""
    base = check_dir(dataset_dir)
    actors = shipped_split("cremad_actors.csv")
    for sub in ("", "AudioWAV", "CREMA-D/AudioWAV"):
        root = os.path.join(base, sub) if sub else base
        names = sorted(n for n in list_files(root, recursive=False) if _CREMAD.match(n))
        if names:
            break
    else:
        raise DatasetLayoutError(
            f"{dataset_dir}: no <actor>_<sentence>_<emotion>_<level>.wav files (expected "
            "CREMA-D's AudioWAV/ folder, or the folder holding it)"
        )
    rows, unknown = [], 0
    for n in names:
        actor, _, emotion, _ = _CREMAD.match(n).groups()
        if actor in actors:
            rows.append((n, emotion, actors[actor]))
        else:
            unknown += 1
    return Built(
        root,
        rows,
        "split",
        "EVAR's actor split (evar/metadata/cremad.csv): 63 train / 9 valid / 19 test actors",
        left_out(unknown, "files of actors outside EVAR's 91 left out"),
    )


def _need(root: str, name: str, expected: str) -> str:
    path = os.path.join(root, name)
    if not os.path.exists(path):
        raise DatasetLayoutError(f"{root}: no {name} (expected {expected})")
    return path
