"""Silent corruption is caught: array checksums (checkpoints and exports record them at save,
check them at load), the exports' further files, and overwritten bytes in `lms:` shards. A
flipped bit is one line naming what changed, never different features or a NaN loss later."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from model_utils import small_model
from train_utils import tiny_config

from msm_mae_jax.core.errors import DataError
from msm_mae_jax.data import lms_shards
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.features.runtime import Runtime
from msm_mae_jax.finetune import export as ft_export
from msm_mae_jax.model import artifact, checksums, mae
from msm_mae_jax.train import checkpoints, optim
from msm_mae_jax.train.state import Setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = small_model()
MESH = (("data", 1), ("fsdp", 1), ("tensor", 1))
FLAGS = {"batch_size": 4, "data.synthetic_clips": 8, "data.norm_mean": -9.0, "data.norm_std": 4.0}


def _env():
    return {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}


def _reference(a: np.ndarray) -> str:
    """The checksum by its definition, in uint64 arithmetic (no blocks, no wrap-around)."""
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    u = a.reshape(-1).view({1: np.uint8, 2: np.uint16, 4: np.uint32}[a.itemsize])
    u = u.astype(np.uint64)
    i = np.arange(u.size, dtype=np.uint64)
    h1, h2 = int((u * (2 * i + 1)).sum()) % 2**32, int(u.sum()) % 2**32
    return f"{h1:08x}{h2:08x}"


def test_checksums_follow_their_definition_on_host_and_device(monkeypatch):
    rng = np.random.default_rng(0)
    tree = {
        "w": rng.standard_normal((700, 900)).astype(np.float32),  # several numpy blocks
        "h": rng.standard_normal(333).astype(ml_dtypes.bfloat16),
        "n": np.arange(-5, 50, dtype=np.int32),
        "b": np.array([True, False, True]),
        "s": np.float32(3.5),
    }
    want = {k: _reference(np.asarray(v)) for k, v in tree.items()}
    assert checksums.tree_checksums(tree) == want
    # Sharded over the (fake) devices: the jitted path, the same numbers.
    mesh = jax.make_mesh((jax.device_count(),), ("d",))
    sharded = jax.device_put(jnp.asarray(tree["w"][:696]), NamedSharding(mesh, P("d")))
    assert checksums.tree_checksums({"w": sharded}) == {"w": _reference(tree["w"][:696])}
    assert checksums.tree_checksums({"k": jax.random.key(3)})["k"] == _reference(
        np.asarray(jax.random.key_data(jax.random.key(3)))
    )
    # The jitted path (arrays on accelerators or over processes), run here on the CPU.
    with monkeypatch.context() as m:
        m.setattr(checksums, "_on_host", lambda x: False)
        assert checksums.tree_checksums(tree) == want
    # Every single-bit flip of a small array changes its checksum.
    a = rng.standard_normal(64).astype(np.float32)
    ref = checksums.tree_checksums({"a": a})
    bits = a.view(np.uint32)
    for k in range(a.size):
        for b in (0, 7, 22, 31):
            flipped = bits.copy()
            flipped[k] ^= np.uint32(1 << b)
            assert checksums.tree_checksums({"a": flipped.view(np.float32)}) != ref
    assert checksums.first_mismatch({"a": a}, ref) is None
    assert "checksum mismatch in a" in checksums.first_mismatch({"a": a + 1}, ref)
    assert checksums.first_mismatch({"a": a + 1}, None) is None  # nothing recorded


def _flip_bit(path, where=0.5, bit=4):
    data = bytearray(open(path, "rb").read())
    data[int(len(data) * where)] ^= 1 << bit
    open(path, "wb").write(bytes(data))


def _biggest_file(folder):
    files = [os.path.join(d, f) for d, _, fs_ in os.walk(folder) for f in fs_]
    return max(files, key=os.path.getsize)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A workdir with checkpoints at steps 2 and 4 (states of different seeds)."""
    wd = tmp_path_factory.mktemp("ckpt") / "run"
    c = tiny_config(4, **FLAGS)
    c.mesh = MESH
    setup = Setup(c, optim.resolve_schedule(c))
    ck = checkpoints.Checkpointer(str(wd))
    meta = {"model": setup.model_config.to_dict(), "norm_stats": {"mean": -9.0, "std": 4.0}}
    for step in (2, 4):  # random values everywhere (a trained state's): stored raw, uncompressed
        state = setup.init_state(step)
        leaves, tree = jax.tree.flatten(state)
        keys = jax.random.split(jax.random.key(step), len(leaves))
        leaves = [
            x + 0.01 * jax.random.normal(k, x.shape) if jnp.issubdtype(x.dtype, jnp.floating) else x
            for x, k in zip(leaves, keys, strict=True)
        ]
        ck.save(step, jax.tree.unflatten(tree, leaves), {**meta, "step": step})
    ck.close()
    return wd, setup


