"""Normalise and validate the arguments of the public solvers, once, at the edge.

Each helper takes one user argument and returns what the solver core wants,
or raises a ValueError/TypeError that says what was received and what was
expected. The solver core then only sees: a tuple of leaves of one floating
dtype (float16/bfloat16 promoted to float32), strictly increasing times of
that dtype, and one rtol/atol tensor per leaf.
"""

import numbers
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from keras_node import _status

_LOW_PRECISION = (tf.float16, tf.bfloat16)


class State(NamedTuple):
    """A flattened initial state."""

    leaves: tuple  # tensors, in the integration dtype
    structure: object  # the user's nest, for packing results back
    dtype: tf.DType  # the user's dtype (results are cast back to it)
    solve_dtype: tf.DType  # float32 for float16/bfloat16, else dtype


def _short(value):
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def flatten_state(y0):
    """Flatten `y0` into a `State`; require floating leaves of one dtype."""
    leaves = tf.nest.flatten(y0)
    if not leaves:
        raise ValueError(f"y0 must hold at least one tensor. Received: y0={_short(y0)}")
    tensors = []
    for leaf in leaves:
        try:
            tensor = tf.convert_to_tensor(leaf)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"y0 must be a floating tensor or a nest of them; a leaf could not be "
                f"converted to a tensor ({error}). Received: y0={_short(y0)}"
            ) from None
        if not tensor.dtype.is_floating:
            raise TypeError(
                "y0 must be a floating tensor (float16, bfloat16, float32 or float64) or a "
                f"nest of them. Received: y0 with dtype {tensor.dtype.name}; cast it first, "
                "e.g. tf.cast(y0, tf.float32)"
            )
        tensors.append(tensor)
    dtypes = sorted({t.dtype.name for t in tensors})
    if len(dtypes) > 1:
        raise TypeError(
            f"All leaves of y0 must share one floating dtype. Received dtypes: {dtypes}"
        )
    dtype = tensors[0].dtype
    solve_dtype = tf.float32 if dtype in _LOW_PRECISION else dtype
    leaves = tuple(tf.cast(t, solve_dtype) for t in tensors)
    return State(leaves=leaves, structure=y0, dtype=dtype, solve_dtype=solve_dtype)


def times(t, dtype, name="t"):
    """Convert `t` to a 1-D tensor of `dtype` with >= 2 values.

    Returns `(t, direction)`: `direction` is +1.0 or -1.0 when the values are
    known now (and then they were checked to be finite and strictly
    monotonic), or `None` when `t` is only known at run time.
    """
    try:
        if not isinstance(t, (tf.Tensor, tf.Variable)) and not hasattr(t, "dtype"):
            t = np.asarray(t, dtype=np.float64)  # convert lists exactly, not via float32
        tensor = tf.convert_to_tensor(t)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a 1-D tensor, list or array of times. Received: {name}={_short(t)}") from None
    if not (tensor.dtype.is_floating or tensor.dtype.is_integer):
        raise TypeError(f"{name} must hold real numbers. Received: {name} with dtype {tensor.dtype.name}")
    if tensor.shape.rank is not None and tensor.shape.rank != 1:
        raise ValueError(
            f"{name} must be 1-D (a vector of times). Received: {name} with shape {tensor.shape}"
        )
    if tensor.shape.rank == 1 and tensor.shape[0] is not None and tensor.shape[0] < 2:
        raise ValueError(
            f"{name} must hold at least 2 times (start and end). Received: {name}={_short(t)}"
        )
    tensor = tf.cast(tensor, dtype)
    values = tf.get_static_value(tensor)
    if values is None:
        return tensor, None
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} must be finite. Received: {name}={_short(values.tolist())}")
    steps = np.diff(values)
    if np.all(steps > 0):
        return tensor, 1.0
    if np.all(steps < 0):
        return tensor, -1.0
    raise ValueError(
        f"{name} must be strictly increasing or strictly decreasing (no repeated "
        f"values). Received: {name}={_short(values.tolist())}"
    )


def runtime_time_check(tau):
    """int32 status for run-time times `tau` (already multiplied by the
    direction): BAD_TIMES unless finite and strictly increasing."""
    ok = tf.reduce_all(tau[1:] > tau[:-1]) & tf.reduce_all(tf.math.is_finite(tau))
    return tf.where(ok, _status.SUCCESS, _status.BAD_TIMES)


def _one_tolerance(value, leaf, name):
    try:
        tensor = tf.convert_to_tensor(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number or a tensor. Received: {name}={_short(value)}") from None
    if not (tensor.dtype.is_floating or tensor.dtype.is_integer):
        raise TypeError(f"{name} must be real. Received: {name} with dtype {tensor.dtype.name}")
    try:
        tf.broadcast_static_shape(tensor.shape, leaf.shape)
        if tensor.shape.rank is not None and leaf.shape.rank is not None and tensor.shape.rank > leaf.shape.rank:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"{name} must be a scalar or broadcastable to the state's shape {leaf.shape}. "
            f"Received: {name} with shape {tensor.shape}"
        ) from None
    values = tf.get_static_value(tensor)
    if values is not None:
        values = np.asarray(values, dtype=np.float64)
        if np.any(values < 0) or not np.all(np.isfinite(values)):
            shown = value if isinstance(value, (numbers.Number, list, tuple)) else values.tolist()
            raise ValueError(f"{name} must be finite and >= 0. Received: {name}={_short(shown)}")
    return tf.cast(tensor, leaf.dtype)


