"""Official state dict -> Flax params -> encoder artifact, checked against numpy references.

The state dicts are built here from the official names and shapes (REFERENCE.md), with numpy
only, their fixed tables from the loop-by-loop references of tests/reference.py; the numpy forward
below is written from the formulas, independently of the model code.
"""

import math
import os
import warnings

import jax
import numpy as np
import pytest
import scipy.special
from reference import sincos_2d_table, sinusoid_1d_table

from msm_mae_jax.cli import convert as convert_cli
from msm_mae_jax.model import convert, mae
from msm_mae_jax.model.artifact import load_model_dir
from msm_mae_jax.model.config import ModelConfig
from msm_mae_jax.model.masking import random_masking


def _block_sd(rng, prefix, D, hidden):
    s = 1.0 / math.sqrt(D)
    return {
        f"{prefix}.norm1.weight": 1 + 0.1 * rng.normal(size=D),
        f"{prefix}.norm1.bias": 0.1 * rng.normal(size=D),
        f"{prefix}.attn.qkv.weight": s * rng.normal(size=(3 * D, D)),
        f"{prefix}.attn.q_bias": 0.1 * rng.normal(size=D),
        f"{prefix}.attn.v_bias": 0.1 * rng.normal(size=D),
        f"{prefix}.attn.proj.weight": s * rng.normal(size=(D, D)),
        f"{prefix}.attn.proj.bias": 0.1 * rng.normal(size=D),
        f"{prefix}.norm2.weight": 1 + 0.1 * rng.normal(size=D),
        f"{prefix}.norm2.bias": 0.1 * rng.normal(size=D),
        f"{prefix}.mlp.fc1.weight": s * rng.normal(size=(hidden, D)),
        f"{prefix}.mlp.fc1.bias": 0.1 * rng.normal(size=hidden),
        f"{prefix}.mlp.fc2.weight": rng.normal(size=(D, hidden)) / math.sqrt(hidden),
        f"{prefix}.mlp.fc2.bias": 0.1 * rng.normal(size=D),
    }