@pytest.mark.slow
def test_a_flipped_bit_in_a_checkpoint_is_damage(saved, tmp_path, monkeypatch):
    """Flips in the arrays' bytes that orbax reads without complaint (the data files hold raw
    float32): the step is named with the array, moved aside, the older step used."""
    src, setup = saved
    positions = (0.2, 0.5, 0.8)
    for where in positions:
        wd = tmp_path / f"run{where}"
        shutil.copytree(src, wd)
        _flip_bit(
            _biggest_file(wd / "checkpoints" / "4" / "state" / "ocdbt.process_0" / "d"), where
        )
        with monkeypatch.context() as m:  # without checksums the damage passes unseen
            m.setattr(checksums, "first_mismatch", lambda tree, recorded: None)
            ck = checkpoints.Checkpointer(str(wd), read_only=True)
            with setup.activate():
                state, _ = ck.restore(4, setup.abstract_state)
            ck.close()
            got = checksums.tree_checksums(state)
            want = checksums.tree_checksums(checkpoints.load_state_numpy(str(src), 4)[0])
            assert sorted(got) == sorted(want)
            (changed,) = [k for k in got if got[k] != want[k]]  # one array, silently
        with pytest.raises(
            checkpoints.CheckpointError, match=f"step 4: checksum mismatch in {changed} "
        ):
            checkpoints.load_state_numpy(str(wd), step=4)
        if changed.startswith("params/encoder/"):  # what export and Runtime.load read
            with pytest.raises(checkpoints.CheckpointError, match="step 4: checksum mismatch"):
                checkpoints.load_encoder_from_workdir(str(wd), step=4)
        ck = checkpoints.Checkpointer(str(wd))
        with setup.activate():
            restored = ck.restore_newest(setup.abstract_state, lambda s, m: None)
        ck.close()
        assert restored.step == 2
        ((step, why, dest),) = restored.damaged
        assert step == 4 and why.startswith(f"checksum mismatch in {changed} ")
        assert dest == str(wd / checkpoints.DAMAGED_DIR / "4")


def _export(path, params, files=None):
    return artifact.save_model_dir(
        str(path), CFG, params, NormStats(-6.5, 3.5), source="init", files=files
    )


@pytest.fixture(scope="module")
def params():
    return mae.init_params(CFG, jax.random.key(2))["encoder"]


