"""The solver driver: a `tf.while_loop` over attempted steps.

`integrate` works on the normalised problem the public functions hand it:
a tuple of state leaves, strictly increasing output times of the state's
dtype, tolerances per leaf. Everything here is TensorFlow control flow over a
documented loop state, so it runs eagerly (inside a `tf.function`), in graphs
and under XLA; the loop is bounded by `max_num_steps` (XLA needs the bound to
differentiate through it) and outputs go into pre-sized buffers
(`loop_bodies.output_buffers`).
The loop bodies live in `loop_bodies.py`. Adaptive solves of small states
attempt their steps in an inner loop and write outputs in the outer one
(`loop_bodies.attempts_in_inner_loop` says why); both layouts take the same
steps and write the same values.
"""

from typing import NamedTuple, Optional, Tuple

import tensorflow as tf

from keras_node import _status
from keras_node.solvers import interpolation
from keras_node.solvers import loop_bodies
from keras_node.solvers import recompute
from keras_node.solvers import step_control
from keras_node.solvers import stops


class Controls(NamedTuple):
    """How one `integrate` call steps.

    tableau: a `ButcherTableau`.
    rtol, atol: per-leaf tolerance tensors broadcastable to each leaf.
    max_num_steps: Python int, bound on attempted steps.
    first_step: optional positive scalar; adaptive methods only.
    step_size: optional positive scalar; fixed-step methods only. `None`
        takes one step per interval of `t_out`.
    norm_leaves: indices of the leaves in the error norm (default: all; the
        norm is the RMS over all their components).
    clip_to_end: adaptive methods only: shorten the step that would pass
        `t_out[-1]` so that it lands there. The public solvers never do
        (output times are reached by dense output, API.md); the adjoint's
        backward intervals do, because their end state must be exact and
        nothing past it is ever needed.
    shrink_after_accept: step-size rule after an accepted step (see
        `step_control.next_step_size`).
    max_step, stops: adaptive methods only: the step constraints of
        `stops.py` (`max_step`, and the step and jump times).
    variables: the Keras variables `func` reads, set (by
        `odeint.integrate_problem`) only when XLA may differentiate the loop
        and they are all `func` reads: the loop (here or in
        `per_sample.py`) then runs its later attempts in chunks whose
        gradient is recomputed (`recompute.py`).
    """

    tableau: object
    rtol: tuple
    atol: tuple
    max_num_steps: int
    first_step: Optional[tf.Tensor] = None
    step_size: Optional[tf.Tensor] = None
    norm_leaves: Optional[tuple] = None
    clip_to_end: bool = False
    shrink_after_accept: bool = False
    max_step: Optional[tf.Tensor] = None
    stops: Optional[object] = None  # a `stops.Stops`, solver time
    variables: Optional[tuple] = None


class Solution(NamedTuple):
    """What `integrate` returns.

    ys: tuple of stacked leaves, each `[len(t_out), *leaf_shape]`.
    t_reached: time of the last accepted step (the end of the solve).
    last_dt: the step size the controller would try next (lets a caller
        continue with a warm start).
    nfe, num_steps, num_rejected, status: int32 scalars.
    recorded_t, recorded_y: with `record_steps`, the times (NaN where
        nothing was recorded) and states (stacked leaves, K each); else None
        and ().
    """

    ys: Tuple[tf.Tensor, ...]
    t_reached: tf.Tensor
    last_dt: tf.Tensor
    nfe: tf.Tensor
    num_steps: tf.Tensor
    num_rejected: tf.Tensor
    status: tf.Tensor
    recorded_t: Optional[tf.Tensor] = None
    recorded_y: tuple = ()


