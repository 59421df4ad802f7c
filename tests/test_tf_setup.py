"""TensorFlow as the input pipeline gets it: Keras's eager optimizer import skipped, Keras
itself still importable; pipeline functions traced without AutoGraph."""

import os
import subprocess
import sys

import numpy as np
import pytest

from msm_mae_jax.data import tf_setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CHECK = """
import sys
from msm_mae_jax.data.tf_setup import tensorflow
tf = tensorflow()
assert "keras" not in sys.modules, sorted(m for m in sys.modules if m.startswith("keras"))[:5]
assert "keras.src.optimizers" not in sys.modules  # the None entry is gone
import keras.src.optimizers
assert tf.keras.optimizers.Adam is keras.src.optimizers.Adam
print("ok")
"""


def test_tensorflow_starts_without_keras_which_stays_importable():
    r = subprocess.run(
        [sys.executable, "-c", _CHECK],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_plain_functions_trace_as_written():
    """No AutoGraph: Python branches on static values work, a Python `if` on a tensor is an
    error at trace time (AutoGraph would have turned it into tf.cond silently)."""
    tf = tf_setup.tensorflow()

    def static(x):
        return x * 2 if x.dtype == tf.float32 else x

    def on_tensor(x):
        return x * 2 if x > 0 else x

    ds = tf.data.Dataset.from_tensor_slices(np.arange(3, dtype=np.float32))
    assert list(ds.map(tf_setup.plain(static)).as_numpy_iterator()) == [0.0, 2.0, 4.0]
    with pytest.raises(TypeError, match="bool"):  # a tf.Tensor as a Python bool
        ds.map(tf_setup.plain(on_tensor))
