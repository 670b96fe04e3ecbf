"""The output times `t` of a solve: converted and checked once, at the edge.

A joint solve takes 1-D times. A per-sample solve (`batch_axis=0`) also
takes a 2-D grid `(batch, n)`, one row of times per sample; every row must
run in the same direction (the solver negates decreasing times once for the
whole batch). Times known now are checked now; times only known at run time
are checked by the solver (`runtime_time_check`), which fails the solve, or
under per-sample solves only the samples whose rows are bad.
"""

import numpy as np
import tensorflow as tf

from keras_node import _status
from keras_node._validate import short_repr as _short

_PER_SAMPLE_HINT = "pass batch_axis=0 for a grid of times per sample, shape (batch, n)"


def times(t, dtype, name="t", per_sample=False, hint=_PER_SAMPLE_HINT):
    """Convert `t` to a tensor of `dtype`: 1-D with >= 2 values, or with
    `per_sample` also 2-D `(batch, n)` with n >= 2.

    Returns `(t, direction)`: `direction` is +1.0 or -1.0 when the values are
    known now (and then they were checked to be finite and strictly
    monotonic, every row the same way), or `None` when `t` is only known at
    run time. `hint` says how to get a per-sample grid, for a 2-D `t` given
    without `per_sample`.
    """
    tensor = convert_times(t, name)
    rank = tensor.shape.rank
    if rank is not None and rank != 1 and not (per_sample and rank == 2):
        expected = "1-D (a vector of times) or 2-D (batch, n)" if per_sample else "1-D (a vector of times)"
        advice = f"; {hint}" if rank == 2 and not per_sample else ""
        raise ValueError(f"{name} must be {expected}{advice}. Received: {name} with shape {tensor.shape}")
    if rank is not None and tensor.shape[-1] is not None and tensor.shape[-1] < 2:
        raise ValueError(
            f"{name} must hold at least 2 times (start and end) per row. Received: {name}={_short(t)}"
        )
    tensor = tf.cast(tensor, dtype)
    values = tf.get_static_value(tensor)
    if values is None:
        return tensor, None
    return tensor, _static_direction(np.asarray(values, dtype=np.float64), name)


def convert_times(t, name):
    """`t` (times of any shape) as a tensor; lists convert exactly (float64)."""
    try:
        if not isinstance(t, (tf.Tensor, tf.Variable)) and not hasattr(t, "dtype"):
            t = np.asarray(t, dtype=np.float64)  # convert lists exactly, not via float32
        tensor = tf.convert_to_tensor(t)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be a tensor, list or array of times. Received: {name}={_short(t)}"
        ) from None
    if not (tensor.dtype.is_floating or tensor.dtype.is_integer):
        raise TypeError(f"{name} must hold real numbers. Received: {name} with dtype {tensor.dtype.name}")
    return tensor


def _static_direction(values, name):
    """+1.0 or -1.0 for finite, strictly monotonic rows all running one way."""
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} must be finite. Received: {name}={_short(values.tolist())}")
    steps = np.diff(np.atleast_2d(values), axis=-1)
    increasing, decreasing = np.all(steps > 0, axis=-1), np.all(steps < 0, axis=-1)
    if np.all(increasing):
        return 1.0
    if np.all(decreasing):
        return -1.0
    if values.ndim == 2 and np.all(increasing | decreasing):
        raise ValueError(
            f"Every row of {name} must run in the same direction (all increasing or all "
            f"decreasing). Received: rows {np.flatnonzero(increasing).tolist()[:8]} increase and "
            f"rows {np.flatnonzero(decreasing).tolist()[:8]} decrease"
        )
    bad = np.flatnonzero(~(increasing | decreasing))
    where = f" (row {int(bad[0])})" if values.ndim == 2 else ""
    raise ValueError(
        f"{name} must be strictly increasing or strictly decreasing{where} (no repeated "
        f"values). Received: {name}={_short(values.tolist())}"
    )


def runtime_time_check(tau):
    """int32 status for run-time times `tau` (already multiplied by the
    direction): BAD_TIMES unless finite and strictly increasing. For a 2-D
    grid, one status per row (per sample)."""
    ok = (tf.reduce_all(tau[..., 1:] > tau[..., :-1], axis=-1)
          & tf.reduce_all(tf.math.is_finite(tau), axis=-1))
    return tf.where(ok, _status.SUCCESS, _status.BAD_TIMES)
