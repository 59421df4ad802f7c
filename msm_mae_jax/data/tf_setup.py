"""TensorFlow, imported once and set up for its one job here: the host input pipeline.

Its GPUs are hidden (the accelerators belong to jax) before anything else touches them.
Every module that needs TF gets it from `tensorflow()`, so the set-up cannot be forgotten.
"""

from __future__ import annotations

import functools
import os


@functools.cache
def tensorflow():  # noqa: ANN201 (the tensorflow module)
    """The `tensorflow` module with its GPUs hidden; imported on first use (it is heavy)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF was initialised by the caller already: nothing to hide then
        pass
    return tf


def plain(fn):  # noqa: ANN001, ANN201
    """`fn` marked for tf.data/tf.function to trace as written, without AutoGraph: the
    pipeline's functions branch on Python values only (dtypes, static shapes, dict keys), and
    converting them cost ~1.5 s of every pipeline's start (the log-mel front end's source)."""
    return tensorflow().autograph.experimental.do_not_convert(fn)
