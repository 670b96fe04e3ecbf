"""Normalise the arguments of one solver call, once, at the edge.

The options were validated when they were built (`options.py`); what is left
depends on the call's own values: `y0`'s leaves and dtype, the times `t`,
and the tolerances' shapes against the state. `problem` turns them into a
`Problem`, the one argument of the compiled solve, or raises a
ValueError/TypeError that says what was received and what was expected.
The solver core then only sees leaves of one floating dtype (float16/bfloat16
promoted to float32), times of that dtype, and one rtol/atol tensor per leaf.
"""

import numbers
from typing import NamedTuple, Optional

import numpy as np
import tensorflow as tf

from keras_node._times import runtime_time_check, times  # noqa: F401 (re-exported)
from keras_node._validate import short_repr as _short

_LOW_PRECISION = (tf.float16, tf.bfloat16)


class Problem(NamedTuple):
    """One call's inputs, normalised: tensors, plus the Python values that
    shape the computation (they key `tf.function`'s cache)."""

    y0: object  # the user's structure, every leaf a tensor of the solve dtype
    dtype: tf.DType  # the user's dtype (results are cast back to it)
    t: tf.Tensor  # 1-D times, solve dtype
    direction: Optional[float]  # +1.0 / -1.0 when known now, else None
    rtol: tuple  # a tensor per leaf
    atol: tuple
    first_step: Optional[tf.Tensor]
    step_size: Optional[tf.Tensor]
    max_step: Optional[tf.Tensor] = None
    step_times: Optional[tf.Tensor] = None  # 1-D, user time, increasing
    jump_times: Optional[tf.Tensor] = None

    @property
    def leaves(self):
        return tuple(tf.nest.flatten(self.y0))

    @property
    def solve_dtype(self):
        return self.leaves[0].dtype

    def pack(self, leaves):
        """Results per leaf -> the user's structure and dtype."""
        return tf.nest.pack_sequence_as(self.y0, [tf.cast(y, self.dtype) for y in leaves])


def problem(y0, t, options):
    """Validate one call's `y0` and `t` against `options` (a `SolverOptions`)."""
    state, dtype = flatten_state(y0)
    solve_dtype = state[0].dtype
    per_sample = options.batch_axis == 0
    times_tensor, direction = times(t, solve_dtype, per_sample=per_sample)
    if per_sample:
        check_batch(state, times_tensor)
    rtol = tolerances(options.rtol, y0, state, "rtol")
    atol = tolerances(options.atol, y0, state, "atol")
    check_both_tolerances(rtol, atol)
    return Problem(
        y0=tf.nest.pack_sequence_as(y0, list(state)), dtype=dtype, t=times_tensor,
        direction=direction, rtol=rtol, atol=atol,
        first_step=step_tensor(options.first_step, solve_dtype),
        step_size=step_tensor(options.step_size, solve_dtype),
        max_step=step_tensor(options.max_step, solve_dtype),
        step_times=_optional_tensor(options.step_times, solve_dtype),
        jump_times=_optional_tensor(options.jump_times, solve_dtype),
    )


def _optional_tensor(value, dtype):
    return None if value is None else tf.reshape(_as_tensor(value, dtype), [-1])


def check_batch(leaves, t):
    """With `batch_axis=0`: every leaf has a leading batch axis, of one
    size, matched by the rows of a 2-D `t` (where the sizes are known now)."""
    for leaf in leaves:
        if leaf.shape.rank == 0:
            raise ValueError(
                "With batch_axis=0 every leaf of y0 needs a leading batch axis. Received: a "
                "leaf with shape ()"
            )
    sizes = {leaf.shape[0] for leaf in leaves if leaf.shape.rank is not None}
    if t.shape.rank == 2:
        sizes.add(t.shape[0])
    sizes.discard(None)
    if len(sizes) > 1:
        shapes = [tuple(leaf.shape) for leaf in leaves]
        raise ValueError(
            "With batch_axis=0 the leaves of y0 (and the rows of a 2-D t) must share the "
            f"batch size on axis 0. Received: y0 leaf shapes {shapes}, t shape {tuple(t.shape)}"
        )


