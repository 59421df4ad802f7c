"""The base both trainers share (`train.sharded_state`), on a toy least-squares trainer over
8 fake devices: the accumulated update against numpy, the optimizer state's shardings, the
host <-> global arrays and the batch checks."""

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.train import optim, sharding
from msm_mae_jax.train.sharded_state import ShardedSetup

D, K, B = 6, 4, 16
LR = 0.1
SCHEDULE = optim.Schedule(
    total_steps=10, steps_per_epoch=10, warmup_steps=0, base_lr=LR, min_lr=0.0
)


@flax.struct.dataclass
class ToyState:
    step: jax.Array
    params: dict
    opt_state: object
    rng: jax.Array


class Toy(ShardedSetup):
    """Least squares y ~ x @ w: w [D, K] split over 'fsdp' by rows, the rest as a trainer."""

    def __init__(self, accum: int, tx: optax.GradientTransformation, eval_batch_size=None):
        c = ml_collections.ConfigDict()
        c.mesh = (("data", 4), ("fsdp", 2))
        c.sharding_rules = (("batch", ("data", "fsdp")),)
        c.grad_accum_steps = accum
        super().__init__(c, SCHEDULE)
        self.check_batch(B, eval_batch_size)
        self.tx = tx
        param_sh = {"w": NamedSharding(self.mesh, P("fsdp", None))}
        abstract = {"w": jax.ShapeDtypeStruct((D, K), jnp.float32)}
        self._shard_state(ToyState(**self.shared_shardings(abstract, param_sh)), self._init)
        rows = sharding.batch_sharding(self.mesh, self.rules, ndim=2)
        self.step = self.jit_step(self._step, rows, rows)

    def _init(self):
        p = {"w": jnp.zeros((D, K), jnp.float32)}
        return ToyState(jnp.zeros((), jnp.int32), p, self.tx.init(p), jax.random.PRNGKey(0))

    @staticmethod
    def _loss(params, x_BD, y_BK, key):
        return jnp.mean((x_BD @ params["w"] - y_BK) ** 2)

    def _step(self, state, x_BD, y_BK):
        return self.update(state, self._loss, (x_BD, y_BK), state.rng, all_metrics=True)

    def run(self, w0, x, y):
        state = jax.device_put(self._init().replace(params={"w": w0}), self.state_shardings)
        with self.activate():
            return self.step(state, *self.global_batch(x, y))


def _data():
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((D, K)).astype(np.float32)
    x, y = rng.standard_normal((B, D)), rng.standard_normal((B, K))
    return w0, x.astype(np.float32), y.astype(np.float32)


@pytest.mark.parametrize("accum", [1, 2])
def test_update_is_one_sgd_step_on_the_whole_batch(accum):
    """Mean of the micro-batches' gradients = the whole batch's (numpy, closed form)."""
    w0, x, y = _data()
    state, m = Toy(accum, optax.sgd(LR)).run(w0, x, y)
    r = x.astype(np.float64) @ w0 - y
    grad = 2 * x.T.astype(np.float64) @ r / (B * K)
    w1 = w0 - LR * grad
    np.testing.assert_allclose(np.asarray(state.params["w"]), w1, rtol=1e-5, atol=1e-6)
    assert int(state.step) == 1
    assert float(m["loss"]) == pytest.approx(np.mean(r**2), rel=1e-5)
    assert float(m["l2_grads"]) == pytest.approx(np.linalg.norm(grad), rel=1e-5)
    assert float(m["l2_updates"]) == pytest.approx(LR * np.linalg.norm(grad), rel=1e-5)
    assert float(m["l2_params"]) == pytest.approx(np.linalg.norm(w1), rel=1e-5)
    assert float(m["lr"]) == pytest.approx(LR) and bool(m["finite"])


def test_a_nan_batch_is_reported_not_finite():
    w0, x, y = _data()
    x[3, 0] = np.nan
    _, m = Toy(2, optax.sgd(LR)).run(w0, x, y)
    assert not bool(m["finite"])


def test_optimizer_state_is_sharded_like_its_parameters():
    """Adam's moments of w take w's sharding; its step count is replicated."""
    s = Toy(1, optax.adam(LR))
    w_sh = s.state_shardings.params["w"]
    adam = s.state_shardings.opt_state[0]
    assert adam.mu["w"] == w_sh and adam.nu["w"] == w_sh and w_sh.spec == P("fsdp", None)
    assert adam.count == s.replicated_sharding
    assert s.abstract_state.opt_state[0].mu["w"].sharding == w_sh
    assert s.abstract_state.opt_state[0].mu["w"].shape == (D, K)


def test_global_batch_and_replicated():
    s = Toy(1, optax.sgd(LR))
    _, x, y = _data()
    one = s.global_batch(x)
    assert isinstance(one, jax.Array) and one.sharding.spec == P(("data", "fsdp"), None)
    gx, gy = s.global_batch(x, y[:, 0])
    np.testing.assert_array_equal(np.asarray(gx), x)
    assert gy.shape == (B,) and len(gy.sharding.device_set) == 8
    r = s.replicated(np.arange(3))
    assert r.sharding == s.replicated_sharding and r.is_fully_replicated


@pytest.mark.parametrize(
    "accum,eval_batch,match",
    [
        (3, None, "not divisible by config.grad_accum_steps=3"),
        (4, None, "16 / grad_accum_steps=4 = 4 examples per micro-batch do not split over the 8"),
        (1, 12, "eval_batch_size=12 does not split over the 8 batch shards"),
    ],
)
def test_batch_checks_name_the_key(accum, eval_batch, match):
    with pytest.raises(ConfigError, match=match):
        Toy(accum, optax.sgd(LR), eval_batch_size=eval_batch)
