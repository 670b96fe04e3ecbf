"""`keras_node.odeint`: solve an ODE and differentiate through the solver.

Also the pieces the other public solvers share: `solve` (odeint on validated
options), `integrate_problem` (time direction + the solver loop) and
`resolve_jit` (whether the loop runs under XLA).
"""

import functools

import tensorflow as tf
# Private, because no public API tells whether a gradient tape is recording;
# `jit_compile="auto"` must not put odeint's loop under XLA when a gradient
# will be taken through it from outside XLA (TensorFlow cannot differentiate
# across that boundary through a loop).
from tensorflow.python.eager import record

from keras_node import _backprop
from keras_node import _execution
from keras_node import _inputs
from keras_node import _status
from keras_node import _xla
from keras_node._validate import check_bool, short_repr
from keras_node.options import SolverOptions
from keras_node.solvers import recompute
from keras_node.solvers import stops
from keras_node.solvers.integrate import Controls, integrate
from keras_node.solvers.per_sample import integrate_per_sample


# Autograph has nothing to convert here (all control flow is explicit TF ops)
# and converting the whole solver costs seconds of tracing.
@tf.autograph.experimental.do_not_convert
def odeint(
    func, y0, t, *, method="dopri5", rtol=1e-3, atol=1e-6, first_step=None,
    step_size=None, max_num_steps=10_000, return_stats=False, jit_compile="auto", name=None,
    batch_axis=None, max_step=None, step_times=None, jump_times=None,
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
            `"tsit5"`, `"bosh3"`, `"heun_euler"`, `"dopri8"`, and for stiff
            problems `"rodas4"` (Rosenbrock; a dense Jacobian per step,
            sensible up to a few hundred state components); fixed-step
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
            `num_rejected`, `status` (0 = success; 1 max_num_steps exceeded,
            2 step size underflow, 3 non-finite state, 4 `t` not monotonic,
            5 non-finite initial state).
        jit_compile: compile the solver loop with XLA: `True`, `False`, or
            `"auto"` (default: when every op of `func` has an XLA kernel,
            else without XLA and a one-time warning; convolutional dynamics
            without a GPU run without XLA, whose CPU convolutions are slow).
            While a gradient tape records, the forward solve keeps the
            state before each attempted step and the gradient replays the
            attempts backward, each half one XLA function (memory bounded
            by `max_num_steps`, not by every step's intermediates), also
            inside a whole-step XLA compile. Per-sample (`batch_axis=0`)
            and `rodas4` solves are not replayed: there `"auto"` leaves the
            loop uncompiled while a tape records (gradients cannot cross
            an XLA boundary through a loop), and `True` is an error.
        name: optional name of the solve, used in error messages.
        batch_axis: `None` (default): one step size for the whole state.
            `0`: axis 0 of every leaf is a batch of independent problems,
            each with its own step size, accept/reject decisions, counters
            and status; `func` is still called on the whole batch (it must
            not mix samples) with `t` of shape `(batch,)`, each sample's
            own time. Then `t` may also be 2-D `(batch, n)`, a grid per
            sample (rows strictly monotonic, all the same direction), and
            `ys[i, b] = y_b(t[b, i])`. The stats `num_steps`,
            `num_rejected` and `status` have shape `(batch,)` (`nfe` counts
            batched calls); a failing sample raises naming its index.
        max_step: upper bound on the step size of adaptive methods.
        step_times: 1-D strictly increasing times (user time) the solver must
            step onto rather than interpolate across (adaptive methods).
        jump_times: 1-D strictly increasing times where `func` is
            discontinuous: the solver steps onto them and evaluates `func`
            again just after each, instead of reusing the end-of-step
            derivative (adaptive methods; one extra evaluation per jump).

    Called eagerly, the solve runs as a `tf.function` compiled once per
    (`func`, options) and reused; it follows `tf.function`'s rule for Python
    state: Python values `func` reads (numbers, numpy arrays, attributes,
    globals) are captured when the first call traces it, while tensors and
    `tf.Variable`s are read on every call. To change a value between calls,
    keep it in a `tf.Variable` (or pass a new function). Define `func` once
    and reuse it: a new function object is traced (and compiled) anew.

    Returns:
        `ys` with y0's structure, each leaf with a leading time axis of
        length `len(t)` (`ys[0]` equals y0 exactly), or `(ys, stats)`.

    Raises:
        ValueError, TypeError: invalid arguments (named in the message).
        tf.errors.InvalidArgumentError: the solve failed (max_num_steps
            exceeded, step size underflow, non-finite state or input, or run-time `t`
            not monotonic); the message names the cause and the time reached.
            Under XLA (`jit_compile=True`) the outputs are NaN instead and
            `stats["status"]` is non-zero.

    Example:

    >>> ys = keras_node.odeint(lambda t, y: -y, tf.constant([1.0]), [0.0, 1.0])
    >>> float(ys[-1, 0])  # exp(-1)
    0.3678...
    """
    options = SolverOptions.of(method=method, rtol=rtol, atol=atol, first_step=first_step,
                            step_size=step_size, max_num_steps=max_num_steps,
                            jit_compile=jit_compile, batch_axis=batch_axis, max_step=max_step,
                            step_times=step_times, jump_times=jump_times)
    check_bool(return_stats, "return_stats")
    ys, stats = solve(func, y0, t, options, name=name)
    return (ys, stats) if return_stats else ys


def solve(func, y0, t, options, name=None, recording=None):
    """`odeint` with validated `SolverOptions`: returns `(ys, stats)`.
    `recording`: whether a gradient tape outside the graph being built will
    differentiate the solve (None: the solver sees for itself)."""
    check_callable(func)
    problem = _inputs.problem(y0, t, options)
    where = where_label("odeint", name)
    jit = resolve_jit(options, func, problem, where)
    if replays_gradient(jit, options, problem, recording):
        ys, stats, t_reached = _backprop.solve(func, problem, options, where, jit)
    else:
        jit = jit_for_backprop(jit, options, where, recording)
        core = functools.partial(integrate_problem, options=options)
        solution, t_reached = _execution.run(func, ("odeint", options.key()), core, problem, jit)
        ys, stats = solution.ys, stats_dict(solution)
    ys = _status.guard(ys, stats["status"], t_reached, where, options.max_num_steps)
    return problem.pack(ys), stats


def replays_gradient(jit, options, problem, recording=None):
    """Whether a solve's gradient is `_backprop`'s replay: when its loop is
    XLA-compiled (as a function of its own, or inline in a larger XLA
    compile) while a tape may differentiate it, and the replay covers the
    solve."""
    if recording is None:
        recording = record.could_possibly_record()
    return ((bool(jit) or _status.in_xla_context()) and recording
            and _backprop.eligible(options, problem))


def jit_for_backprop(jit, options, where, recording=None):
    """XLA for a solve that gradients flow through by TensorFlow's own loop
    gradient (solves `replays_gradient` does not cover).

    A gradient taken outside an XLA-compiled solver loop needs the loop's
    intermediate TensorLists to leave XLA, which TensorFlow does not
    support. So while a gradient tape records, `"auto"` runs such a loop
    without XLA (use `odeint_adjoint`, or compile the whole training step
    with `jit_compile=True`), and `True` is an error.
    """
    if recording is None:
        recording = record.could_possibly_record()
    if not jit or _status.in_xla_context() or not recording:
        return jit
    if options.jit_compile is True:
        raise ValueError(
            f"{where}: jit_compile=True cannot be combined with gradients through the "
            "solver taken outside the compiled function for per-sample (batch_axis=0) or "
            "rodas4 solves. Use odeint_adjoint, compile the "
            "whole training step with jit_compile=True, or pass jit_compile=\"auto\"."
        )
    return False


def integrate_problem(func, problem, options, tau_out=None, record_steps=None):
    """Run the solver loop on `problem`: handles the time direction. Returns
    `(Solution, t_reached)`, `t_reached` in the user's time. `tau_out`
    (increasing solver times) replaces the output times when given;
    `record_steps` is passed to `integrate`."""
    direction, tau, initial_status = direction_and_tau(problem)
    controls = solver_controls(problem, options, direction)
    owner, func = func, _inputs.normalized_func(func, problem.y0, direction)
    tau = tau if tau_out is None else tau_out
    if options.batch_axis == 0 and tau.shape.rank == 1:  # one grid for every sample
        tau = tf.broadcast_to(tau, tf.concat([tf.shape(problem.leaves[0])[:1], tf.shape(tau)], 0))
    controls = controls._replace(variables=recompute.loop_variables(
        owner, func, tau[..., 0], problem.leaves))
    if options.batch_axis == 0:
        solution = integrate_per_sample(func, problem.leaves, tau, controls,
                                        initial_status=initial_status)
    else:
        solution = integrate(func, problem.leaves, tau, controls, initial_status=initial_status,
                             record_steps=record_steps)
    return solution, to_user_time(solution.t_reached, direction)


def solver_controls(problem, options, direction):
    """The `Controls` of `problem`'s forward solve."""
    return Controls(
        tableau=options.tableau, rtol=problem.rtol, atol=problem.atol,
        max_num_steps=options.max_num_steps, first_step=problem.first_step,
        step_size=problem.step_size, max_step=problem.max_step,
        stops=stops.in_solver_time(problem.step_times, problem.jump_times, direction),
        norm_leaves=options.norm_leaves,
    )


def direction_and_tau(problem):
    """`(direction, tau, initial_status)`: the time direction (a Python float
    when known now, else a tensor), the increasing solver times `tau =
    direction * problem.t`, and BAD_TIMES when run-time times are not
    monotonic."""
    t, direction, initial_status = problem.t, problem.direction, None
    if direction is None:
        first_row = t if t.shape.rank == 1 else t[0]
        direction = tf.sign(first_row[1] - first_row[0])
        initial_status = _inputs.runtime_time_check(t * direction)
    tau = t if _inputs.is_plus_one(direction) else t * direction
    return direction, tau, initial_status


def to_user_time(tau, direction):
    """Solver time back to the user's time."""
    return tau if _inputs.is_plus_one(direction) else tau * direction


def resolve_jit(options, func, problem, where):
    """The effective `jit_compile` of a solve (`"auto"` probes `func`)."""
    return _xla.resolve(
        options.jit_compile, _inputs.normalized_func(func, problem.y0, problem.direction or 1.0),
        problem.leaves, problem.solve_dtype, where, owner=func,
        per_sample=options.batch_axis == 0,
    )


def check_callable(func):
    """`func` must be callable as `func(t, y)`."""
    if not callable(func):
        raise TypeError(
            "func must be callable as func(t, y) -> dy/dt. "
            f"Received: func={short_repr(func)} of type {type(func).__name__}"
        )


def where_label(function_name, name):
    """How error messages name a solve: `odeint` or `odeint ('my_layer')`."""
    return function_name if name is None else f"{function_name} ({name})"


def stats_dict(solution):
    """The public stats of a `Solution`: int32 scalars (per sample, shape
    `(batch,)`, for the counters and status of a per-sample solve)."""
    return {
        "nfe": solution.nfe, "num_steps": solution.num_steps,
        "num_rejected": solution.num_rejected, "status": solution.status,
    }
