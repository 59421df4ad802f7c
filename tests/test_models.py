"""Model structure and behaviour: parameter counts, variants, patches, attention, masking path,
per-layer outputs, remat/bf16, initialisation."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals
from model_utils import small_model

from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.model import mae
from msm_mae_jax.model.config import ModelConfig, encoder_variant
from msm_mae_jax.model.masking import masking_noise

TINY = small_model()


MICRO = small_model(width=32, heads=2, depth=1, input_size=(80, 64))


def random_params(config: ModelConfig, seed: int = 0):
    """Random float32 params of the right shapes without compiling `init` (fast)."""
    rng = np.random.default_rng(seed)

    def draw(path, x):
        name = path[-1].key
        if name == "scale":
            return (1 + 0.1 * rng.normal(size=x.shape)).astype(np.float32)
        fan_in = x.shape[0] if name == "kernel" else 100
        return (rng.normal(size=x.shape) / math.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, nn.unbox(mae.abstract_params(config)))


def _formula_count(c: ModelConfig):
    """Trainable parameters of the official model, from its layer list."""

    def block(d):
        h = int(d * c.mlp_ratio)
        return 2 * d + 3 * d * d + 2 * d + d * d + d + 2 * d + d * h + h + h * d + d

    enc = c.patch_dim * c.embed_dim + c.embed_dim + c.depth * block(c.embed_dim)
    enc += 2 * c.embed_dim + (c.embed_dim if c.use_cls_token else 0)
    dd = c.decoder_embed_dim
    dec = c.embed_dim * dd + dd + dd + c.decoder_depth * block(dd) + 2 * dd
    dec += dd * c.patch_dim + c.patch_dim
    return enc, dec


def test_vit_b_parameter_count_equals_official():
    p = mae.abstract_params(ModelConfig())
    enc, dec = mae.count_params(p["encoder"]), mae.count_params(p["decoder"])
    assert (enc, dec) == (85_244_928, 7_491_328)
    assert enc + dec == 92_736_256
    no_cls = mae.abstract_params(ModelConfig(use_cls_token=False))
    assert mae.count_params(no_cls["encoder"]) == 85_244_928 - 768
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nn.unbox(p)))


@pytest.mark.parametrize(
    "variant,patch,frames,cls,dec",
    [
        ("small", (16, 16), 208, True, "1d"),
        ("base", (16, 8), 512, False, "2d"),
        ("large", (16, 4), 208, True, "1d"),
        ("base", (8, 16), 608, True, "2d"),
        ("small", (80, 4), 512, False, "1d"),
    ],
)
def test_variants_build(variant, patch, frames, cls, dec):
    c = ModelConfig(
        input_size=(80, frames),
        patch_size=patch,
        use_cls_token=cls,
        decoder_pos_embed=dec,
        **encoder_variant(variant),
    )
    p = mae.abstract_params(c)
    assert (mae.count_params(p["encoder"]), mae.count_params(p["decoder"])) == _formula_count(c)
    lms = jax.ShapeDtypeStruct((2, 1, 80, frames), jnp.float32)
    out = jax.eval_shape(
        lambda p, x: mae.MaskedAutoencoder(c).apply({"params": p}, x, jax.random.key(0)),
        nn.unbox(p),
        lms,
    )
    assert out[1].shape == (2, c.num_patches, c.patch_dim) and out[0].shape == ()
    feats = jax.eval_shape(
        lambda p, x: mae.Encoder(c).apply({"params": p}, x, return_layers=True),
        nn.unbox(p["encoder"]),
        lms,
    )
    assert feats.x_BKD.shape == (2, c.num_patches + cls, c.embed_dim)
    assert len(feats.layers) == c.depth


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(input_size=(80, 200)), "not divisible"),
        (dict(patch_size=(16, 7), input_size=(80, 208)), "not divisible"),
        (dict(embed_dim=768, num_heads=7), "multiple"),
        (dict(decoder_pos_embed="3d"), "decoder_pos_embed"),
        (dict(mask_ratio=1.0), "mask_ratio"),
    ],
)
def test_invalid_configs_fail_at_config_time(kw, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**kw)
    with pytest.raises(ConfigError, match="unknown model variant"):
        encoder_variant("huge")


def test_bad_calls_are_clear_errors():
    params = mae.init_params(TINY, jax.random.key(0))
    enc = mae.Encoder(TINY)
    with pytest.raises(ValueError, match=r"expects \[B, 1, 80, 208\]"):
        enc.apply({"params": params["encoder"]}, jnp.zeros((2, 1, 80, 200)))
    with pytest.raises(ValueError, match="needs a PRNG key"):
        enc.apply({"params": params["encoder"]}, jnp.zeros((2, 1, 80, 208)), mask_ratio=0.5)
    with pytest.raises(TypeError, match="static Python float"):
        jax.jit(
            lambda r: enc.apply(
                {"params": params["encoder"]},
                jnp.zeros((2, 1, 80, 208)),
                key=jax.random.key(0),
                mask_ratio=r,
            )
        )(0.5)


def test_explicit_noise_is_the_key_draw():
    """noise_BN = masking_noise(key) gives bitwise what `key` gives; the smallest noise is kept."""
    params = mae.init_params(TINY, jax.random.key(0))
    apply = jax.jit(mae.MaskedAutoencoder(TINY).apply)
    lms = np.random.default_rng(3).normal(size=(3, 1, 80, 208)).astype(np.float32)
    key = jax.random.key(4)
    N, K = TINY.num_patches, TINY.num_keep
    by_key = apply({"params": params}, lms, key)
    by_noise = apply({"params": params}, lms, noise_BN=masking_noise(key, 3, N))
    for a, b in zip(by_key, by_noise, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ramp_BN = jnp.broadcast_to(-jnp.arange(N, dtype=jnp.float32), (3, N))  # keeps the last K
    _, _, mask = apply({"params": params}, lms, noise_BN=ramp_BN)
    np.testing.assert_array_equal(np.asarray(mask), np.repeat([[1.0] * (N - K) + [0.0] * K], 3, 0))
    with pytest.raises(ValueError, match="not both"):
        apply({"params": params}, lms, key, noise_BN=ramp_BN)
    with pytest.raises(ValueError, match=r"noise_BN has shape \(3, 64\)"):
        apply({"params": params}, lms, noise_BN=ramp_BN[:, 1:])


def test_patchify_is_frequency_major_and_inverts():
    c = ModelConfig(input_size=(80, 64), patch_size=(16, 8), **encoder_variant("tiny"))
    lms = np.random.default_rng(0).normal(size=(2, 1, 80, 64)).astype(np.float32)
    x = np.asarray(mae.patchify(jnp.asarray(lms), c.patch_size))
    gf, gt = c.grid_size
    assert x.shape == (2, gf * gt, 128)
    for f in range(gf):
        for t in range(gt):
            np.testing.assert_array_equal(
                x[:, f * gt + t],
                lms[:, 0, f * 16 : (f + 1) * 16, t * 8 : (t + 1) * 8].reshape(2, -1),
            )
    np.testing.assert_array_equal(np.asarray(mae.unpatchify(jnp.asarray(x), c)), lms)


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_attention_equals_plain_softmax(backend, monkeypatch):
    # "gpu": the jax.nn.dot_product_attention path taken on accelerators, run here on CPU.
    monkeypatch.setattr(mae.jax, "default_backend", lambda: backend)
    rng = np.random.default_rng(1)
    B, N, D, H = 2, 11, 32, 4
    x = rng.normal(size=(B, N, D)).astype(np.float32)
    attn = mae.Attention(num_heads=H)
    params = attn.init(jax.random.key(0), x)["params"]
    params = jax.tree.map(
        lambda a: a + 0.1 * rng.normal(size=a.shape).astype(np.float32), nn.unbox(params)
    )  # non-zero q/v biases
    got = np.asarray(attn.apply({"params": params}, x))
    w = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    qkv = x @ w["qkv"]["kernel"] + np.concatenate([w["q_bias"], np.zeros(D), w["v_bias"]])
    q, k, v = (qkv[..., i * D : (i + 1) * D].reshape(B, N, H, D // H) for i in range(3))
    logits = np.einsum("bnhe,bmhe->bhnm", q, k) / math.sqrt(D // H)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("bhnm,bmhe->bnhe", p, v).reshape(B, N, D)
    ref = o @ w["proj"]["kernel"] + w["proj"]["bias"]
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)


def test_accelerator_attention_gradients_equal_the_cpu_path(monkeypatch):
    """The GPU/TPU path recomputes its attention core in the backward pass (jax.checkpoint,
    see vit._accelerator_attention): its gradients, input's and parameters', are the CPU
    path's, which saves the core's intermediates."""
    rng = np.random.default_rng(2)
    B, N, D, H = 2, 11, 32, 4
    x = jnp.asarray(rng.normal(size=(B, N, D)).astype(np.float32))
    attn = mae.Attention(num_heads=H)
    params = jax.tree.map(
        lambda a: a + 0.1 * rng.normal(size=a.shape).astype(np.float32),
        nn.unbox(jax.jit(attn.init)(jax.random.key(0), x)["params"]),
    )

    def grads(backend):
        monkeypatch.setattr(mae.jax, "default_backend", lambda: backend)
        loss = lambda p, x: jnp.sum(jnp.sin(attn.apply({"params": p}, x)))  # noqa: E731
        return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)  # traced for `backend`

    for a, b in zip(jax.tree.leaves(grads("cpu")), jax.tree.leaves(grads("gpu")), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-6, rtol=2e-5)


def test_accelerator_attention_saves_only_the_dense_qkv(monkeypatch, capsys):
    """What the backward pass keeps from the attention core: on GPU/TPU only its dense qkv
    input (the core is recomputed), never the per-head logits [B, H, N, N] the CPU path
    keeps (on TPU those sit in tiles padded ~10x at 17 tokens)."""
    x = jnp.ones((2, 11, 32))
    attn = mae.Attention(num_heads=4)
    params = nn.unbox(jax.jit(attn.init)(jax.random.key(0), x)["params"])
    kept = {}
    for backend in ("cpu", "gpu"):
        monkeypatch.setattr(mae.jax, "default_backend", lambda b=backend: b)
        print_saved_residuals(lambda p, x: attn.apply({"params": p}, x).sum(), params, x)
        kept[backend] = capsys.readouterr().out
    assert "f32[2,4,11,11]" in kept["cpu"]
    assert "f32[2,4,11,11]" not in kept["gpu"] and "f32[2,11,96]" in kept["gpu"]


@pytest.fixture(scope="module")
def tiny():
    params = random_params(TINY)
    lms = jax.random.normal(jax.random.key(1), (3, 1, 80, 208))
    return params, lms


def test_unmasked_encoder_and_per_layer_outputs(tiny):
    params, lms = tiny
    apply = jax.jit(mae.Encoder(TINY).apply, static_argnames=("mask_ratio", "return_layers"))
    out = apply({"params": params["encoder"]}, lms, return_layers=True)
    assert out.x_BKD.shape == (3, 66, 64) and len(out.layers) == TINY.depth
    np.testing.assert_array_equal(np.asarray(out.mask_BN), 0)
    np.testing.assert_array_equal(np.asarray(out.ids_restore_BN), np.tile(np.arange(65), (3, 1)))
    np.testing.assert_array_equal(np.asarray(out.layers[-1]), np.asarray(out.x_BKD))
    # Each layer is the block applied to the previous one (the last then normalised).
    blk1 = mae.Block(TINY.num_heads).apply({"params": params["encoder"]["blocks_1"]}, out.layers[0])
    normed = nn.LayerNorm(epsilon=1e-6).apply({"params": params["encoder"]["norm"]}, blk1)
    np.testing.assert_allclose(np.asarray(normed), np.asarray(out.x_BKD), atol=1e-5)
    plain = apply({"params": params["encoder"]}, lms)
    assert plain.layers is None
    np.testing.assert_array_equal(np.asarray(plain.x_BKD), np.asarray(out.x_BKD))


def test_masked_encoder_keeps_the_right_tokens(tiny):
    """With a 1-block encoder replaced by zero attention/MLP weights, outputs are the
    normalised embedded tokens: the kept ones, in shuffle order, after [CLS]."""
    params, lms = tiny
    enc_p = jax.tree.map(np.asarray, params["encoder"])
    for i in range(TINY.depth):  # blocks become identities
        for name in ("proj", "fc2"):
            sub = enc_p[f"blocks_{i}"]["attn" if name == "proj" else "mlp"][name]
            sub["kernel"] = np.zeros_like(sub["kernel"])
            sub["bias"] = np.zeros_like(sub["bias"])
    key = jax.random.key(7)
    apply = jax.jit(mae.Encoder(TINY).apply, static_argnames=("mask_ratio",))
    masked = apply({"params": enc_p}, lms, key=key, mask_ratio=0.75)
    full = apply({"params": enc_p}, lms)
    from msm_mae_jax.model.masking import random_masking

    ids_keep, ids_restore, mask = random_masking(key, 3, 65, TINY.num_keep)
    np.testing.assert_array_equal(np.asarray(masked.mask_BN), np.asarray(mask))
    np.testing.assert_array_equal(np.asarray(masked.ids_restore_BN), np.asarray(ids_restore))
    expect = np.take_along_axis(
        np.asarray(full.x_BKD)[:, 1:], np.asarray(ids_keep)[..., None], axis=1
    )
    np.testing.assert_allclose(np.asarray(masked.x_BKD)[:, 1:], expect, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(masked.x_BKD)[:, 0], np.asarray(full.x_BKD)[:, 0], atol=1e-5
    )


def test_loss_depends_on_key_only_through_masks(tiny):
    params, lms = tiny
    f = jax.jit(lambda p, x, k: mae.MaskedAutoencoder(TINY).apply({"params": p}, x, k))
    a, b, c = (f(params, lms, jax.random.key(s)) for s in (1, 1, 2))
    assert float(a[0]) == float(b[0]) and float(a[0]) != float(c[0])
    assert np.asarray(a[2]).sum() == 3 * (65 - TINY.num_keep)
    # mask_ratio 0: nothing masked, nothing to reconstruct.
    loss0, _, mask0 = mae.MaskedAutoencoder(TINY).apply(
        {"params": params}, lms, jax.random.key(1), mask_ratio=0.0
    )
    assert float(loss0) == 0.0 and float(mask0.sum()) == 0.0


def test_remat_and_bf16(tiny):
    params, lms = random_params(MICRO), tiny[1][..., :64]
    key = jax.random.key(3)

    def loss_fn(c):
        return jax.jit(
            jax.value_and_grad(lambda p: mae.MaskedAutoencoder(c).apply({"params": p}, lms, key)[0])
        )

    l32, g32 = loss_fn(MICRO)(params)
    lre, gre = loss_fn(MICRO.replace(remat=True))(params)
    np.testing.assert_allclose(float(lre), float(l32), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(gre), jax.tree.leaves(g32), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    lbf, gbf = loss_fn(MICRO.replace(dtype="bfloat16"))(params)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(gbf))
    np.testing.assert_allclose(float(lbf), float(l32), rtol=3e-2)
    enc = jax.jit(mae.Encoder(MICRO.replace(dtype="bfloat16")).apply)(
        {"params": params["encoder"]}, lms
    )
    assert enc.x_BKD.dtype == jnp.bfloat16


def test_initialisation_follows_official_mae():
    c = ModelConfig(depth=4, **{k: v for k, v in encoder_variant("small").items() if k != "depth"})
    params = jax.tree.map(np.asarray, mae.init_params(c, jax.random.key(0)))
    enc, dec = params["encoder"], params["decoder"]
    for kernel in (
        enc["blocks_0"]["attn"]["qkv"]["kernel"],
        enc["blocks_3"]["mlp"]["fc1"]["kernel"],
        enc["patch_embed"]["proj"]["kernel"],
        dec["decoder_pred"]["kernel"],
    ):
        bound = math.sqrt(6.0 / sum(kernel.shape))  # xavier uniform
        assert np.abs(kernel).max() <= bound * (1 + 1e-6)
        assert abs(kernel.std() - bound / math.sqrt(3)) < 0.02 * bound
    for b in (
        enc["blocks_0"]["attn"]["q_bias"],
        enc["blocks_0"]["attn"]["v_bias"],
        enc["blocks_0"]["mlp"]["fc1"]["bias"],
        dec["decoder_embed"]["bias"],
    ):
        assert not b.any()
    np.testing.assert_array_equal(enc["norm"]["scale"], 1)
    np.testing.assert_array_equal(enc["blocks_2"]["norm1"]["bias"], 0)
    for tok in (enc["cls_token"], dec["mask_token"]):
        assert 0.012 < tok.std() < 0.028 and abs(tok.mean()) < 0.01
