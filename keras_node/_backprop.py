"""`odeint`'s gradient with both halves under XLA: the forward solve keeps
the loop state before each attempt, the backward pass replays the attempts
in reverse (`solvers/replay.py`).

Why: a gradient taken outside an XLA-compiled solve cannot reach into its
loop (TensorFlow would need the loop's intermediate TensorLists to leave
XLA), so without this `jit_compile="auto"` ran the loop uncompiled while a
tape records (the bench MLP's forward + backprop: 35 ms, 25 ms replayed;
benchmarks/RESULTS.md §15). The custom gradient makes both halves forward
computations, each one XLA function (inline when the caller is already
being compiled).
"""

import functools

import tensorflow as tf
# Private, as in adjoint/__init__.py: the forward solve must not be
# recorded (its gradient is the replay).
from tensorflow.python.eager import record

from keras_node import _execution
from keras_node import _inputs
from keras_node.solvers import replay
from keras_node.solvers.integrate import loop_parts, solution_of
from keras_node.solvers.rosenbrock_tableau import RosenbrockTableau


def eligible(options, problem):
    """Whether the replay covers this solve: one step size for the whole
    state (`batch_axis=None`), an explicit Runge-Kutta method, and a number
    of output times known when tracing (XLA differentiates the loop that
    writes them only with a static bound)."""
    return (options.batch_axis is None and not isinstance(options.tableau, RosenbrockTableau)
            and problem.t.shape.rank == 1 and problem.t.shape[0] is not None)


def solve(func, problem, options, where, jit):
    """`(Solution fields as odeint.solve uses them)`: `(ys per leaf, stats,
    t_reached)` of `problem`, differentiable by replay."""
    key = ("odeint replay", options.key())
    forward_core = functools.partial(_forward_core, options=options)
    arg_variables = []
    if tf.executing_eagerly():
        # Eagerly, the compiled forward reads the variables out of the tape's
        # sight: they enter as explicit inputs (as in odeint_adjoint).
        arg_variables = _execution.traced_variables(func, key, forward_core, problem, jit)
    n = len(problem.leaves)
    found = {}

    @tf.custom_gradient
    def solved(*inputs):
        current = problem._replace(y0=tf.nest.pack_sequence_as(problem.y0, list(inputs[:n])),
                                   t=inputs[n])
        with record.stop_recording():
            ys, residuals, stats, t_reached = _execution.run(func, key, forward_core, current, jit)
        found.update(stats=stats, t_reached=t_reached)

        def grad_fn(*ys_grads, variables=None):
            targets = arg_variables + list(variables or [])
            cotangents = [tf.zeros_like(y) if g is None else tf.stop_gradient(tf.convert_to_tensor(g))
                          for g, y in zip(ys_grads, ys)]
            backward_core = functools.partial(_backward_core, options=options, variables=targets)
            flat = _execution.run(func, key + ("backward", tuple(id(v) for v in targets)),
                                  backward_core, (current, residuals, cotangents), jit)
            split = n + 1 + len(arg_variables)
            return flat[:split], flat[split:]

        return list(ys), grad_fn

    ys = solved(*problem.leaves, problem.t, *arg_variables)
    return ys, found["stats"], found["t_reached"]


def _parts(func, problem, options):
    """`(LoopParts, tau, direction)` of `problem` (one attempt per
    iteration, output buffers as tensors: what `replay` needs)."""
    # (odeint imports this module: its helpers are imported when called)
    from keras_node.odeint import direction_and_tau, solver_controls

    direction, tau, initial_status = direction_and_tau(problem)
    controls = solver_controls(problem, options, direction)
    func = _inputs.normalized_func(func, problem.y0, direction)
    parts = loop_parts(func, tau, controls, initial_status=initial_status, carried_outputs=True,
                       inner_loop=False)
    return parts, tau, direction


def _forward_core(func, problem, options):
    """The forward solve (a core of `_execution.run`): outputs per leaf, the
    residuals (no gradient), the stats and the time reached."""
    from keras_node.odeint import stats_dict, to_user_time

    parts, _, direction = _parts(func, problem, options)
    final, residuals = replay.forward(parts, problem.leaves, options.max_num_steps)
    solution = solution_of(final, parts.num_out)
    return (list(solution.ys), tf.nest.map_structure(tf.stop_gradient, residuals),
            stats_dict(solution), to_user_time(solution.t_reached, direction))


def _backward_core(func, inputs, options, variables):
    """The gradient (a core of `_execution.run`): flat gradients of y0's
    leaves, `t` and `variables`."""
    from keras_node.odeint import to_user_time

    problem, residuals, cotangents = inputs
    parts, tau, direction = _parts(func, problem, options)
    grads_y0, grads = replay.backward(parts, problem.leaves, residuals, cotangents,
                                      [tau] + list(variables), options.max_num_steps)
    return list(grads_y0) + [to_user_time(grads[0], direction)] + list(grads[1:])