def step_tensor(value, dtype):
    """An (already validated) optional step length as a positive scalar tensor."""
    if value is None:
        return None
    return tf.abs(_as_tensor(value, dtype))


def _as_tensor(value, dtype):
    """`value` as a tensor of `dtype`; Python and numpy numbers convert in
    that dtype directly (0.1 through float32 would not be 0.1 in float64)."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return tf.cast(value, dtype)
    if isinstance(value, numbers.Real):
        return tf.constant(value, dtype)
    return tf.convert_to_tensor(np.asarray(value, dtype=dtype.as_numpy_dtype))


def flatten_state(y0):
    """`(leaves, dtype)`: `y0`'s leaves in the solve dtype, and its own
    dtype; require floating leaves of one dtype."""
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
    return tuple(tf.cast(t, solve_dtype) for t in tensors), dtype


def _one_tolerance(value, leaf, name):
    """A tolerance (its values checked in `options.py`) as a tensor of the
    leaf's dtype; its shape must broadcast to the leaf's."""
    tensor = _as_tensor(value, leaf.dtype)
    rank, leaf_rank = tensor.shape.rank, leaf.shape.rank
    try:
        tf.broadcast_static_shape(tensor.shape, leaf.shape)
        if rank is not None and leaf_rank is not None and rank > leaf_rank:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"{name} must be a scalar or broadcastable to the state's shape {leaf.shape}. "
            f"Received: {name} with shape {tensor.shape}"
        ) from None
    return tensor


def tolerances(value, structure, leaves, name):
    """One tolerance tensor per leaf, from a scalar, a tensor broadcastable
    to every leaf, or a nest matching `y0` (`structure`)."""
    if tf.nest.is_nested(structure) and tf.nest.is_nested(value) and not _is_plain_sequence_of_numbers(value):
        if not _same_paths(value, structure):
            raise ValueError(
                f"{name} given as a structure must match y0's structure. Expected: "
                f"{_short(tf.nest.map_structure(lambda _: '*', structure))}; "
                f"received: {name}={_short(value)}"
            )
        values = tf.nest.flatten(value)
    else:
        values = [value] * len(leaves)
    return tuple(_one_tolerance(v, leaf, name) for v, leaf in zip(values, leaves))


def check_both_tolerances(rtol, atol, names=("rtol", "atol")):
    """Reject rtol == atol == 0 (per leaf, where known now): no error could
    ever be accepted."""
    for r, a in zip(rtol, atol):
        rv, av = tf.get_static_value(r), tf.get_static_value(a)
        if rv is not None and av is not None and np.all(np.asarray(rv) == 0) and np.all(np.asarray(av) == 0):
            raise ValueError(
                f"{names[0]} and {names[1]} cannot both be zero: no step could pass the error "
                f"test. Received: {names[0]}=0, {names[1]}=0"
            )


def _is_plain_sequence_of_numbers(value):
    return isinstance(value, (list, tuple)) and all(isinstance(v, numbers.Number) for v in value)


def normalized_func(func, structure, direction):
    """Wrap the user's `func(t, y)` as the solver wants it.

    The wrapper takes `(tau, leaves)` where `tau = direction * t` is the
    increasing solver time, calls `func(t, y)` with the user's structure, and
    checks (once, while tracing) that the result has the structure, shapes
    and dtype of the `y` it was given, naming both when it does not.
    """
    def wrapped(tau, leaves):
        t = tau if is_plus_one(direction) else tau * direction
        # A scope of our own: a Keras layer named "_x" opens the scope "_x",
        # which TensorFlow refuses at the root of a graph.
        with tf.name_scope("func"):
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