def tolerances(value, state, name):
    """One tolerance tensor per leaf of `state`, from a scalar, a tensor
    broadcastable to every leaf, or a nest matching `y0`."""
    if tf.nest.is_nested(state.structure) and tf.nest.is_nested(value) and not _is_plain_sequence_of_numbers(value):
        if not _same_paths(value, state.structure):
            raise ValueError(
                f"{name} given as a structure must match y0's structure. Expected: "
                f"{_short(tf.nest.map_structure(lambda _: '*', state.structure))}; "
                f"received: {name}={_short(value)}"
            )
        values = tf.nest.flatten(value)
    else:
        values = [value] * len(state.leaves)
    return tuple(_one_tolerance(v, leaf, name) for v, leaf in zip(values, state.leaves))


def _is_plain_sequence_of_numbers(value):
    return isinstance(value, (list, tuple)) and all(isinstance(v, numbers.Number) for v in value)


def check_both_tolerances(rtol, atol, names=("rtol", "atol")):
    """Reject rtol == atol == 0: no error could ever be accepted."""
    for r, a in zip(rtol, atol):
        rv, av = tf.get_static_value(r), tf.get_static_value(a)
        if rv is not None and av is not None and np.all(np.asarray(rv) == 0) and np.all(np.asarray(av) == 0):
            raise ValueError(
                f"{names[0]} and {names[1]} cannot both be zero: no step could pass the error "
                f"test. Received: {names[0]}=0, {names[1]}=0"
            )


def positive_scalar_or_none(value, name):
    """Validate an optional positive step length (`first_step`, `step_size`)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.ndarray, tf.Tensor, tf.Variable)):
        raise TypeError(f"{name} must be a positive number or None. Received: {name}={_short(value)}")
    static = tf.get_static_value(tf.convert_to_tensor(value))
    if static is not None:
        static = np.asarray(static)
        if static.shape != () or not np.isfinite(static) or static <= 0:
            raise ValueError(f"{name} must be a positive finite scalar or None. Received: {name}={_short(value)}")
    return value


def check_bool(value, name):
    """Reject non-bool flags (a string "False" would be truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False. Received: {name}={_short(value)}")
    return value


def max_steps(value):
    """Validate `max_num_steps`: a positive Python int (it bounds a loop)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(
            f"max_num_steps must be a positive integer. Received: max_num_steps={_short(value)}"
        )
    return int(value)


def normalized_func(func, state, direction):
    """Wrap the user's `func(t, y)` as the solver wants it.

    The wrapper takes `(tau, leaves)` where `tau = direction * t` is the
    increasing solver time, calls `func(t, y)` with the user's structure, and
    checks (once, while tracing) that the result has the structure, shapes
    and dtype of the `y` it was given, naming both when it does not.
    """
    structure = state.structure

    def wrapped(tau, leaves):
        t = tau if is_plus_one(direction) else tau * direction
        result = func(t, tf.nest.pack_sequence_as(structure, list(leaves)))
        if any(leaf is None for leaf in tf.nest.flatten(result)):
            raise ValueError(
                "func(t, y) must return dy/dt (tensors with y0's structure), not None. "
                f"Received: {_short(result)}"
            )
        if not _same_paths(result, structure):
            raise ValueError(
                "func(t, y) must return dy/dt with the same structure as y0. "
                f"Expected: {_short(tf.nest.map_structure(lambda _: '*', structure))}; "
                f"received: {_short(result)}"
            )
        out = []
        for got, want in zip(tf.nest.flatten(result), leaves):
            got = tf.convert_to_tensor(got)
            if got.dtype != want.dtype:
                raise ValueError(
                    f"func(t, y) must return dy/dt with y's dtype {want.dtype.name} "
                    f"(the dtype the solver integrates in). Received: dtype {got.dtype.name}"
                )
            if not got.shape.is_compatible_with(want.shape):
                raise ValueError(
                    f"func(t, y) must return dy/dt with y's shape {want.shape}. "
                    f"Received: shape {got.shape}"
                )
            out.append(got if is_plus_one(direction) else got * direction)
        return tuple(out)

    return wrapped


def _same_paths(result, structure):
    """Same nest up to list/tuple: identical dict keys and sequence lengths."""
    return list(_paths(result)) == list(_paths(structure))


def _paths(nest, prefix=()):
    """Leaf paths of a nest: dict keys (sorted, as tf.nest orders them) and
    sequence indices; lists and tuples are interchangeable."""
    if isinstance(nest, dict):
        if not nest:
            yield prefix + ("{}",)
        for key in sorted(nest):
            yield from _paths(nest[key], prefix + (("key", key),))
    elif isinstance(nest, (list, tuple)) and not hasattr(nest, "_fields"):
        if not nest:
            yield prefix + ("[]",)
        for index, item in enumerate(nest):
            yield from _paths(item, prefix + (("index", index),))
    elif hasattr(nest, "_fields"):  # namedtuple: fields matter
        for field in nest._fields:
            yield from _paths(getattr(nest, field), prefix + (("field", field),))
    else:
        yield prefix


def is_plus_one(direction):
    """True when `direction` is the Python constant +1.0 (time runs forward)."""
    return isinstance(direction, float) and direction == 1.0
