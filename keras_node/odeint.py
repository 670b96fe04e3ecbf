"""`keras_node.odeint`: solve an ODE and differentiate through the solver."""

import tensorflow as tf
from tensorflow.python.eager import record

from keras_node import _compile
from keras_node import _inputs
from keras_node import _status
from keras_node import _xla
from keras_node.solvers import registry
from keras_node.solvers.integrate import integrate


# Autograph has nothing to convert here (all control flow is explicit TF ops)
# and converting the whole solver costs seconds of tracing.
@tf.autograph.experimental.do_not_convert
def odeint(
    func, y0, t, *, method="dopri5", rtol=1e-3, atol=1e-6, first_step=None,
    step_size=None, max_num_steps=10_000, return_stats=False, jit_compile="auto", name=None,
):
    """Integrate `dy/dt = func(t, y)` from `y(t[0]) = y0` and return y at every `t`.

    Gradients flow through the solver's operations (backpropagation through
    the steps: memory grows with the number of steps). For constant-memory
    gradients use `keras_node.odeint_adjoint`.

    Args:
        func: `func(t, y) -> dy/dt`, returning the structure, shapes and dtype
            of `y`; `t` is a scalar tensor of y's dtype.
        y0: floating tensor of any shape, or a nest (tuple/list/dict) of
            floating tensors of one dtype. float16/bfloat16 states are
            integrated in float32 and the result cast back.
        t: 1-D times (tensor, list or array), at least 2 values, strictly
            increasing or strictly decreasing.
        method: one of `keras_node.METHODS`: adaptive `"dopri5"` (default),
            `"tsit5"`, `"bosh3"`, `"heun_euler"`, `"dopri8"`; fixed-step
            `"euler"`, `"midpoint"`, `"rk4"`.
        rtol, atol: relative and absolute tolerances: scalars, tensors
            broadcastable to y0, or nests matching y0. A step is accepted when
            the RMS over all components of
            `error / (atol + rtol * max(|y_old|, |y_new|))` is <= 1.
        first_step: initial step size for adaptive methods (default: chosen
            automatically, Hairer, Norsett & Wanner II.4).
        step_size: step for fixed-step methods; the last step of each interval
            of `t` is shortened to land on it. `None`: one step per interval.
        max_num_steps: bound on attempted steps (accepted and rejected).
        return_stats: also return a dict of int32 scalars `nfe`, `num_steps`,
            `num_rejected`, `status` (0 = success).
        jit_compile: compile the solver loop with XLA: `True`, `False`, or
            `"auto"` (default: when every op of `func` has an XLA kernel,
            else without XLA and a one-time warning; convolutional dynamics
            without a GPU run without XLA, whose CPU convolutions are slow).
            While a gradient tape records, `"auto"` leaves `odeint`'s loop
            uncompiled (gradients cannot cross an XLA boundary through its
            loop). Inside a function that is already XLA-compiled this
            changes nothing.
        name: optional name of the solve, used in error messages.

    Returns:
        `ys` with y0's structure, each leaf with a leading time axis of
        length `len(t)` (`ys[0]` equals y0 exactly), or `(ys, stats)`.

    Raises:
        ValueError, TypeError: invalid arguments (named in the message).
        tf.errors.InvalidArgumentError: the solve failed (max_num_steps
            exceeded, step size underflow, non-finite state, or run-time `t`
            not monotonic); the message names the cause and the time reached.
            Under XLA (`jit_compile=True`) the outputs are NaN instead and
            `stats["status"]` is non-zero.

    Example:

    >>> ys = keras_node.odeint(lambda t, y: -y, tf.constant([1.0]), [0.0, 1.0])
    >>> float(ys[-1, 0])  # exp(-1)
    0.3678...
    """
    _inputs.check_bool(return_stats, "return_stats")
    problem = Problem(func, y0, t, method, rtol, atol, first_step, step_size, max_num_steps,
                      where=_where("odeint", name), jit_compile=jit_compile)
    leaves, stats = problem.run()
    ys = problem.pack(leaves)
    return (ys, stats) if return_stats else ys


