"""`keras_node.odeint_adjoint`: constant-memory gradients by the adjoint method.

Chen et al. 2018; Kidger, Chen & Lyons 2021 for the seminorm. The parts, one
module each: `forward.py` solves forward and keeps only the anchors (output
times and the checkpoints `checkpoints.py` schedules), `augmented.py` is the
backward dynamics of [z, a, dL/dtheta], `backward.py` solves them interval by
interval. This module is the public function and the `tf.custom_gradient`
that joins them.
"""

import functools
from typing import NamedTuple

import keras
import tensorflow as tf
# Private, because no public API stops every active tape from recording:
# the forward solve must not be recorded (its gradient is the adjoint's), or
# a tape differentiating the enclosing graph would ask the XLA-compiled
# solver loop for its intermediates (tf.custom_gradient does the same for
# eager functions, but not in graphs).
from tensorflow.python.eager import record

from keras_node import _execution
from keras_node import _inputs
from keras_node import _status
from keras_node.adjoint import stats as _stats
from keras_node.adjoint.backward import BackwardPass
from keras_node.adjoint.backward_per_sample import PerSampleBackwardPass
from keras_node.adjoint.forward import forward_pass
from keras_node.adjoint.stats import AdjointStats
from keras_node.odeint import (check_callable, direction_and_tau, resolve_jit,
                               stats_dict, to_user_time, where_label)
from keras_node.options import DEFAULT_CHECKPOINTS, AdjointOptions, SolverOptions, check_bool
from keras_node.solvers import stops
from keras_node.solvers.integrate import Controls

__all__ = ["AdjointStats", "DEFAULT_CHECKPOINTS", "odeint_adjoint"]


class AdjointProblem(NamedTuple):
    """The forward `Problem` and the backward solve's tolerances per leaf."""

    forward: _inputs.Problem
    rtol: tuple
    atol: tuple


@tf.autograph.experimental.do_not_convert
def odeint_adjoint(
    func, y0, t, *, variables=None, method="dopri5", rtol=1e-3, atol=1e-6,
    first_step=None, step_size=None, max_num_steps=10_000, adjoint_method=None,
    adjoint_rtol=None, adjoint_atol=None, adjoint_seminorm=True,
    adjoint_checkpoints=DEFAULT_CHECKPOINTS, return_stats=False, backward_stats=None,
    jit_compile="auto", name=None, batch_axis=None, max_step=None, step_times=None,
    jump_times=None,
):
    """Like `keras_node.odeint`, with gradients from the adjoint method.

    The forward pass stores no intermediate steps; the gradient solves the
    augmented adjoint ODE backward in time, so memory does not grow with the
    number of solver steps. Gradients flow to `y0`, every value of `t` and
    the trainable variables `func` reads.

    Args:
        func, y0, t, method, rtol, atol, first_step, step_size, max_num_steps,
            return_stats: as for `keras_node.odeint` (stats are the forward
            solve's).
        variables: the trainable variables `func` depends on. Default:
            `func.trainable_variables` for a Keras layer or `tf.Module`;
            variables TensorFlow sees `func` read always get gradients too.
        adjoint_method, adjoint_rtol, adjoint_atol: settings of the backward
            solve; default to the forward ones (a fixed-step backward solve
            uses the forward `step_size`).
        adjoint_seminorm: leave the parameter-gradient integral out of the
            backward error norm (Kidger et al. 2021): fewer backward steps
            with no loss of accuracy in the state and adjoint. The backward
            error norm is the RMS over all components of the state and the
            adjoint (plus the parameter integral without the seminorm).
        adjoint_checkpoints: K >= 0. The forward pass also stores the state
            at K uniformly spaced times and the backward pass re-anchors z
            there. K = 0 is the plain backsolve adjoint, which can be wrong by
            orders of magnitude on contractive dynamics over long horizons.
            Memory is K extra states. The backward pass re-anchors at no more
            than one stored checkpoint per 8 forward steps (evenly chosen),
            so short, easy solves do not pay a backward step per checkpoint.
            Default: `DEFAULT_CHECKPOINTS` (16). Fixed-step methods store
            their checkpoints on steps they take anyway (with
            `step_size=None`, one step per interval, there are none).
        backward_stats: an optional `keras_node.AdjointStats` that receives
            the backward solve's counts (nfe, num_steps, num_rejected,
            status) whenever the gradient is computed.
        jit_compile: as for `keras_node.odeint`; applies to the forward
            and the backward solve.
        name: optional name of the solve, used in error messages.
        batch_axis: as for `keras_node.odeint`: with `0` the forward solve
            steps per sample; the backward solve steps jointly (the whole
            batch with one step size, as the augmented state couples the
            samples through the parameter gradient).
        max_step, step_times, jump_times: as for `keras_node.odeint`; an
            adaptive backward solve keeps to them too (except with grids of
            times per sample).

    Eager calls compile the solve once per (`func`, options), with
    `tf.function`'s rule for the Python state `func` reads (see
    `keras_node.odeint`).

    Returns:
        As `keras_node.odeint`: the forward values are `odeint`'s, bit for
        bit, whatever `adjoint_checkpoints`.

    Raises:
        As `keras_node.odeint`; a failing backward solve raises
        `tf.errors.InvalidArgumentError` when the gradient is computed (NaN
        gradients under XLA).

    Example:

    >>> layer = keras.layers.Dense(2)
    >>> y0 = tf.ones((4, 2))
    >>> layer.build(y0.shape)
    >>> with tf.GradientTape() as tape:
    ...     ys = keras_node.odeint_adjoint(lambda t, y: layer(y), y0, [0.0, 1.0],
    ...                                    variables=layer.trainable_variables)
    ...     loss = tf.reduce_sum(ys[-1] ** 2)
    >>> grads = tape.gradient(loss, layer.trainable_variables)
    """
    options = SolverOptions.of(method=method, rtol=rtol, atol=atol, first_step=first_step,
                            step_size=step_size, max_num_steps=max_num_steps,
                            jit_compile=jit_compile, batch_axis=batch_axis, max_step=max_step,
                            step_times=step_times, jump_times=jump_times)
    adjoint_options = AdjointOptions.of(
        adjoint_method=adjoint_method, adjoint_rtol=adjoint_rtol, adjoint_atol=adjoint_atol,
        adjoint_seminorm=adjoint_seminorm, adjoint_checkpoints=adjoint_checkpoints,
    )
    check_bool(return_stats, "return_stats")
    ys, stats = solve_adjoint(func, y0, t, options, adjoint_options, variables=variables,
                              backward_stats=backward_stats, name=name)
    return (ys, stats) if return_stats else ys


