"""Further pre-training (`config.init_from`, `msm-mae train --init-from`): every kind of source
(converted official weights, an export, a training workdir, DIR@STEP, gs://) gives the run's
step 0 its weights bit for bit, in the run's shardings (one step from converted weights against
the PyTorch reference's: test_training_parity.py); a different input size passes, any other
difference is one line; the statistics' choice; a changed source on resume is refused. (Kill
and resume of a further-pre-training run, and an export and the HEAR API from it, run in
test_trainer.py's SIGTERM -> SIGKILL test.)"""

import hashlib
import json
import os
import re
import shutil

import jax
import numpy as np
import pytest
from test_convert import official_state_dict
from train_utils import tiny_config

from msm_mae_jax.cli.main import main
from msm_mae_jax.core import fs
from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.features.runtime import Runtime
from msm_mae_jax.model import artifact, checksums, convert
from msm_mae_jax.train import checkpoints, init_source, loop, optim
from msm_mae_jax.train.state import Setup

ONE = (("data", 1), ("fsdp", 1), ("tensor", 1))
STATS = NormStats(-7.1, 4.2)


def _config(init_from="", mesh=ONE, **kw):
    return tiny_config(2, mesh=mesh, init_from=str(init_from), **kw)


_SETUPS = {}


def _setup(config, devices=None):
    """One Setup per model, mesh and schedule (init_from and the seed are not part of it)."""
    key = json.dumps([config.model.to_dict(), config.mesh, config.total_steps, config.optim.lr,
                      config.warmup_steps], default=str)  # fmt: skip
    if key not in _SETUPS:
        devices = devices or jax.devices()[:1]
        _SETUPS[key] = Setup(config, optim.resolve_schedule(config), devices=devices)
    return _SETUPS[key]


def _start(config, devices=None):
    """(setup, step-0 state, record) of a run started from config.init_from, as the loop."""
    setup = _setup(config, devices)
    source = init_source.open_source(config.init_from)
    init_source.check_architecture(source, setup.model_config)
    params = init_source.load_params(source, setup.abstract_state.params)
    record = init_source.record(source, params)
    return setup, setup.init_state_from(int(config.seed), params), record


