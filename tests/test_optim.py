"""Optimizer recipe: lr scaling and schedule vs a numpy formula, the weight-decay rule, clipping
through the Adam moments, the official constants."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.msm_mae import get_config
from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.model import mae
from msm_mae_jax.model.config import ModelConfig
from msm_mae_jax.train import optim


def _numpy_lr(step, base, min_lr, warm, total):
    """MAE's adjust_learning_rate written independently, evaluated at integer steps."""
    if step < warm:
        return base * step / warm
    t = (step - warm) / (total - warm)
    return min_lr + (base - min_lr) * 0.5 * (1.0 + np.cos(np.pi * min(t, 1.0)))


@pytest.mark.parametrize("warm,total,min_lr", [(10, 100, 0.0), (0, 50, 1e-6), (7, 8, 2e-5)])
def test_lr_schedule_matches_numpy(warm, total, min_lr):
    s = optim.Schedule(
        total_steps=total, steps_per_epoch=10, warmup_steps=warm, base_lr=3e-4, min_lr=min_lr
    )
    fn = jax.jit(optim.lr_schedule(s))
    got = np.array([float(fn(i)) for i in range(total + 3)])
    want = np.array([_numpy_lr(i, 3e-4, min_lr, warm, total) for i in range(total + 3)])
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=3e-4 * 1e-6)  # float32
    assert got[0] == pytest.approx(0.0 if warm else 3e-4, rel=1e-6)
    assert abs(got[total] - min_lr) < 1e-9


def test_base_lr_scaling_and_epoch_conversion():
    c = get_config("base_208")
    assert optim.base_learning_rate(c) == pytest.approx(1.5e-4 * 512 / 128)
    c.optim.lr = 2e-3
    assert optim.base_learning_rate(c) == 2e-3
    c.optim.lr = 0.0
    c.total_steps, c.epochs, c.warmup_epochs, c.warmup_steps = 0, 3.0, 0.5, -1
    calls = []
    s = optim.resolve_schedule(c, lambda: calls.append(1) or 512 * 20 + 7)
    assert (s.steps_per_epoch, s.total_steps, s.warmup_steps) == (20, 60, 10)
    c.total_steps, c.warmup_steps, c.steps_per_epoch = 30, 4, 0
    calls.clear()
    s = optim.resolve_schedule(c, lambda: calls.append(1) or 10**6)
    assert (s.total_steps, s.warmup_steps) == (30, 4) and not calls  # size not needed
    c.total_steps = 0
    with pytest.raises(ConfigError, match="larger than the training set"):
        optim.resolve_schedule(c, lambda: 100)


def test_weight_decay_mask_exact_set():
    """timm's add_weight_decay rule on the tiny model's leaves, written from the Flax names:
    no decay for biases, LayerNorm scales, q_bias/v_bias; decay for kernels and tokens."""
    mc = ModelConfig.from_dict(get_config("tiny").model)
    mask = optim.weight_decay_mask(nn.meta.unbox(mae.abstract_params(mc)))
    flat = {
        "/".join(str(k.key) for k in path): v
        for path, v in jax.tree_util.tree_flatten_with_path(mask)[0]
    }
    excluded = {k for k, v in flat.items() if not v}
    decayed = {k for k, v in flat.items() if v}
    want_excluded = {k for k in flat if k.endswith(("/bias", "/scale", "/q_bias", "/v_bias"))}
    assert excluded == want_excluded
    assert decayed == {k for k in flat if k.endswith(("/kernel", "/cls_token", "/mask_token"))}
    assert {"encoder/cls_token", "decoder/mask_token"} <= decayed
    assert "encoder/blocks_0/attn/q_bias" in excluded


@pytest.mark.parametrize(
    "name,ndim,want",
    [
        ("cls_token", 3, True),
        ("mask_token", 3, True),
        ("blocks.0.attn.qkv.weight", 2, True),
        ("patch_embed.proj.weight", 4, True),
        ("blocks.0.attn.q_bias", 1, False),
        ("norm.weight", 1, False),
        ("decoder_pred.bias", 1, False),
        ("some.bias", 2, False),  # the name alone exempts
        ("some.weight", 1, False),  # the rank alone exempts
    ],
)
def test_decay_rule_is_timm_add_weight_decay(name, ndim, want):
    assert optim.decays(name, ndim) is want


def test_adamw_decays_exactly_the_masked_leaves():
    """With zero gradients, one AdamW step changes exactly the decayed leaves, by lr*wd*w."""
    c = get_config("tiny")
    c.optim.lr, c.optim.weight_decay = 0.1, 0.5
    s = optim.Schedule(total_steps=10, steps_per_epoch=1, warmup_steps=0, base_lr=0.1, min_lr=0.0)
    tx = optim.make_optimizer(c, s)
    params = {
        "blk": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2), "scale": jnp.ones(2)},
        "cls_token": jnp.ones((1, 1, 2)),
        "odd": {"bias": jnp.ones((2, 2))},  # 2-D but named '.bias': not decayed
    }
    upd, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    new = optax.apply_updates(params, upd)
    np.testing.assert_allclose(new["blk"]["kernel"], 1 - 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(new["cls_token"], 1 - 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_array_equal(new["blk"]["bias"], 1.0)
    np.testing.assert_array_equal(new["blk"]["scale"], 1.0)
    np.testing.assert_array_equal(new["odd"]["bias"], 1.0)


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_grad_clipping_feeds_adam_the_clipped_gradient(clip):
    """Adam's first step does not depend on the gradient's size, its moments do: after one
    update mu = (1 - b1) g and nu = (1 - b2) g^2 with g the clipped gradient."""
    c = get_config("tiny")
    c.optim.grad_clip_norm, c.optim.weight_decay = clip, 0.0
    s = optim.Schedule(total_steps=10, steps_per_epoch=1, warmup_steps=0, base_lr=1.0, min_lr=0.0)
    tx = optim.make_optimizer(c, s)
    p = {"w": jnp.zeros((4, 4)), "b": jnp.zeros(9)}
    g = {"w": jnp.full((4, 4), 100.0), "b": jnp.full(9, -100.0)}  # global norm 500
    _, state = tx.update(g, tx.init(p), p)
    factor = 1.0 / 500.0 if clip else 1.0
    mu, nu = optax.tree_utils.tree_get(state, "mu"), optax.tree_utils.tree_get(state, "nu")
    for k in g:
        want = np.asarray(g[k]) * factor
        np.testing.assert_allclose(mu[k], (1 - c.optim.b1) * want, rtol=1e-6)
        np.testing.assert_allclose(nu[k], (1 - c.optim.b2) * want**2, rtol=1e-5)


@pytest.mark.parametrize("variant", ["base_208", "base_512", "base_608", "small_208", "large_208"])
def test_recipe_constants_are_the_official_ones(variant):
    """MSM-MAE's main_pretrain.py defaults (REFERENCE.md "Pre-training recipe")."""
    c = get_config(variant)
    o = c.optim
    assert (o.b1, o.b2, o.weight_decay) == (0.9, 0.95, 0.05)
    assert (o.blr, o.lr, o.min_lr, o.grad_clip_norm) == (1.5e-4, 0.0, 0.0, 0.0)
    assert (c.epochs, c.warmup_epochs, c.total_steps, c.warmup_steps) == (100, 10, 0, -1)
    assert (c.model.mask_ratio, c.model.norm_pix_loss, c.model.use_cls_token) == (0.75, False, True)
    assert optim.base_learning_rate(c) == pytest.approx(1.5e-4 * c.batch_size / 128)
