"""One name per pytree leaf, whatever container holds it (core.key_paths): the names that
checksums, weight-decay masks and layer-wise learning rates are keyed by."""

import collections

import jax
import numpy as np

from msm_mae_jax.core.key_paths import key_names, path_name

State = collections.namedtuple("State", "params step")


def _names(tree) -> dict[str, float]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_name(path): float(np.sum(leaf)) for path, leaf in flat}


def test_a_leaf_reads_the_same_in_a_named_tuple_a_list_and_plain_dicts():
    leaves = {"kernel": np.ones(2), "bias": np.full(3, 2.0)}
    saved = State(params={"encoder": [leaves, {"scale": np.zeros(1)}]}, step=np.int32(7))
    restored = {"params": {"encoder": {"0": leaves, "1": {"scale": np.zeros(1)}}}, "step": 7}
    want = {
        "params/encoder/0/bias": 6.0,
        "params/encoder/0/kernel": 2.0,
        "params/encoder/1/scale": 0.0,
        "step": 7.0,
    }
    assert _names(saved) == want
    assert _names(restored) == want
    path = jax.tree_util.tree_flatten_with_path(saved)[0][0][0]
    assert key_names(path) == ("params", "encoder", "0", "bias")