def official_state_dict(
    seed=0,
    D=64,
    depth=2,
    Dd=32,
    ddepth=1,
    patch=(16, 16),
    input_size=(80, 208),
    cls=True,
    decoder="1d",
):
    """Random weights under the official names, Linear [out, in], Conv2d [D, 1, ph, pw]."""
    rng = np.random.default_rng(seed)
    (ph, pw), (F, T) = patch, input_size
    grid = (F // ph, T // pw)
    sd = {
        "patch_embed.proj.weight": rng.normal(size=(D, 1, ph, pw)) / math.sqrt(ph * pw),
        "patch_embed.proj.bias": 0.1 * rng.normal(size=D),
        "pos_embed": sincos_2d_table(D, *grid, cls)[None],
        "norm.weight": 1 + 0.1 * rng.normal(size=D),
        "norm.bias": 0.1 * rng.normal(size=D),
        "decoder_embed.weight": rng.normal(size=(Dd, D)) / math.sqrt(D),
        "decoder_embed.bias": 0.1 * rng.normal(size=Dd),
        "mask_token": 0.02 * rng.normal(size=(1, 1, Dd)),
        "decoder_pos_embed": (
            sinusoid_1d_table(Dd, grid[0] * grid[1], cls)
            if decoder == "1d"
            else sincos_2d_table(Dd, *grid, cls)
        )[None],
        "decoder_norm.weight": 1 + 0.1 * rng.normal(size=Dd),
        "decoder_norm.bias": 0.1 * rng.normal(size=Dd),
        "decoder_pred.weight": rng.normal(size=(ph * pw, Dd)) / math.sqrt(Dd),
        "decoder_pred.bias": 0.1 * rng.normal(size=ph * pw),
    }
    if cls:
        sd["cls_token"] = 0.02 * rng.normal(size=(1, 1, D))
    for i in range(depth):
        sd.update(_block_sd(rng, f"blocks.{i}", D, 4 * D))
    for i in range(ddepth):
        sd.update(_block_sd(rng, f"decoder_blocks.{i}", Dd, 4 * Dd))
    return {k: np.asarray(v, np.float32) for k, v in sd.items()}


# ---- numpy reference forward (float64) -----------------------------------------------------
def _ln(x, w, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * w + b


def _gelu(x):
    return 0.5 * x * (1 + scipy.special.erf(x / math.sqrt(2)))


def np_block(sd, prefix, x, heads):
    g = lambda k: sd[f"{prefix}.{k}"].astype(np.float64)
    B, N, D = x.shape
    E = D // heads
    h = _ln(x, g("norm1.weight"), g("norm1.bias"))
    qkv = h @ g("attn.qkv.weight").T + np.concatenate(
        [g("attn.q_bias"), np.zeros(D), g("attn.v_bias")]
    )
    qkv = qkv.reshape(B, N, 3, heads, E).transpose(2, 0, 3, 1, 4)  # 3, B, H, N, E
    q, k, v = qkv
    logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(E)
    att = np.exp(logits - logits.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    o = (att @ v).transpose(0, 2, 1, 3).reshape(B, N, D)
    x = x + o @ g("attn.proj.weight").T + g("attn.proj.bias")
    h = _ln(x, g("norm2.weight"), g("norm2.bias"))
    h = _gelu(h @ g("mlp.fc1.weight").T + g("mlp.fc1.bias"))
    return x + h @ g("mlp.fc2.weight").T + g("mlp.fc2.bias")


def np_mae_loss(sd, lms, ids_keep, heads, dheads, patch, norm_pix=False):
    """Official forward: conv patch embedding, masking by ids_keep, encoder, decoder, loss.

    norm_pix: the official `norm_pix_loss` target, each patch normalised by its own mean and
    unbiased variance (torch's Tensor.var): (p - mean) / sqrt(var + 1e-6).
    """
    B, _, F, T = lms.shape
    ph, pw = patch
    gf, gt = F // ph, T // pw
    n = gf * gt
    w = sd["patch_embed.proj.weight"].astype(np.float64)
    patches = np.stack(
        [
            lms[:, 0, f * ph : (f + 1) * ph, t * pw : (t + 1) * pw].reshape(B, -1)
            for f in range(gf)
            for t in range(gt)
        ],
        axis=1,
    )  # B, N, P
    x = patches @ w.reshape(w.shape[0], -1).T + sd["patch_embed.proj.bias"]
    cls = "cls_token" in sd
    pos = sd["pos_embed"][0]
    x = x + pos[int(cls) :]
    x = np.stack([x[b, ids_keep[b]] for b in range(B)])
    if cls:
        x = np.concatenate([np.repeat(sd["cls_token"] + pos[:1], B, 0), x], axis=1)
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        x = np_block(sd, f"blocks.{i}", x, heads)
    x = _ln(x, sd["norm.weight"], sd["norm.bias"])
    # decoder
    y = x @ sd["decoder_embed.weight"].T.astype(np.float64) + sd["decoder_embed.bias"]
    Dd = y.shape[-1]
    full = np.repeat(sd["mask_token"].astype(np.float64).reshape(1, 1, Dd), B, 0)
    full = np.repeat(full, n, 1)
    mask = np.ones((B, n))
    for b in range(B):
        full[b, ids_keep[b]] = y[b, int(cls) :]
        mask[b, ids_keep[b]] = 0
    if cls:
        full = np.concatenate([y[:, :1], full], axis=1)
    full = full + sd["decoder_pos_embed"][0]
    ddepth = len({k.split(".")[1] for k in sd if k.startswith("decoder_blocks.")})
    for i in range(ddepth):
        full = np_block(sd, f"decoder_blocks.{i}", full, dheads)
    full = _ln(full, sd["decoder_norm.weight"], sd["decoder_norm.bias"])
    pred = (full @ sd["decoder_pred.weight"].T + sd["decoder_pred.bias"])[:, int(cls) :]
    target = patches
    if norm_pix:
        mean = patches.mean(-1, keepdims=True)
        var = ((patches - mean) ** 2).sum(-1, keepdims=True) / (patches.shape[-1] - 1)
        target = (patches - mean) / np.sqrt(var + 1e-6)
    per_patch = ((pred - target) ** 2).mean(-1)
    return (per_patch * mask).sum() / mask.sum(), pred, mask


# ---- tests ---------------------------------------------------------------------------------
def test_state_dict_round_trip_and_inferred_config():
    sd = official_state_dict()
    kw, params = convert.state_dict_to_params(sd)
    assert kw == dict(
        input_size=(80, 208),
        patch_size=(16, 16),
        embed_dim=64,
        depth=2,
        num_heads=1,
        use_cls_token=True,
        mlp_ratio=4.0,
        decoder_embed_dim=32,
        decoder_depth=1,
        decoder_num_heads=1,
        decoder_pos_embed="1d",
    )
    enc = params["encoder"]
    np.testing.assert_array_equal(
        enc["blocks_1"]["attn"]["qkv"]["kernel"], sd["blocks.1.attn.qkv.weight"].T
    )
    np.testing.assert_array_equal(
        enc["patch_embed"]["proj"]["kernel"][:, 5], sd["patch_embed.proj.weight"][5, 0].ravel()
    )
    np.testing.assert_array_equal(enc["norm"]["scale"], sd["norm.weight"])
    np.testing.assert_array_equal(params["decoder"]["mask_token"], sd["mask_token"])
    back = convert.params_to_state_dict(params, ModelConfig(**kw))
    assert sorted(back) == sorted(sd)
    for k in sd:
        np.testing.assert_allclose(back[k], sd[k], atol=1e-6 if "pos_embed" in k else 0, err_msg=k)


def test_cli_npz_to_model_dir_round_trip(tmp_path):
    sd = official_state_dict(1)
    run = tmp_path / "80x208p16x16_myrun"
    run.mkdir()
    np.savez(run / "checkpoint-100.npz", **sd)
    out = tmp_path / "converted"
    rc = convert_cli.main(
        [
            str(run / "checkpoint-100.npz"),
            str(out),
            "--norm-mean",
            "-7.1",
            "--norm-std",
            "4.2",
            "--num-heads",
            "4",
            "--decoder-num-heads",
            "2",
        ]
    )
    assert rc == 0
    config, enc, stats, meta = load_model_dir(str(out))
    assert (config.num_heads, config.decoder_num_heads) == (4, 2)
    assert config.run_name_prefix == "80x208p16x16"
    assert (stats.mean, stats.std) == (-7.1, 4.2) and meta["normalization"] == "dataset"
    _, params = convert.state_dict_to_params(sd)
    for a, b in zip(jax.tree.leaves(enc), jax.tree.leaves(params["encoder"]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert jax.tree.structure(enc) == jax.tree.structure(params["encoder"])
    dec = convert.load_decoder_params(str(out))
    for a, b in zip(jax.tree.leaves(dec), jax.tree.leaves(params["decoder"]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_pth_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    sd = official_state_dict(2, patch=(16, 8), input_size=(80, 512), cls=False, decoder="2d")
    run = tmp_path / "80x512p16x8_run"
    run.mkdir()
    torch.save(
        {"model": {k: torch.from_numpy(v) for k, v in sd.items()}, "epoch": 3},
        run / "checkpoint-3.pth",
    )
    assert (
        convert_cli.main([str(run / "checkpoint-3.pth"), str(tmp_path / "o"), "--per-batch-norm"])
        == 0
    )
    config, enc, _, meta = load_model_dir(str(tmp_path / "o"))
    assert (config.input_size, config.patch_size) == ((80, 512), (16, 8))
    assert not config.use_cls_token and "cls_token" not in enc
    assert config.decoder_pos_embed == "2d" and meta["normalization"] == "per_batch"


def test_missing_torch_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    (tmp_path / "x.pth").write_bytes(b"not really")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="pip install torch"):
        convert.load_state_dict(str(tmp_path / "x.pth"))


def test_input_size_inferred_from_tables_and_flags_checked():
    sd = official_state_dict(3, input_size=(80, 608))
    kw, _ = convert.state_dict_to_params(sd)
    assert kw["input_size"] == (80, 608)
    with pytest.raises(convert.ConversionError, match="pos_embed has 66 rows but a 80x512"):
        convert.state_dict_to_params(official_state_dict(3), input_size=(80, 512))
    with pytest.raises(convert.ConversionError, match="patch size"):
        convert.state_dict_to_params(sd, patch_size=(16, 8))


def test_bad_state_dicts_name_the_key():
    sd = official_state_dict(4)
    bad = dict(sd)
    del bad["blocks.1.attn.v_bias"]
    with pytest.raises(convert.ConversionError, match=r"missing keys \['blocks.1.attn.v_bias'\]"):
        convert.state_dict_to_params(bad)
    bad = dict(sd, **{"blocks.0.attn.qkv.bias": np.zeros(192, np.float32)})
    with pytest.raises(convert.ConversionError, match="unexpected keys.*qkv.bias"):
        convert.state_dict_to_params(bad)
    bad = dict(sd, **{"blocks.0.mlp.fc2.bias": np.zeros(63, np.float32)})
    with pytest.raises(convert.ConversionError, match=r"blocks.0.mlp.fc2.bias: \(63,\)"):
        convert.state_dict_to_params(bad)
    with pytest.raises(convert.ConversionError, match="patch_embed.proj.weight"):
        convert.state_dict_to_params({"foo": np.zeros(3)})
    # A DistributedDataParallel prefix is accepted.
    kw, _ = convert.state_dict_to_params({f"module.{k}": v for k, v in sd.items()})
    assert kw["depth"] == 2


def test_unexpected_positional_table_warns():
    sd = official_state_dict(5)
    with warnings.catch_warnings():  # the published tables: no warning, both decoder kinds
        warnings.simplefilter("error")
        convert.state_dict_to_params(sd)
        kw, _ = convert.state_dict_to_params(official_state_dict(5, decoder="2d"))
    assert kw["decoder_pos_embed"] == "2d"
    sd["pos_embed"] = sd["pos_embed"] + 0.01
    with pytest.warns(UserWarning, match="pos_embed differs"):
        convert.state_dict_to_params(sd)


def test_normalisation_must_be_chosen(tmp_path, capsys):
    np.savez(tmp_path / "c.npz", **official_state_dict(6))
    assert convert_cli.main([str(tmp_path / "c.npz"), str(tmp_path / "o")]) == 2
    assert "--per-batch-norm" in capsys.readouterr().err
    assert (
        convert_cli.main([str(tmp_path / "missing.npz"), str(tmp_path / "o"), "--per-batch-norm"])
        == 2
    )
    assert "missing.npz" in capsys.readouterr().err


def test_non_finite_weights_are_refused_by_name(tmp_path, capsys):
    """NaN weights would convert into an encoder whose every feature is NaN."""
    sd = official_state_dict(8)
    sd["blocks.1.attn.qkv.weight"][3, :5] = np.nan
    sd["norm.bias"][0] = np.inf
    np.savez(tmp_path / "nan.npz", **sd)
    rc = convert_cli.main([str(tmp_path / "nan.npz"), str(tmp_path / "o"), "--per-batch-norm"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "nan.npz: non-finite values in 2 tensor(s)" in line
    assert "blocks.1.attn.qkv.weight (5 NaN, 0 Inf" in line and "norm.bias (0 NaN, 1 Inf" in line
    assert not (tmp_path / "o").exists()


def test_malformed_npz_is_one_line(tmp_path, capsys):
    np.savez(tmp_path / "good.npz", **official_state_dict(9))
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.npz").write_bytes(b"\x93NUMPY not really" * 10)
    np.save(tmp_path / "single.npy", np.zeros(3))
    os.replace(tmp_path / "single.npy", tmp_path / "single.npz")
    np.savez(tmp_path / "text.npz", a=np.array(["x", "y"]))
    (tmp_path / "empty.npz").write_bytes(b"")
    for name in ("cut", "garbage", "single", "text", "empty"):
        src = str(tmp_path / f"{name}.npz")
        rc = convert_cli.main([src, str(tmp_path / "o"), "--per-batch-norm"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and f"{src}: " in err, (name, err)


def test_single_block_matches_numpy_formulas():
    sd = official_state_dict(7)
    _, params = convert.state_dict_to_params(sd)
    x = np.random.default_rng(0).normal(size=(2, 17, 64))
    for heads in (1, 4):
        got = jax.jit(mae.Block(num_heads=heads).apply)(
            {"params": params["encoder"]["blocks_0"]}, x.astype(np.float32)
        )
        np.testing.assert_allclose(
            np.asarray(got), np_block(sd, "blocks.0", x, heads), atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("norm_pix", [False, True])
@pytest.mark.parametrize("cls,decoder", [(True, "1d"), (False, "2d")])
def test_whole_model_matches_numpy_forward(cls, decoder, norm_pix):
    sd = official_state_dict(8, cls=cls, decoder=decoder)
    kw, params = convert.state_dict_to_params(sd, num_heads=4, decoder_num_heads=2)
    config = ModelConfig(**kw, norm_pix_loss=norm_pix)
    # Off-centre, wide values: a per-patch normalised target differs clearly from the raw one.
    lms = np.random.default_rng(1).normal(2.0, 3.0, size=(3, 1, 80, 208)).astype(np.float32)
    key = jax.random.key(3)
    apply = jax.jit(mae.MaskedAutoencoder(config).apply)
    loss, pred, mask = apply({"params": params}, lms, key)
    ids_keep = np.asarray(random_masking(key, 3, config.num_patches, config.num_keep)[0])
    ref_loss, ref_pred, ref_mask = np_mae_loss(
        sd, lms.astype(np.float64), ids_keep, 4, 2, (16, 16), norm_pix=norm_pix
    )
    np.testing.assert_array_equal(np.asarray(mask), ref_mask)
    np.testing.assert_allclose(np.asarray(pred), ref_pred, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)


def test_matches_pytorch_reference():
    torch = pytest.importorskip("torch")
    from bench.torch_reference import TorchMAE

    config = ModelConfig(
        embed_dim=64,
        depth=2,
        num_heads=4,
        decoder_embed_dim=32,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    params = mae.init_params(config, jax.random.key(0))
    tm = TorchMAE(config)
    sd = convert.params_to_state_dict(params, config)
    tm.load_state_dict({k: torch.tensor(v) for k, v in sd.items()}, strict=True)
    lms = np.random.default_rng(2).normal(size=(4, 1, 80, 208)).astype(np.float32)
    key = jax.random.key(5)
    loss, pred, mask = jax.jit(mae.MaskedAutoencoder(config).apply)({"params": params}, lms, key)
    noise = np.asarray(jax.random.uniform(key, (4, config.num_patches)))  # same draws
    with torch.no_grad():
        t_loss, t_pred, t_mask = tm(torch.tensor(lms), noise=torch.tensor(noise))
    np.testing.assert_array_equal(np.asarray(mask), t_mask.numpy())
    np.testing.assert_allclose(np.asarray(pred), t_pred.numpy(), atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(float(loss), float(t_loss), rtol=1e-5)


def test_no_decoder_option(tmp_path):
    np.savez(tmp_path / "c.npz", **official_state_dict(9))
    assert (
        convert_cli.main(
            [str(tmp_path / "c.npz"), str(tmp_path / "o"), "--per-batch-norm", "--no-decoder"]
        )
        == 0
    )
    assert not os.path.exists(tmp_path / "o" / convert.DECODER_SIDE_FILE)
    with pytest.raises(FileNotFoundError, match="decoder"):
        convert.load_decoder_params(str(tmp_path / "o"))