def test_a_flipped_bit_in_an_export_is_one_line(params, tmp_path):
    model = _export(tmp_path / "model", params)
    Runtime.load(model)  # intact: loads
    _flip_bit(_biggest_file(os.path.join(model, artifact.PARAMS_DIR)), 0.6)
    with pytest.raises(ValueError, match=r"encoder: checksum mismatch in .*export it again"):
        Runtime.load(model)
    wav = tmp_path / "a.wav"
    import soundfile as sf

    sf.write(wav, np.zeros(16000, np.float32), 16000)
    r = subprocess.run(
        [sys.executable, "-m", "msm_mae_jax", "embed", "--checkpoint", model, "--out",
         str(tmp_path / "e.npz"), "--no-progress", str(wav)],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr[-3000:]
    lines = [x for x in r.stderr.splitlines() if ": error: " in x]
    assert len(lines) == 1 and "checksum mismatch in " in lines[0], r.stderr[-3000:]
    assert "Traceback" not in r.stderr


def test_a_changed_head_file_is_named(params, tmp_path):
    """A fine-tuned export's head.npz is part of the artifact: checksummed, checked."""
    model = _export(tmp_path / "ft", params, files={ft_export.HEAD_FILE: b"head bytes"})
    meta = json.loads(open(os.path.join(model, artifact.META_FILE)).read())
    assert artifact.read_file(model, ft_export.HEAD_FILE, meta) == b"head bytes"
    _flip_bit(os.path.join(model, ft_export.HEAD_FILE))
    with pytest.raises(ValueError, match=r"head\.npz: checksum mismatch"):
        artifact.read_file(model, ft_export.HEAD_FILE, meta)


@pytest.fixture(scope="module")
def lms_corpus(fsdd_dir, tmp_path_factory):
    from msm_mae_jax.data import prepare

    src = tmp_path_factory.mktemp("lms_src")
    for p in sorted(fsdd_dir.glob("*.wav"))[:6]:
        shutil.copy(p, src)
    out = tmp_path_factory.mktemp("lms") / "corpus"
    m = prepare.prepare(str(src), str(out), shard_size=3, workers=1, progress=False)
    return out, m


def _overwrite_record(corpus, manifest, k, fill=b"\xff"):
    """Overwrites 40 bytes in the middle of the data of file k's record."""
    f = manifest["files"][k]
    pos = f["offset"] + f["frames"] * 80 * 2 // 2
    with open(corpus / f["shard"], "r+b") as fh:
        fh.seek(pos)
        fh.write(fill * 40)
    return corpus / f["shard"], f["path"]


@pytest.mark.slow
def test_overwritten_lms_shard_bytes_name_the_shard(lms_corpus, tmp_path):
    """Bytes overwritten inside a record (the size unchanged): the first batch holding that
    clip stops the run with one line naming the shard and the clip (through the command),
    not a non-finite loss some steps later."""
    src, m = lms_corpus
    corpus = tmp_path / "corpus"
    shutil.copytree(src, corpus)
    shard, clip = _overwrite_record(corpus, m, 4)
    flags = {**FLAGS, "total_steps": 3, "mesh": "(('data',1),('fsdp',1),('tensor',1))"}
    flags.update({"figure_every_steps": 0, "probe.every_steps": 0, "data.shuffle_buffer": 2})
    r = subprocess.run(
        [sys.executable, "-m", "msm_mae_jax", "train", "--config", "tiny", "--workdir",
         str(tmp_path / "run"), f"--config.data.source=lms:{corpus}",
         *[f"--config.{k}={v}" for k, v in flags.items()]],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr[-3000:]
    lines = [x for x in r.stderr.splitlines() if ": error: " in x]
    assert len(lines) == 1, r.stderr[-3000:]
    assert f"{shard}: non-finite log-mel values in the record of {clip}" in lines[0]
    assert "Traceback" not in r.stderr and "non-finite loss" not in r.stderr


def test_float32_shards_are_checked(fsdd_dir, tmp_path):
    from msm_mae_jax.data import prepare

    src = tmp_path / "src"
    src.mkdir()
    for p in sorted(fsdd_dir.glob("*.wav"))[:2]:
        shutil.copy(p, src)
    out = tmp_path / "lms"
    m = prepare.prepare(
        str(src), str(out), shard_size=2, workers=1, dtype="float32", progress=False
    )
    f = m["files"][1]
    with open(out / f["shard"], "r+b") as fh:  # an Inf: exponent bits all set, mantissa 0
        fh.seek(f["offset"] + 80 * 4 * 3)
        fh.write(np.array([np.inf], "<f4").tobytes())
    reader = lms_shards._CropReader(str(out), lms_shards.read_manifest(str(out)), 0, 208)
    pos = np.arange(2)
    with pytest.raises(DataError, match=rf"{f['shard']}: non-finite log-mel values in the record"):
        reader(pos, pos)
