"""HEAR's own tools on this model, through their command lines: hear-validator and
hear-eval-kit's embedding runner on two small HEAR-format tasks written here."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile as sf
from model_utils import small_model

from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.features.runtime import Runtime
from msm_mae_jax.model import artifact, mae

pytest.importorskip("heareval", reason="hear-eval-kit is installed by `make setup-dev`")
pytest.importorskip("hearvalidator", reason="hear-validator is installed by `make setup-dev`")

CFG = small_model()
SR = 16000
SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    params = mae.init_params(CFG, jax.random.key(3))["encoder"]
    path = tmp_path_factory.mktemp("hear_tools_model")
    return artifact.save_model_dir(str(path), CFG, params, NormStats(-6.0, 4.0), source="init")


def _run(args, cwd, timeout=240):
    """A HEAR tool as a user runs it; its output is shown when it fails."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    r = subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    assert r.returncode == 0, (
        f"{args[:3]} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    )
    return r


@pytest.mark.slow
def test_hear_validator(model_dir, tmp_path):
    validator = pathlib.Path(sys.executable).with_name("hear-validator")
    r = _run([str(validator), "msm_mae_jax.hear", "--model", model_dir], cwd=tmp_path)
    assert "Received tensorflow Module" in r.stdout and "Looks good!" in r.stdout
    assert "Interval between timestamps is 160.0ms" in r.stdout


# Two tasks as hear-preprocess writes them. Event labels are intervals in milliseconds.
EVENT_SECONDS = 1.98
EVENTS = {  # file -> events; the runner labels each timestamp that falls inside an event
    "a.wav": [{"label": "beep", "start": 300.0, "end": 650.0}],
    "b.wav": [
        {"label": "beep", "start": 0.0, "end": 250.0},
        {"label": "hum", "start": 1000.0, "end": 1980.0},
    ],
}


def _write_task(root, name, embedding_type, seconds, labels_by_file, vocabulary):
    task = root / name
    meta = {
        "task_name": name,
        "version": "test",
        "embedding_type": embedding_type,
        "prediction_type": "multiclass" if embedding_type == "scene" else "multilabel",
        "split_mode": "trainvaltest",
        "sample_duration": seconds,
        "evaluation": ["top1_acc"] if embedding_type == "scene" else ["event_onset_200ms_fms"],
        "splits": list(SPLITS),
    }
    (task / str(SR)).mkdir(parents=True)
    (task / "task_metadata.json").write_text(json.dumps(meta))
    (task / "labelvocabulary.csv").write_text(
        "idx,label\n" + "".join(f"{i},{v}\n" for i, v in enumerate(vocabulary))
    )
    rng = np.random.default_rng(len(name))
    for split in SPLITS:
        (task / str(SR) / split).mkdir()
        for file in labels_by_file:
            # Different loudness per clip: a mix-up of files or clips shows in the embeddings.
            wav = rng.uniform(-1, 1, round(seconds * SR)) * rng.uniform(0.05, 0.9)
            sf.write(task / str(SR) / split / file, wav, SR, subtype="PCM_16")
        (task / f"{split}.json").write_text(json.dumps(labels_by_file))
    return task


def _read_split(task, split, files):
    """The clips of a split, read as the runner reads them (float32), in its order."""
    return np.stack([sf.read(task / str(SR) / split / f, dtype=np.float32)[0] for f in files])


@pytest.mark.slow
def test_heareval_embedding_runner(model_dir, tmp_path):
    tasks = tmp_path / "tasks"
    scene_labels = {"dog.wav": ["dog"], "cat.wav": ["cat"], "dog2.wav": ["dog"]}
    scene = _write_task(tasks, "tiny_scene", "scene", 1.0, scene_labels, ["cat", "dog"])
    event = _write_task(tasks, "tiny_event", "event", EVENT_SECONDS, EVENTS, ["beep", "hum"])
    cmd = [sys.executable, "-m", "heareval.embeddings.runner", "msm_mae_jax.hear"]
    _run([*cmd, "--model", model_dir, "--tasks-dir", str(tasks)], cwd=tmp_path)

    out = tmp_path / "embeddings" / "msm_mae_jax.hear"
    rt = Runtime.load(model_dir)
    d = rt.feature_dim
    for split in SPLITS:
        # scene: one [D] vector per file, the Runtime's own for the same audio
        want_BD = rt.scene_embeddings(_read_split(scene, split, list(scene_labels)))
        for i, (file, labels) in enumerate(scene_labels.items()):
            got_D = np.load(out / "tiny_scene" / split / f"{file}.embedding.npy")
            assert got_D.shape == (d,) and got_D.dtype == np.float32
            np.testing.assert_allclose(got_D, want_BD[i], rtol=0, atol=1e-6)
            target = json.loads(
                (out / "tiny_scene" / split / f"{file}.target-labels.json").read_text()
            )
            assert target == labels
        dims = json.loads((out / "tiny_scene" / f"{split}.embedding-dimensions.json").read_text())
        assert dims == [len(scene_labels), d]

        # event: [T, D] per file with its timestamps in ms and the labels at each of them
        want_BTD, want_ts_BT = rt.timestamp_embeddings(_read_split(event, split, list(EVENTS)))
        steps = want_BTD.shape[1]
        for i, (file, events) in enumerate(EVENTS.items()):
            stem = out / "tiny_event" / split / file
            got_TD = np.load(f"{stem}.embedding.npy")
            assert got_TD.shape == (steps, d) == (13, d)
            np.testing.assert_allclose(got_TD, want_BTD[i], rtol=0, atol=1e-6)
            ts = json.loads(pathlib.Path(f"{stem}.timestamps.json").read_text())
            np.testing.assert_allclose(ts, want_ts_BT[i], atol=1e-3)
            np.testing.assert_allclose(ts, 60.0 + 160.0 * np.arange(steps), atol=1e-3)
            per_step = json.loads(pathlib.Path(f"{stem}.target-labels.json").read_text())
            want_labels = [
                [e["label"] for e in events if e["start"] <= t <= e["end"] + 1e-4] for t in ts
            ]
            assert per_step == want_labels
        dims = json.loads((out / "tiny_event" / f"{split}.embedding-dimensions.json").read_text())
        assert dims == [len(EVENTS) * steps, d]
    for task in ("tiny_scene", "tiny_event"):
        assert (out / task / ".done.embeddings").exists()
    # Millisecond timestamps put the events where they are: a.wav's beep at 380 and 540 ms.
    a_labels = json.loads((out / "tiny_event" / "test" / "a.wav.target-labels.json").read_text())
    assert [i for i, lab in enumerate(a_labels) if lab] == [2, 3]