class Problem:
    """Validated arguments of one `odeint` call and how to run its core."""

    def __init__(self, func, y0, t, method, rtol, atol, first_step, step_size, max_num_steps,
                 where="odeint", jit_compile="auto"):
        if not callable(func):
            raise TypeError(
                "func must be callable as func(t, y) -> dy/dt. "
                f"Received: func={func!r} of type {type(func).__name__}"
            )
        self.func = func
        self.where = where
        self.tableau = registry.get_tableau(method)
        self.state = _inputs.flatten_state(y0)
        self.t, self.direction = _inputs.times(t, self.state.solve_dtype)
        self.rtol = _inputs.tolerances(rtol, self.state, "rtol")
        self.atol = _inputs.tolerances(atol, self.state, "atol")
        _inputs.check_both_tolerances(self.rtol, self.atol)
        self.first_step = _inputs.positive_scalar_or_none(first_step, "first_step")
        self.step_size = _inputs.positive_scalar_or_none(step_size, "step_size")
        self.max_num_steps = _inputs.max_steps(max_num_steps)
        self.jit_compile_option = _xla.validate(jit_compile)
        self.jit_compile = _xla.resolve(
            jit_compile, _inputs.normalized_func(func, self.state, self.direction or 1.0),
            self.state.leaves, self.state.solve_dtype, where, owner=func,
        )

    def static_key(self):
        return (
            self.tableau.name, self.direction, self.max_num_steps, self.where,
            self.first_step is None, self.step_size is None,
            repr(tf.nest.map_structure(lambda _: None, self.state.structure)),
        )

    def step_arguments(self):
        """`(first_step, step_size)` as tensors of the solve dtype (or None)."""
        return (
            _as_tensor_or_none(self.first_step, self.state.solve_dtype),
            _as_tensor_or_none(self.step_size, self.state.solve_dtype),
        )

    def run(self):
        """Solve (compiled and cached when called eagerly); raise on failure."""
        args = (self.state.leaves, self.t, self.rtol, self.atol) + self.step_arguments()
        ys, stats, t_reached = _compile.run(
            self.func, ("odeint",) + self.static_key(), self.core, args, self._jit_for_backprop()
        )
        ys = _status.guard(ys, stats["status"], t_reached, self.where, self.max_num_steps)
        return ys, stats

    def _jit_for_backprop(self):
        """XLA for a solve that gradients may flow through.

        A gradient taken outside an XLA-compiled solver loop needs the loop's
        intermediate TensorLists to leave XLA, which TensorFlow does not
        support. So while a gradient tape records, `"auto"` runs the loop
        without XLA (use `odeint_adjoint`, or compile the whole training step
        with `jit_compile=True`), and `True` is an error.
        """
        if not self.jit_compile or _status.in_xla_context() or not record.could_possibly_record():
            return self.jit_compile
        if self.jit_compile_option is True:
            raise ValueError(
                f"{self.where}: jit_compile=True cannot be combined with gradients through the "
                "solver taken outside the compiled function. Use odeint_adjoint, compile the "
                "whole training step with jit_compile=True, or pass jit_compile=\"auto\"."
            )
        return False

    def core(self, leaves, t, rtol, atol, first_step, step_size):
        """The whole solve on tensors: direction, integrate. Returns the
        outputs, the stats and the time reached (for error messages)."""
        direction = self.direction
        initial_status = None
        if direction is None:
            direction = tf.sign(t[1] - t[0])
            initial_status = _inputs.runtime_time_check(t * direction)
        forward = _inputs.is_plus_one(direction)
        tau = t if forward else t * direction
        solution = integrate(
            _inputs.normalized_func(self.func, self.state, direction), tuple(leaves), tau,
            tableau=self.tableau, rtol=tuple(rtol), atol=tuple(atol),
            max_num_steps=self.max_num_steps,
            first_step=None if first_step is None else tf.abs(first_step),
            step_size=None if step_size is None else tf.abs(step_size),
            initial_status=initial_status,
        )
        t_reached = solution.t_reached if forward else solution.t_reached * direction
        return list(solution.ys), stats_dict(solution), t_reached

    def pack(self, leaves):
        leaves = [tf.cast(y, self.state.dtype) for y in leaves]
        return tf.nest.pack_sequence_as(self.state.structure, leaves)


def _where(function_name, name):
    """How error messages name a solve: `odeint` or `odeint ('my_layer')`."""
    return function_name if name is None else f"{function_name} ({name})"


def stats_dict(solution):
    """The public stats of a `Solution`: int32 scalars."""
    return {
        "nfe": solution.nfe, "num_steps": solution.num_steps,
        "num_rejected": solution.num_rejected, "status": solution.status,
    }


def _as_tensor_or_none(value, dtype):
    if value is None:
        return None
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return tf.cast(value, dtype)
    return tf.constant(value, dtype)