def _np(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def _equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Official-layout weights of the tiny model (encoder + decoder), converted; and its
    state dict."""
    root = tmp_path_factory.mktemp("official")
    sd = official_state_dict(11, D=64, depth=2, Dd=64, ddepth=1)
    np.savez(root / "checkpoint.npz", **sd)
    out = convert.convert(
        str(root / "checkpoint.npz"),
        str(root / "converted"),
        num_heads=4,
        decoder_num_heads=4,
        norm_stats=STATS,
    )
    return out, sd


def test_zero_steps_from_converted_weights_are_the_converted_model(converted):
    """Step 0 holds the converted encoder and decoder bit for bit; its encoder's features equal
    the converted model's (bit-exact); the optimizer state is fresh, the masking key that of
    a run from scratch with the same seed."""
    path, _ = converted
    setup, state, record = _start(_config(path))
    _, enc, stats, _ = artifact.load_model_dir(path)
    _equal(_np(state.params["encoder"]), enc)
    _equal(_np(state.params["decoder"]), convert.load_decoder_params(path))
    assert int(state.step) == 0
    for leaf in jax.tree.leaves(_np(state.opt_state)):
        assert not np.any(leaf), "the optimizer state is not fresh"
    scratch = setup.init_state(0)
    np.testing.assert_array_equal(np.asarray(state.rng), np.asarray(scratch.rng))
    wav = np.sin(np.arange(16000, dtype=np.float32) / 9.0) * 0.2
    ours = Runtime(setup.model_config, state.params["encoder"], stats).encode(wav)
    np.testing.assert_array_equal(ours, Runtime.load(path).encode(wav))
    assert record["kind"] == "converted" and record["decoder"] == "source"
    assert record["path"] == fs.absolute(path) and record["step"] is None
    assert len(record["checksum"]) == 64


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A training workdir with steps 1 and 3 (other weights at each), as the trainer saves
    them, and the states saved."""
    wd = str(tmp_path_factory.mktemp("run"))
    c = _config()
    setup = _setup(c)
    ckpt = checkpoints.Checkpointer(wd, async_save=False)
    states = {}
    for step in (1, 3):
        state = setup.init_state(step)
        states[step] = _np(state)
        meta = {"model": setup.model_config.to_dict(), "norm_stats": {"mean": -3.0 - step,
                "std": 2.0}, "config": c.to_dict()}  # fmt: skip
        ckpt.save(step, state, meta)
    ckpt.close()
    return wd, states


def test_workdir_sources_take_the_parameters_of_the_step(workdir):
    wd, states = workdir
    for spec, step in ((wd, 3), (f"{wd}@1", 1)):
        source = init_source.open_source(spec)
        assert (source.kind, source.step, source.has_decoder) == ("workdir", step, True)
        assert source.norm_stats == NormStats(-3.0 - step, 2.0)
        _, state, record = _start(_config(spec, seed=5))
        _equal(_np(state.params), states[step].params)  # not its optimizer state or step
        assert int(state.step) == 0 and record["step"] == step and record["spec"] == spec
        for leaf in jax.tree.leaves(_np(state.opt_state)):
            assert not np.any(leaf)
    with pytest.raises(ConfigError, match=r"^config.init_from='.*@2': .* has no step 2; it has"):
        init_source.open_source(f"{wd}@2")


def test_an_export_gives_the_encoder_and_the_decoder_starts_from_its_initialiser(workdir, tmp_path):
    wd, states = workdir
    out = str(tmp_path / "export")
    assert main(["export", "--workdir", wd, "--out", out, "--step", "1"]) == 0
    c = _config(out, seed=7)
    setup, state, record = _start(c)
    _equal(_np(state.params["encoder"]), states[1].params["encoder"])
    _equal(_np(state.params["decoder"]), _np(setup.init_state(7).params["decoder"]))
    assert record["kind"] == "export" and record["decoder"] == "initialised"
    line = init_source.start_line(init_source.open_source(out), record, False)
    assert "encoder only: the decoder starts from its initialiser" in line
    # An export's decoder keys are free (its decoder is not taken); the encoder's are not.
    free = setup.model_config.replace(decoder_depth=2, decoder_embed_dim=32)
    init_source.check_architecture(init_source.open_source(out), free)
    with pytest.raises(ConfigError, match="model.depth is 2 in the source and 3 here"):
        init_source.check_architecture(init_source.open_source(out), free.replace(depth=3))


def test_a_different_input_size_is_allowed(converted):
    path, _ = converted
    c = _config(path)
    c.model.input_size = (80, 96)
    setup, state, _ = _start(c)
    _, enc, _, _ = artifact.load_model_dir(path)
    _equal(_np(state.params["encoder"]), enc)
    assert setup.model_config.grid_size == (5, 6)


@pytest.mark.parametrize(
    "key,value,named",
    [
        ("embed_dim", 128, r"model.embed_dim is 64 in the source and 128 here; parameter "
         r"encoder/blocks_0/attn/proj/bias has shape \(64,\) in the source and \(128,\)"),
        ("depth", 3, r"model.depth is 2 .* and 3 here; parameter encoder/blocks_2/attn/proj/bias "
         r"has shape absent in the source and \(64,\) in this run's model"),
        ("num_heads", 8, r"model.num_heads is 4 in the source and 8 here \(same shapes, other "
         "computations\\)"),
        ("patch_size", ((8, 32), (80, 256)), r"model.patch_size is \[16, 16\] in the source and "
         r"\[8, 32\] here \(same shapes"),
        ("use_cls_token", False, "model.use_cls_token is True in the source and False here; "
         "parameter encoder/cls_token has shape"),
        ("decoder_depth", 2, "model.decoder_depth is 1 in the source and 2 here; parameter "
         "decoder/decoder_blocks_1/"),
        ("decoder_pos_embed", "2d", "model.decoder_pos_embed is '1d' in the source and '2d'"),
    ],
)  # fmt: skip
def test_another_architecture_is_one_line_naming_it(converted, key, value, named):
    path, _ = converted
    source = init_source.open_source(path)
    with pytest.raises(ConfigError) as e:
        kw = {key: value[0], "input_size": value[1]} if key == "patch_size" else {key: value}
        init_source.check_architecture(source, source.model_config.replace(**kw))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"config.init_from='{path}': another model: ")
    assert re.search(named, msg), msg


