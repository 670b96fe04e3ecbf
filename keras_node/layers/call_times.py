"""The times of an `ODELayer`: the configured grid and a call-time `t`."""

import inspect

import numpy as np
import tensorflow as tf

from keras_node import _times


def check_call_time_rank(rank, per_sample_steps, shape):
    """A call-time `t` is 1-D, or 2-D `(batch, n)` with per-sample steps."""
    if rank == 1 or (rank == 2 and per_sample_steps):
        return
    if rank == 2:
        raise ValueError(
            "A 2-D call-time t (a grid of times per sample, shape (batch, n)) needs "
            f"ODELayer(per_sample_steps=True). Received: t with shape {tuple(shape)}"
        )
    expected = "1-D (a vector of times)" + (" or 2-D (batch, n)" if per_sample_steps else "")
    raise ValueError(f"The call-time t of an ODELayer must be {expected}. "
                     f"Received: t with shape {tuple(shape)}")


def time_dtype(dtype):
    """The dtype the solver integrates a state of `dtype` in."""
    dtype = tf.as_dtype(dtype)
    return tf.float32 if dtype in (tf.float16, tf.bfloat16) else dtype


def takes_time(layer):
    """Whether `layer.call` takes a `t` argument (time-dependent dynamics)."""
    try:
        parameters = inspect.signature(layer.call).parameters
    except (TypeError, ValueError):
        return False
    return "t" in parameters


def config_times(t):
    """The constructor's `t`, checked, as a tuple of Python floats (config)."""
    try:
        values = np.asarray(t, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"t must be a sequence of numbers. Received: t={t!r}") from None
    if values.ndim != 1 or values.shape[0] < 2:
        raise ValueError(f"t must be 1-D with at least 2 times. Received: t={t!r}")
    _times.times(values, tf.float64)  # finite, strictly monotonic
    return tuple(float(v) for v in values)
