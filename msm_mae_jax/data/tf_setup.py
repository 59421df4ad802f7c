"""TensorFlow, imported once and set up for its one job here: the host input pipeline.

Its GPUs are hidden (the accelerators belong to jax) before anything else touches them.
Every module that needs TF gets it from `tensorflow()`, so the set-up cannot be forgotten.
"""

from __future__ import annotations

import functools
import os
import sys

_KERAS_EAGER = "keras.src.optimizers"  # what `import tensorflow` loads and never needs here


@functools.cache
def tensorflow():  # noqa: ANN201 (the tensorflow module)
    """The `tensorflow` module with its GPUs hidden; imported on first use (it is heavy)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TF's __init__ imports Keras's optimizers eagerly (to register them for SavedModel),
    # about a fifth of TF's start-up (~1 s of every command); nothing here uses Keras. A None
    # entry makes that one import fail, which TF allows; it is removed at once, so Keras
    # (and tf.keras, a lazy module) still import normally for anyone who asks.
    blocked = _KERAS_EAGER not in sys.modules
    if blocked:
        sys.modules[_KERAS_EAGER] = None  # type: ignore[assignment]
    try:
        import tensorflow as tf
    finally:
        if blocked and sys.modules.get(_KERAS_EAGER, 0) is None:
            del sys.modules[_KERAS_EAGER]

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF was initialised by the caller already: nothing to hide then
        pass
    return tf


def plain(fn):  # noqa: ANN001, ANN201
    """`fn` marked for tf.data/tf.function to trace as written, without AutoGraph: the
    pipeline's functions branch on Python values only (dtypes, static shapes, dict keys), and
    converting them cost ~0.5 s of every pipeline's start (measured on a tiny training run)."""
    return tensorflow().autograph.experimental.do_not_convert(fn)
