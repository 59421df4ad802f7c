"""Layer-wise learning-rate decay, the weight-decay mask and AdamW/SGD steps against numpy."""

import functools
import math

import flax.linen as nn
import jax
import numpy as np
import pytest
from model_utils import small_model

from configs.finetune import get_config
from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.finetune import model, optimizer
from msm_mae_jax.model import mae

MICRO = small_model(width=16, heads=2, depth=3, input_size=(32, 32))


@functools.cache
def _params_cached():
    x = mae.dummy_input(MICRO)
    enc = nn.unbox(jax.jit(mae.Encoder(MICRO).init)(jax.random.key(0), x)["params"])
    head = model.init_head(jax.random.key(1), model.HeadConfig(4), MICRO)
    return jax.tree.map(np.asarray, {"encoder": enc, "head": head})


def _params():
    return jax.tree.map(np.copy, _params_cached())


def _flat(tree):
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): v
        for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _layer_of(name: str, depth: int) -> int:
    # MAE util/lr_decay.py get_layer_id_for_vit, on "encoder/..." names
    parts = name.split("/")
    if parts[0] == "encoder" and parts[1] in ("cls_token", "patch_embed"):
        return 0
    if parts[0] == "encoder" and parts[1].startswith("blocks_"):
        return int(parts[1][7:]) + 1
    return depth + 1


def test_layer_decay_factors_follow_the_formula():
    p = _params()
    got = _flat(optimizer.lr_scales(p, 3, 0.75))
    for name in _flat(p):
        assert got[name] == pytest.approx(0.75 ** (4 - _layer_of(name, 3))), name
    assert got["encoder/patch_embed/proj/kernel"] == pytest.approx(0.75**4)
    assert got["encoder/blocks_2/mlp/fc1/kernel"] == pytest.approx(0.75)
    assert got["encoder/norm/scale"] == got["head/fc/kernel"] == 1.0
    frozen = _flat(optimizer.lr_scales(p, 3, 0.75, freeze_encoder=True))
    assert {v for k, v in frozen.items() if k.startswith("encoder")} == {0.0}


def test_weight_decay_mask():
    mask = _flat(optimizer.weight_decay_mask(_params()))
    assert mask["encoder/blocks_0/attn/qkv/kernel"] and mask["head/fc/kernel"]
    assert mask["encoder/patch_embed/proj/kernel"]
    for k in ("cls_token", "blocks_0/attn/q_bias", "blocks_0/norm1/scale", "norm/bias"):
        assert not mask[f"encoder/{k}"], k
    assert not mask["head/fc/bias"] and not mask["head/norm/scale"]


def _config(**optim):
    c = get_config("base")
    c.batch_size, c.epochs, c.warmup_epochs = 16, 1.0, 0.0
    c.optim.update({"lr": 0.01, "min_lr": 1e-4, "weight_decay": 0.05, "layer_decay": 0.5, **optim})
    return c


def test_adamw_steps_match_numpy_with_per_layer_rates():
    c = _config()
    sched = optimizer.schedule(c, steps_per_epoch=4)
    p0 = _params()
    tx = optimizer.make_optimizer(c, sched, p0, MICRO.depth)
    rng = np.random.default_rng(0)
    grads = [jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(np.float32), p0)]
    grads.append(jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(np.float32), p0))
    state, p = tx.init(p0), p0
    for g in grads:
        u, state = jax.jit(tx.update)(g, state, p)
        p = jax.tree.map(lambda a, b: np.asarray(a + b), p, u)
    scale, mask = _flat(optimizer.lr_scales(p0, 3, 0.5)), _flat(optimizer.weight_decay_mask(p0))
    got = _flat(p)
    b1, b2, eps, wd = 0.9, 0.999, 1e-8, 0.05
    for name, w in _flat(p0).items():
        w, m, v = w.astype(np.float64), 0.0, 0.0
        for t, g in enumerate((_flat(grads[0])[name], _flat(grads[1])[name]), start=1):
            lr = 1e-4 + (0.01 - 1e-4) * 0.5 * (1 + math.cos(math.pi * (t - 1) / 4))  # cosine
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g.astype(np.float64) ** 2
            adam = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
            w = w - lr * scale[name] * (adam + wd * mask[name] * w)
        np.testing.assert_allclose(got[name], w, rtol=2e-5, atol=2e-7, err_msg=name)


def test_sgd_step_and_frozen_encoder():
    c = _config(name="sgd", weight_decay=0.0)
    c.freeze_encoder = True
    p0 = _params()
    tx = optimizer.make_optimizer(c, optimizer.schedule(c, 4), p0, MICRO.depth)
    g = jax.tree.map(lambda a: np.ones_like(a), p0)
    u, _ = tx.update(g, tx.init(p0), p0)
    u = _flat(u)
    assert all(np.all(np.asarray(v) == 0) for k, v in u.items() if k.startswith("encoder"))
    np.testing.assert_allclose(np.asarray(u["head/fc/kernel"]), -0.01, rtol=1e-6)


def test_schedule_and_errors():
    c = _config()
    c.epochs, c.warmup_epochs = 3.0, 1.0
    s = optimizer.schedule(c, 10)
    assert (s.total_steps, s.warmup_steps, s.base_lr) == (30, 10, 0.01)
    c.optim.lr = 0.0
    assert optimizer.schedule(c, 10).base_lr == pytest.approx(1e-3 * 16 / 256)
    c.warmup_epochs = 5.0
    with pytest.raises(ConfigError, match="warmup_epochs"):
        optimizer.schedule(c, 10)
    c.warmup_epochs, c.optim.name = 1.0, "lamb"
    with pytest.raises(ConfigError, match="optim.name='lamb'"):
        optimizer.make_optimizer(c, optimizer.schedule(c, 10), _params(), 3)