def solve_adjoint(func, y0, t, options, adjoint_options, *, variables=None, backward_stats=None,
                  name=None, forward=(None, ())):
    """`odeint_adjoint` with validated options: returns `(ys, stats)`.

    `forward`: `(core, key)` to replace the forward pass (`_forward_core`'s
    contract, called with this call's settings; `odeint_event`'s search),
    `key` telling its compiled versions apart."""
    check_callable(func)
    explicit = _explicit_variables(func, variables)
    _stats.check_stats(backward_stats)
    problem = _inputs.problem(y0, t, options)
    backward_options = adjoint_options.backward(options)
    rtol = _inputs.tolerances(backward_options.rtol, problem.y0, problem.leaves, "adjoint_rtol")
    atol = _inputs.tolerances(backward_options.atol, problem.y0, problem.leaves, "adjoint_atol")
    _inputs.check_both_tolerances(rtol, atol, ("adjoint_rtol", "adjoint_atol"))
    where = where_label("odeint_adjoint", name)
    return _with_adjoint_gradient(func, AdjointProblem(problem, rtol, atol), _Settings(
        options, backward_options, adjoint_options, where, explicit, backward_stats, *forward))


class _Settings(NamedTuple):
    """One call's validated settings (Python values, fixed per compiled function)."""

    options: SolverOptions
    backward_options: SolverOptions
    adjoint_options: AdjointOptions
    where: str
    explicit: list  # variables= (or func.trainable_variables)
    stats: object  # backward_stats
    forward_core: object = None  # a replacement of _forward_core (solve_adjoint's forward=)
    forward_key: tuple = ()

    def key(self, part, variables=()):
        return (f"odeint_adjoint {part}", self.options.key(), self.backward_options.key(),
                self.adjoint_options.key(), self.where, id(self.stats), self.forward_key,
                tuple(id(v) for v in self.explicit + list(variables)))