class _LoopState(NamedTuple):
    t: tf.Tensor  # end of the last accepted step
    y: tuple  # state at t
    f: tuple  # func(t, y): the next step's first stage
    dt: tf.Tensor  # next step size to attempt (> 0)
    error_ratio: tf.Tensor  # of the last attempted step, for diagnosis
    out_index: tf.Tensor  # next output time to write
    ys: tuple  # one output buffer per leaf (loop_bodies.output_buffers)
    nfe: tf.Tensor
    num_steps: tf.Tensor
    num_rejected: tf.Tensor
    status: tf.Tensor
    # The inner-loop layout with dense output: (start, dt, polynomial) of the
    # last accepted step, the polynomial's coefficients per leaf (else ()).
    last_step: tuple = ()
    # Fixed-step methods with `record_steps`: (index of the next record,
    # recorded times, recorded states per leaf), K each (else ()).
    records: tuple = ()
    # With step or jump times: the index of the next one (else ()).
    stop_index: tuple = ()


def _static_or_dynamic_length(t_out):
    static = t_out.shape[0]
    return static if static is not None else tf.shape(t_out)[0]


@tf.autograph.experimental.do_not_convert
def integrate(func, y0, t_out, controls, *, f0=None, initial_status=None, record_steps=None):
    """Solve `dy/dt = func(t, y)` from `t_out[0]`, writing `y` at each `t_out`.

    Args:
        func: `func(t, y) -> dy/dt` on tuples of leaves of one float dtype.
        y0: tuple of leaves at `t_out[0]`.
        t_out: 1-D, strictly increasing, same dtype as the leaves (the
            public functions negate decreasing times before calling this).
        controls: a `Controls`.
        f0: optional `func(t_out[0], y0)`, when the caller already has it
            (then `nfe` does not count it).
        initial_status: optional int32 scalar; a non-zero value skips the
            solve (e.g. times found non-monotonic at run time).
        record_steps: fixed-step methods only: optional sorted 1-D int32
            step counts of static length K, padded with `int32.max`; the
            state after the first step at or past each count that does not
            land on an output time is recorded (the adjoint's checkpoints,
            on steps the method takes anyway).

    Returns:
        A `Solution`.
    """
    y0 = tuple(y0)
    parts = loop_parts(func, t_out, controls, f0=f0, initial_status=initial_status,
                       record_steps=record_steps, carried_outputs=controls.variables is not None,
                       inner_loop=None)
    final = recompute.solver_loop(parts.keep_going, parts.body, parts.initial(y0),
                                  controls.max_num_steps, controls.variables)
    return solution_of(final, parts.num_out)


class LoopParts(NamedTuple):
    """The pieces of one solver loop (`loop_parts`): `initial(y0)` builds the
    loop state before the first step, and `tf.while_loop(keep_going, body,
    (initial(y0),), maximum_iterations=max_num_steps)` is the solve."""

    initial: object
    keep_going: object
    body: object
    num_out: object


def loop_parts(func, t_out, controls, *, f0=None, initial_status=None, record_steps=None,
               carried_outputs=False, inner_loop=None):
    """The `LoopParts` of `integrate`'s loop (arguments as there;
    `carried_outputs` as for `loop_bodies.output_buffers`). `inner_loop`:
    None lets `loop_bodies.attempts_in_inner_loop` choose the layout, False
    attempts one step per iteration (what `replay.py` needs)."""
    tableau = controls.tableau
    if controls.norm_leaves is None:
        controls = controls._replace(norm_leaves=tuple(range(len(controls.rtol))))
    num_out = _static_or_dynamic_length(t_out)
    dense = _needs_dense_output(controls, num_out)

    def initial(y0):
        y0 = tuple(y0)
        state = _initial_state(func, y0, t_out, num_out, controls, f0, initial_status,
                               record_steps, carried_outputs=carried_outputs)
        if dense and use_inner_loop(y0):
            state = state._replace(last_step=(state.t, tf.zeros_like(state.t),
                                              interpolation.constant(y0, tableau.c_mid is not None)))
        return state

    layout = []  # decided once, by the first state seen

    def use_inner_loop(y0):
        if not layout:
            layout.append(inner_loop is not False and tableau.adaptive
                          and loop_bodies.attempts_in_inner_loop(y0))
        return layout[0]

    def keep_going(s):
        return ((s.out_index < num_out) & tf.equal(s.status, _status.SUCCESS)
                & (s.num_steps + s.num_rejected < controls.max_num_steps))

    def body(s):
        if not tableau.adaptive:
            return (loop_bodies.fixed_step(s, func, t_out, num_out, tableau, controls.step_size,
                                           record_steps),)
        t_end = tf.gather(t_out, num_out - 1)

        def attempt(s):
            return loop_bodies.attempt_step(s, func, t_end, controls, dense)

        if use_inner_loop(s.y):
            return loop_bodies.steps_then_outputs(attempt, keep_going, t_out, num_out)(s)
        return loop_bodies.step_and_outputs(attempt, t_out, num_out)(s)

    return LoopParts(initial, keep_going, body, num_out)