def test_the_command_refuses_a_mismatch_and_a_missing_source_in_one_line(
    converted, tmp_path, capsys
):
    path, _ = converted
    base = ["train", "--config", "tiny", "--workdir", str(tmp_path / "wd")]
    assert main([*base, "--init-from", path, "--config.model.embed_dim=128"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another model: model.embed_dim is 64 in the source" in err[0], err
    assert main([*base, "--init-from", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"msm-mae train: error: config.init_from='{tmp_path / 'nowhere'}': "
        f"{tmp_path / 'nowhere'} does not exist (relative paths start at {os.getcwd()})"
    )
    assert main([*base, "--init-from", path, "--config.init_from=other"]) == 2
    assert "differ; give one" in capsys.readouterr().err
    assert main([*base, "--config.data.norm_from_init=true"]) == 2
    assert "which is not set (--init-from SRC)" in capsys.readouterr().err
    assert main([*base, "--init-from", str(tmp_path)]) == 2  # a folder of something else
    assert "is neither a model directory" in capsys.readouterr().err


def test_statistics_from_the_source_or_the_data(converted, tmp_path, monkeypatch):
    from msm_mae_jax.data import pipeline

    path, _ = converted
    source = init_source.open_source(path)
    c = _config(path, **{"data.norm_from_init": True})
    assert loop._norm_stats(c, str(tmp_path), None, False, source) == STATS
    c.data.norm_from_init = False  # the default: computed on the run's data
    data_stats = NormStats(-1.5, 2.5)
    monkeypatch.setattr(pipeline, "compute_norm_stats", lambda config, seed: data_stats)
    assert loop._norm_stats(c, str(tmp_path), None, False, source) == data_stats
    # Official weights converted with per-batch normalisation carry no statistics to keep.
    pb = str(tmp_path / "per_batch")
    _, enc, _, meta = artifact.load_model_dir(path)
    artifact.save_model_dir(pb, source.model_config, enc, NormStats(0.0, 1.0), "converted x",
                            extra={"normalization": "per_batch"})  # fmt: skip
    c.data.norm_from_init = True
    with pytest.raises(ConfigError, match="has no dataset statistics .converted with --per-batch"):
        loop._norm_stats(c, str(tmp_path), None, False, init_source.open_source(pb))


def test_fsdp_places_each_shard_where_the_run_keeps_it(converted, workdir):
    """On 8 devices as 2 data x 4 fsdp, the source's arrays are read straight into the
    state's shardings (split over fsdp where the rules say so), with the source's values."""
    mesh = (("data", 2), ("fsdp", 4), ("tensor", 1))
    for spec in (converted[0], workdir[0]):
        setup = _setup(_config(spec, mesh=mesh), devices=jax.devices()[:8])
        want = setup.abstract_state.params
        params = init_source.load_params(init_source.open_source(spec), want)
        for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(want), strict=True):
            assert x.sharding.is_equivalent_to(s.sharding, x.ndim), (x.sharding, s.sharding)
        split = [x for x in jax.tree.leaves(params) if x.addressable_shards[0].data.shape
                 != x.shape]  # fmt: skip
        assert len(split) > 10, "hardly any parameter is split over fsdp: a vacuous check"
        one = _start(_config(spec))[1]
        _equal(_np(params), _np(one.params))


def test_a_changed_source_on_resume_is_refused(converted, workdir, tmp_path):
    """A workdir whose checkpoint was started from one source: another init_from is refused
    like the other keys that define a run (before anything is read from either source)."""
    path, _ = converted
    wd = str(tmp_path / "run")
    shutil.copytree(workdir[0], wd)
    c = _config(workdir[0])  # the checkpoints' config said init_from=''
    with pytest.raises(ConfigError, match=r"init_from '' -> '.*'\. Resume with the same"):
        loop.train_and_evaluate(c, wd)


def test_a_bucket_source_equals_the_local_one(converted, workdir, gcs_bucket):
    for local in (converted[0], workdir[0]):
        url = fs.join(gcs_bucket, os.path.basename(local))
        for root, _, files in os.walk(local):
            for f in files:
                rel = os.path.relpath(os.path.join(root, f), local)
                fs.copy_file(os.path.join(root, f), fs.join(url, *rel.split(os.sep)))
        _, a, ra = _start(_config(local))
        _, b, rb = _start(_config(url))
        _equal(_np(a.params), _np(b.params))
        assert ra["checksum"] == rb["checksum"] and rb["path"] == url
        assert ra["kind"] == rb["kind"]


def test_damaged_weights_are_one_line(converted, tmp_path):
    """An array that no longer matches the checksum saved with it: one line naming it."""
    path, _ = converted
    bad = str(tmp_path / "damaged")
    shutil.copytree(path, bad)
    meta = json.loads(open(os.path.join(bad, artifact.META_FILE)).read())
    name = sorted(meta["checksums"]["arrays"])[0]
    meta["checksums"]["arrays"][name] = "0" * 16
    open(os.path.join(bad, artifact.META_FILE), "w").write(json.dumps(meta))
    with pytest.raises(ConfigError, match=rf"^config.init_from='{bad}': checksum mismatch in "
                       rf"{name} .*; the model is damaged"):  # fmt: skip
        _start(_config(bad))
    # The converted decoder: its SHA-256 is recorded with the artifact.
    shutil.rmtree(bad)
    shutil.copytree(path, bad)
    npz = os.path.join(bad, convert.DECODER_SIDE_FILE)
    data = bytearray(open(npz, "rb").read())
    data[len(data) // 2] ^= 0x10
    open(npz, "wb").write(bytes(data))
    with pytest.raises(ConfigError, match=rf"^config.init_from='{bad}': its parameters do not "
                       rf"read \(ValueError: .*decoder_params.npz: checksum mismatch"):  # fmt: skip
        _start(_config(bad))


def test_the_record_is_a_checksum_of_the_weights_taken(converted):
    path, _ = converted
    _, state, record = _start(_config(path))
    sums = checksums.tree_checksums(_np(state.params))
    lines = "".join(f"{k}={v}\n" for k, v in sorted(sums.items()))
    assert record["checksum"] == hashlib.sha256(lines.encode()).hexdigest()
    assert json.loads(json.dumps(record)) == record  # what the checkpoint's metadata stores