def _with_adjoint_gradient(func, adjoint_problem, settings):
    """The forward solve under `tf.custom_gradient`, with the adjoint as its
    gradient. Each half runs through `_execution.run` (inline in graphs,
    compiled once per function and options when eager).

    Variables: the forward pass reads `variables=` too (so those get a
    gradient, zeros when func never reads them). In graphs tf.custom_gradient
    sees every variable read. Eagerly the compiled forward reads them out of
    its sight, so they enter as explicit inputs instead: the trainable
    variables the compiled forward captured.
    """
    problem = adjoint_problem.forward
    jit = resolve_jit(settings.options, func, problem, settings.where)
    core = settings.forward_core or _forward_core

    def forward_core(func, problem):
        for variable in settings.explicit:
            tf.convert_to_tensor(variable)  # a read: see above
        return core(func, problem, settings=settings)

    forward_key = settings.key("forward")
    arg_variables = []
    if tf.executing_eagerly():
        arg_variables = _execution.traced_variables(func, forward_key, forward_core, problem, jit)
    n = len(problem.leaves)
    forward_stats = {}

    @tf.custom_gradient
    def solve(*inputs):
        current = problem._replace(y0=tf.nest.pack_sequence_as(problem.y0, list(inputs[:n])),
                                   t=inputs[n])
        with record.stop_recording():
            outputs, saved, stats, t_reached = _execution.run(func, forward_key, forward_core,
                                                              current, jit)
        guarded = _status.guard(outputs + list(saved.states), stats["status"], t_reached,
                                settings.where, settings.options.max_num_steps)
        outputs, saved = guarded[:len(outputs)], saved._replace(states=tuple(guarded[len(outputs):]))
        zero_cotangents = [tf.zeros_like(o) for o in outputs]
        forward_stats.update(stats)

        def grad_fn(*output_grads, variables=None):
            targets = arg_variables + list(variables or [])
            cotangents = [z if g is None else tf.stop_gradient(tf.convert_to_tensor(g))
                          for g, z in zip(output_grads, zero_cotangents)]
            backward_core = functools.partial(_backward_core, settings=settings, variables=targets)
            flat, counts, status, t_failed = _execution.run(
                func, settings.key("backward", targets), backward_core,
                (current, adjoint_problem, saved, cotangents), jit)
            flat = _finish_backward(flat, counts, status, t_failed, settings)
            split = n + 1 + len(arg_variables)
            return flat[:split], flat[split:]

        return outputs, grad_fn

    outputs = solve(*problem.leaves, problem.t, *arg_variables)
    return problem.pack(outputs), dict(forward_stats)


def _forward_core(func, problem, settings):
    """Forward pass (a core of `_execution.run`): the outputs per leaf, the
    anchors (carrying no gradient), the stats and the time reached."""
    outputs, anchors, solution, t_reached = forward_pass(
        func, problem, settings.options, settings.adjoint_options.adjoint_checkpoints)
    # The adjoint's gradient is not itself differentiable (no second order):
    # what the backward pass keeps from this one carries no gradient, so a
    # persistent or nested tape never asks the XLA-compiled solver loops for
    # their intermediates.
    return outputs, tf.nest.map_structure(tf.stop_gradient, anchors), stats_dict(solution), t_reached


def _backward_core(func, inputs, settings, variables):
    """Backward pass (a core of `_execution.run`): flat gradients (y0 leaves,
    t, variables), the counts, the status and the time of a failure."""
    problem, adjoint_problem, anchors, cotangents = inputs
    backward_options = settings.backward_options
    direction, _, _ = direction_and_tau(problem)
    adaptive = backward_options.tableau.adaptive
    controls = Controls(
        tableau=backward_options.tableau, rtol=adjoint_problem.rtol, atol=adjoint_problem.atol,
        max_num_steps=backward_options.max_num_steps, first_step=problem.first_step,
        step_size=problem.step_size, max_step=problem.max_step if adaptive else None,
        # Backward time is -tau: the stops in it (the jumps' left side comes first).
        stops=stops.in_solver_time(problem.step_times, problem.jump_times,
                                   -direction) if adaptive else None,
        norm_leaves=backward_options.norm_leaves,
    )
    # Grids of times per sample give anchors per sample.
    pass_type = PerSampleBackwardPass if anchors.tau.shape.rank == 2 else BackwardPass
    result = pass_type(
        _inputs.normalized_func(func, problem.y0, direction), anchors, cotangents, variables,
        controls, seminorm=settings.adjoint_options.adjoint_seminorm,
        warm_start=settings.adjoint_options.same_as_forward,
    ).run()
    grad_t = to_user_time(result.grad_tau, direction)  # dL/dt = direction * dL/dtau
    flat = result.grads_y0 + [grad_t] + result.grads_variables
    return flat, result.counts, result.status, to_user_time(result.tau_reached, direction)


def _finish_backward(flat, counts, status, t_reached, settings):
    """Record the backward counts, then fail loudly (or NaN) on a bad status."""
    if settings.adjoint_options.nonfinite_gradients == "nan":
        # Let overflow reach the loss-scale optimizer as NaN gradients.
        status = tf.where(tf.equal(status, _status.NON_FINITE), _status.SUCCESS, status)
        flat = [tf.where(tf.equal(status, 0), x, float("nan")) for x in flat]
    flat = _stats.record(settings.stats, list(flat), counts, status)
    return _status.guard(flat, status, t_reached, settings.where + " backward pass",
                         settings.options.max_num_steps)


def _explicit_variables(func, variables):
    """Validate `variables=` (or find `func.trainable_variables`)."""
    if variables is None:
        variables = list(getattr(func, "trainable_variables", []) or [])
    variables = list(variables) if isinstance(variables, (list, tuple)) else [variables]
    for v in variables:
        if not isinstance(v, (tf.Variable, keras.Variable)):
            raise TypeError(
                "variables must be a list of tf.Variable (or Keras variables). "
                f"Received: an element of type {type(v).__name__}"
            )
    return variables
