"""`msm-mae tasks make`: every builder on a small tree in its dataset's published layout.

Each fixture writes the dataset's real metadata format (column names, file-name patterns) and
a few 0.05 s audio files; the written CSV is compared row by row with the expected rows, and
the settings file is read back. Partial and wrong folders go through the real command.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from msm_mae_jax.tasks.evar import layout, make
from msm_mae_jax.tasks.evar.table import ORDER, TASKS, read_settings


def _audio(root, *rels):
    for rel in rels:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        sf.write(path, np.zeros(400, np.float32), 8000)


def _text(root, rel, text):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _build(name, dataset_dir, out_dir):
    made = make.make_task(name, str(dataset_dir), str(out_dir))
    with open(made.csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    settings = read_settings(made.settings_path)
    for file_name, *_ in rows[1:]:  # file_name is relative to the settings' audio_dir
        assert os.path.isfile(os.path.join(settings.audio_path(made.settings_path), file_name))
    return made, rows, settings


def test_esc50_keeps_the_metadata_order_folds_and_categories(tmp_path):
    root = tmp_path / "dl" / "ESC-50-master"
    _text(
        root,
        "meta/esc50.csv",
        "filename,fold,target,category,esc10,src_file,take\n"
        "1-100038-A-14.wav,1,14,chirping_birds,False,100038,A\n"
        "1-100032-A-0.wav,1,0,dog,True,100032,A\n"
        "5-9032-A-0.wav,5,0,dog,True,9032,A\n",
    )
    _audio(root, "audio/1-100038-A-14.wav", "audio/1-100032-A-0.wav", "audio/5-9032-A-0.wav")
    made, rows, s = _build("esc50", tmp_path / "dl", tmp_path / "out")  # the folder holding it
    assert rows == [
        ["file_name", "label", "fold"],
        ["audio/1-100038-A-14.wav", "chirping_birds", "1"],
        ["audio/1-100032-A-0.wav", "dog", "1"],
        ["audio/5-9032-A-0.wav", "dog", "5"],
    ]
    assert (s.name, s.csv, s.unit_sec, s.folds, s.classes, s.metric) == (
        "esc50", "esc50.csv", 5.0, 5, 50, "accuracy",
    )  # fmt: skip
    assert s.published == {"80x208p16x16": 87.1, "80x512p16x16": 89.1}
    assert (s.expected_clips, s.found_clips, s.audio_dir) == (2000, 3, str(root))
    assert s.split.startswith("official")
    assert made.lines[0] == f"esc50: 3 of 2,000 clips found in {tmp_path / 'dl'}"
    assert "(2 classes; fold 1 2, fold 5 1)" in made.lines[1]
    assert made.lines[2] == "esc50: no clips in fold 2, 3, 4"


def test_us8k_paths_by_fold(tmp_path):
    root = tmp_path / "UrbanSound8K"
    _text(
        root,
        "metadata/UrbanSound8K.csv",
        "slice_file_name,fsID,start,end,salience,fold,classID,class\n"
        "100032-3-0-0.wav,100032,0.0,0.317551,1,5,3,dog_bark\n"
        "100263-2-0-117.wav,100263,58.5,62.5,1,5,2,children_playing\n"
        "101415-3-0-2.wav,101415,1.0,5.0,1,10,3,dog_bark\n",
    )
    _audio(root, "audio/fold5/100032-3-0-0.wav", "audio/fold5/100263-2-0-117.wav")
    _audio(root, "audio/fold10/101415-3-0-2.wav")
    _, rows, s = _build("us8k", root, tmp_path / "out")
    assert rows[1:] == [
        ["audio/fold5/100032-3-0-0.wav", "dog_bark", "5"],
        ["audio/fold5/100263-2-0-117.wav", "children_playing", "5"],
        ["audio/fold10/101415-3-0-2.wav", "dog_bark", "10"],
    ]
    assert (s.folds, s.unit_sec, s.expected_clips, s.found_clips) == (10, 4.0, 8732, 3)


def test_spcv2_lists_decide_valid_and_test_and_background_noise_is_left_out(tmp_path):
    root = tmp_path / "speech_commands_v0.02"
    _audio(root, "yes/0a7c2a8d_nohash_0.wav", "yes/0a9f9af7_nohash_1.wav")
    _audio(root, "no/0a7c2a8d_nohash_0.wav", "_background_noise_/white_noise.wav")
    _text(root, "validation_list.txt", "yes/0a9f9af7_nohash_1.wav\n")
    _text(root, "testing_list.txt", "no/0a7c2a8d_nohash_0.wav\nno/ffffffff_nohash_0.wav\n")
    _text(root, "README.md", "Speech Commands\n")
    _, rows, s = _build("spcv2", tmp_path, tmp_path / "out")
    assert rows == [
        ["file_name", "label", "split"],
        ["no/0a7c2a8d_nohash_0.wav", "no", "test"],
        ["yes/0a7c2a8d_nohash_0.wav", "yes", "train"],
        ["yes/0a9f9af7_nohash_1.wav", "yes", "valid"],
    ]
    assert (s.folds, s.unit_sec, s.classes, s.expected_clips) == (1, 1.0, 35, 105_829)


def test_vc1_follows_iden_split_and_drops_absent_files(tmp_path):
    _text(
        tmp_path,
        "iden_split.txt",
        "1 id10001/1zcIwhmdeo4/00001.wav\n3 id10001/1zcIwhmdeo4/00002.wav\n"
        "2 id10002/6WO410QOeuo/00001.wav\n1 id10002/C7k7C-PDvAA/00001.wav\n",
    )
    _audio(tmp_path, "wav/id10001/1zcIwhmdeo4/00001.wav", "wav/id10001/1zcIwhmdeo4/00002.wav")
    _audio(tmp_path, "wav/id10002/6WO410QOeuo/00001.wav")
    made, rows, s = _build("vc1", tmp_path, tmp_path / "out")
    assert rows[1:] == [
        ["wav/id10001/1zcIwhmdeo4/00001.wav", "id10001", "train"],
        ["wav/id10001/1zcIwhmdeo4/00002.wav", "id10001", "test"],
        ["wav/id10002/6WO410QOeuo/00001.wav", "id10002", "valid"],
    ]
    assert made.lines[0] == f"vc1: 3 of 153,516 clips found in {tmp_path}"


def test_voxforge_language_from_the_path_and_a_stable_archive_split(tmp_path):
    base = "www.repository.voxforge1.org/downloads/{}/Trunk/Audio/Main/16kHz_16bit/{}/wav/{}"
    files = [
        base.format("de", "1337ad-20170321-amr", "de11-001.wav"),
        base.format("de", "1337ad-20170321-amr", "de11-002.wav"),
        base.format("en", "ralph-20080808-xyz", "a0001.wav"),
        base.format("ru", "olga-20130303-jkl", "ru_0001.wav"),
    ]
    _audio(tmp_path, *files, "stray/x.wav")
    _text(tmp_path, base.format("de", "1337ad-20170321-amr", "../etc/README"), "Language: DE\n")
    made, rows, s = _build("voxforge", tmp_path, tmp_path / "out")
    # the split of each archive is fixed by (seed, language/archive): literal values guard it
    assert rows[1:] == [
        [files[0], "de", "train"],
        [files[1], "de", "train"],
        [files[2], "en", "test"],
        [files[3], "ru", "valid"],
    ]
    assert "voxforge: 1 .wav files outside a language folder left out" in made.lines
    assert s.split.startswith("seeded: archive-disjoint 70/15/15")


def test_list_files_stays_in_the_dataset_and_lists_regular_files(tmp_path):
    """Links inside the dataset are followed (each folder once, a cycle too); links out of it
    (a folder elsewhere, `/`, a file elsewhere) are not, nor FIFOs or empty files: each is
    counted in the notes `tasks make` shows."""
    root = tmp_path / "root"
    _audio(root, "a/1.wav", "a/2.WAV", "a/.hidden.wav", "top.wav")
    _text(root, "a/3.txt", "not audio")
    os.symlink(root / "a", root / "again")  # the same folder again: walked once
    os.symlink(root, root / "a" / "loop")  # a cycle
    os.symlink(root / "top.wav", root / "alias.wav")  # a file inside: listed
    _audio(tmp_path / "elsewhere", "x.wav")
    os.symlink(tmp_path / "elsewhere", root / "out")
    os.symlink("/", root / "slash")  # the whole file system: never walked
    os.symlink(tmp_path / "elsewhere" / "x.wav", root / "linked.wav")
    os.mkfifo(root / "a" / "fifo.wav")
    (root / "a" / "empty.wav").write_bytes(b"")
    with layout.scan_notes() as notes:
        got = layout.list_files(str(root))
    assert got == ["a/1.wav", "a/2.WAV", "alias.wav", "top.wav"]
    assert notes == [
        f"3 skipped: a symbolic link out of {root}, not followed",
        "1 skipped: empty (0 bytes)",
        "1 skipped: a named pipe (FIFO), not a regular file",
    ]
    assert layout.list_files(str(root), "a", recursive=False) == ["a/1.wav", "a/2.WAV"]


def test_seeded_split_proportions_and_independence():
    keys = [f"en/speaker{i}-2010-x" for i in range(4000)]
    splits = [layout.seeded_split(k, 42, (0.7, 0.15, 0.15)) for k in keys]
    share = {s: n / len(keys) for s, n in Counter(splits).items()}
    assert abs(share["train"] - 0.70) < 0.03 and abs(share["valid"] - 0.15) < 0.02
    assert abs(share["test"] - 0.15) < 0.02
    assert [layout.seeded_split(k, 42, (0.7, 0.15, 0.15)) for k in keys[::7]] == splits[::7]
    other = [layout.seeded_split(k, 43, (0.7, 0.15, 0.15)) for k in keys]
    assert sum(a != b for a, b in zip(splits, other, strict=True)) > 1000  # the seed matters


def test_cremad_actor_split_from_the_checkout(tmp_path):
    names = ["1001_DFA_ANG_XX.wav", "1002_IEO_HAP_HI.wav", "1009_ITS_SAD_XX.wav"]
    _audio(tmp_path, *[f"AudioWAV/{n}" for n in names], "AudioWAV/1092_DFA_NEU_XX.wav")
    _text(tmp_path, "processedResults/summaryTable.csv", "x\n")
    made, rows, s = _build("cremad", tmp_path, tmp_path / "out")
    assert rows[1:] == [
        ["1001_DFA_ANG_XX.wav", "ANG", "test"],
        ["1002_IEO_HAP_HI.wav", "HAP", "train"],
        ["1009_ITS_SAD_XX.wav", "SAD", "valid"],
    ]
    assert s.audio_dir == str(tmp_path / "AudioWAV")
    assert "cremad: 1 files of actors outside EVAR's 91 left out" in made.lines


def test_gtzan_artist_filtered_split_au_files(tmp_path):
    root = tmp_path / "genres"
    clips = ["blues/blues.00000", "blues/blues.00012", "blues/blues.00029", "jazz/jazz.00054"]
    _audio(root, *[f"{c}.au" for c in clips], "country/country.00008.au")  # 00008: unused
    _audio(root, "rock/rock.00000.wav")
    made, rows, s = _build("gtzan", tmp_path, tmp_path / "out")
    assert rows[1:] == [
        ["blues/blues.00000.au", "blues", "valid"],
        ["blues/blues.00012.au", "blues", "test"],
        ["blues/blues.00029.au", "blues", "train"],
        ["jazz/jazz.00054.au", "jazz", "train"],
        ["rock/rock.00000.wav", "rock", "train"],
    ]
    assert "gtzan: 1 files outside the artist-filtered lists left out (as in EVAR)" in made.lines
    assert (s.unit_sec, s.expected_clips) == (30.0, 930)


def test_gtzan_clip_present_as_au_and_wav_counts_once(tmp_path):
    """A genres folder with converted .wav copies beside the .au originals: one row per clip
    (the .au), the clips found and the classes counted once."""
    root = tmp_path / "genres"
    clips = ["blues/blues.00000", "blues/blues.00029", "jazz/jazz.00054", "rock/rock.00000"]
    _audio(root, *[f"{c}.au" for c in clips], *[f"{c}.wav" for c in clips[1:]])
    made, rows, s = _build("gtzan", tmp_path, tmp_path / "out")
    assert rows[1:] == [
        ["blues/blues.00000.au", "blues", "valid"],
        ["blues/blues.00029.au", "blues", "train"],
        ["jazz/jazz.00054.au", "jazz", "train"],
        ["rock/rock.00000.au", "rock", "train"],
    ]
    assert s.found_clips == 4 and made.lines[0].startswith("gtzan: 4 of 930 clips found")


def _nsynth_note(family, note):
    return {
        "note_str": note,
        "instrument_family_str": family,
        "instrument_source_str": "acoustic",
        "pitch": 50,
        "velocity": 50,
        "sample_rate": 16000,
        "qualities_str": [],
    }


def test_nsynth_split_by_folder_label_by_family(tmp_path):
    notes = {
        "train": ["guitar_acoustic_001-082-050", "bass_synthetic_033-022-050"],
        "valid": ["keyboard_electronic_001-021-127"],
        "test": ["mallet_acoustic_047-094-075", "organ_electronic_104-056-025"],
    }
    for split, keys in notes.items():
        entries = {k: _nsynth_note(k.split("_")[0], k) for k in keys}
        _text(tmp_path, f"nsynth-{split}/examples.json", json.dumps(entries))
        _audio(tmp_path, *[f"nsynth-{split}/audio/{k}.wav" for k in keys[:2]])
    os.remove(tmp_path / "nsynth-test/audio/organ_electronic_104-056-025.wav")
    _, rows, _ = _build("nsynth", tmp_path, tmp_path / "out")
    assert rows[1:] == [
        ["nsynth-train/audio/guitar_acoustic_001-082-050.wav", "guitar", "train"],
        ["nsynth-train/audio/bass_synthetic_033-022-050.wav", "bass", "train"],
        ["nsynth-valid/audio/keyboard_electronic_001-021-127.wav", "keyboard", "valid"],
        ["nsynth-test/audio/mallet_acoustic_047-094-075.wav", "mallet", "test"],
    ]


def test_surge_tone_split_and_pitch_label(tmp_path):
    tones = {
        "surge-patches-3rdparty-Argitoth-Drums-Kick-velocity64": "valid",
        "surge-patches-3rdparty-Argitoth-Drums-Snare-velocity64": "train",
        "surge-patches-factory-Basses-Bass-1-velocity64": "test",
    }
    for tone in tones:
        _audio(tmp_path, f"{tone}/21.ogg", f"{tone}/108.ogg")
    _audio(tmp_path, "surge-patches-unknown-velocity64/60.ogg")
    made, rows, _ = _build("surge", tmp_path, tmp_path / "out")
    expected = [[f"{t}/{p}.ogg", p, s] for t, s in sorted(tones.items()) for p in ("108", "21")]
    assert rows[1:] == expected
    assert "surge: 1 files of tones outside EVAR's tone list left out" in made.lines


def test_fsd50k_multilabel_labels_in_one_quoted_field(tmp_path):
    music = "Electric_guitar,Guitar,Plucked_string_instrument,Musical_instrument,Music"
    _text(
        tmp_path,
        "FSD50K.ground_truth/dev.csv",
        "fname,labels,mids,split\n"
        f'64760,"{music}","/m/02sgy,/m/0342h,/m/0fx80y,/m/04szw,/m/04rlf",train\n'
        '16399,"Bark,Dog,Domestic_animals_and_pets","/m/05tny_,/m/0bt9lr,/m/068hy",val\n',
    )
    _text(tmp_path, "FSD50K.ground_truth/eval.csv", "fname,labels,mids\n37199,Music,/m/04rlf\n")
    _audio(tmp_path, "FSD50K.dev_audio/64760.wav", "FSD50K.dev_audio/16399.wav")
    _audio(tmp_path, "FSD50K.eval_audio/37199.wav")
    made, rows, s = _build("fsd50k", tmp_path, tmp_path / "out")
    with open(made.csv_path, encoding="utf-8") as f:
        assert f.read().splitlines() == [
            "file_name,label,split",
            f'FSD50K.dev_audio/64760.wav,"{music}",train',
            'FSD50K.dev_audio/16399.wav,"Bark,Dog,Domestic_animals_and_pets",valid',
            "FSD50K.eval_audio/37199.wav,Music,test",
        ]
    assert (s.metric, s.classes, s.expected_clips, s.published) == ("mAP", 200, 51_197, {})
    assert "(8 classes; train 1, valid 1, test 1)" in made.lines[1]


def test_shipped_split_lists_hold_evar_counts():
    gtzan = layout.shipped_split("gtzan_split.csv")
    assert Counter(gtzan.values()) == {"train": 443, "valid": 197, "test": 290}
    assert TASKS["gtzan"].expected_clips == len(gtzan) == 930
    assert all(k.split("/")[1].startswith(k.split("/")[0] + ".") for k in gtzan)
    # first and last entries of the published index lists (1-based, genre-major order)
    for index, split in ((30, "train"), (1000, "train"), (1, "valid"), (986, "valid")):
        genre = "blues classical country disco hiphop jazz metal pop reggae rock".split()
        g, n = genre[(index - 1) // 100], (index - 1) % 100
        assert gtzan[f"{g}/{g}.{n:05d}"] == split
    assert gtzan["blues/blues.00012"] == gtzan["rock/rock.00090"] == "test"
    actors = layout.shipped_split("cremad_actors.csv")
    assert sorted(actors) == [str(a) for a in range(1001, 1092)]
    assert Counter(actors.values()) == {"train": 63, "valid": 9, "test": 19}
    tones = layout.shipped_split("surge_tone_splits.csv")
    assert Counter(tones.values()) == {"train": 1692, "valid": 195, "test": 197}
    assert len(tones) * 88 == TASKS["surge"].expected_clips
    assert all(t.startswith("surge-patches-") and t.endswith("-velocity64") for t in tones)


def test_every_task_has_a_builder_and_the_list_command_shows_them(capsys):
    from msm_mae_jax.cli import tasks

    assert tuple(make.BUILDERS) == ORDER
    assert tasks.main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[1:]] == list(ORDER)
    assert "87.1 / 89.1" in out[1] and "7.6358" in out[-1]


def _run(*args):
    cmd = [sys.executable, "-m", "msm_mae_jax", "tasks", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture
def partial_esc50(tmp_path):
    root = tmp_path / "ESC-50-master"
    _text(
        root,
        "meta/esc50.csv",
        "filename,fold,target,category,esc10,src_file,take\n"
        "1-100032-A-0.wav,1,0,dog,True,100032,A\n"
        "2-100648-A-43.wav,2,43,chirping_birds,False,100648,A\n"
        "3-100018-A-3.wav,3,3,cow,False,100018,A\n",
    )
    _audio(root, "audio/1-100032-A-0.wav", "audio/2-100648-A-43.wav")
    return root


def test_command_partial_folder_gives_the_task_of_what_is_there(partial_esc50, tmp_path):
    out = _run("make", "esc50", partial_esc50, tmp_path / "out")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"esc50: 2 of 2,000 clips found in {partial_esc50}"
    assert lines[-1] == "esc50: no clips in fold 3, 4, 5"
    assert read_settings(str(tmp_path / "out" / "esc50.json")).found_clips == 2


def test_command_wrong_folder_is_one_line_naming_what_is_missing(partial_esc50, tmp_path):
    out = _run("make", "gtzan", partial_esc50, tmp_path / "out")
    assert out.returncode == 2 and out.stdout == ""
    (line,) = out.stderr.splitlines()
    assert f"{partial_esc50}: no genre folders" in line and "GTZAN's genres/" in line
    for f in os.listdir(partial_esc50 / "audio"):
        os.remove(partial_esc50 / "audio" / f)
    out = _run("make", "esc50", partial_esc50, tmp_path / "out")
    assert out.returncode == 2 and "none of the esc50 clips found" in out.stderr
    assert not (tmp_path / "out").exists()


def test_command_starts_neither_jax_nor_tensorflow():
    probe = (
        "import sys; from msm_mae_jax.cli.main import main; rc = main(['tasks', 'list']); "
        "print([m for m in ('jax', 'tensorflow', 'torch') if m in sys.modules]); sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.splitlines()[-1] == "[]", out.stderr