def solution_of(final, num_out):
    """The `Solution` of the loop's final state."""
    unfinished = (final.out_index < num_out) & tf.equal(final.status, _status.SUCCESS)
    recorded_t, recorded_y = None, ()
    if final.records:
        recorded_t, recorded_y = final.records[1], final.records[2:]
    return Solution(
        ys=loop_bodies.stacked_outputs(final.ys), t_reached=final.t, last_dt=final.dt,
        nfe=final.nfe, num_steps=final.num_steps, num_rejected=final.num_rejected,
        status=tf.where(unfinished, _status.MAX_STEPS, final.status),
        recorded_t=recorded_t, recorded_y=recorded_y,
    )


def _needs_dense_output(controls, num_out):
    # With clip_to_end and one output after the start, that output is the
    # state the clipped last step lands on: no dense-output polynomial.
    return controls.tableau.adaptive and not (controls.clip_to_end and num_out == 2)


def _initial_state(func, y0, t_out, num_out, controls, f0, initial_status, record_steps,
                   carried_outputs):
    """The loop state before the first step: f0, status, first step size,
    output buffers (with y0 written; tensors if `carried_outputs`), record
    buffers."""
    tableau, dtype = controls.tableau, y0[0].dtype
    t0 = tf.gather(t_out, 0)
    nfe = tf.constant(0 if f0 is not None else 1, tf.int32)
    f0 = tuple(func(t0, y0)) if f0 is None else tuple(f0)
    status = _status.initial(y0, f0)
    if initial_status is not None:
        status = tf.where(tf.equal(initial_status, 0), status, initial_status)
    if tableau.adaptive and controls.first_step is None:
        span = tf.gather(t_out, num_out - 1) - t0
        dt0 = step_control.initial_step(func, t0, y0, f0, tableau.order, controls.rtol,
                                        controls.atol, controls.norm_leaves, span=span)
        nfe += 1
    elif tableau.adaptive or controls.step_size is not None:
        dt0 = tf.cast(controls.first_step if tableau.adaptive else controls.step_size, dtype)
    else:
        dt0 = tf.zeros([], dtype)
    records = ()
    if record_steps is not None and not tableau.adaptive:
        size = record_steps.shape[0]
        records = (tf.constant(0, tf.int32), tf.fill([size], tf.constant(float("nan"), dtype))) + tuple(
            tf.zeros(tf.concat([[size], tf.shape(y)], 0), dtype) for y in y0)
    state = _LoopState(
        t=t0, y=y0, f=f0, dt=dt0, error_ratio=tf.zeros([], dtype),
        out_index=tf.constant(1, tf.int32),
        ys=loop_bodies.output_buffers(y0, num_out, carried=carried_outputs),
        nfe=nfe, num_steps=tf.constant(0, tf.int32), num_rejected=tf.constant(0, tf.int32),
        status=status, records=records,
    )
    return state._replace(stop_index=stops.first_index(controls.stops, t0))
