"""The solver driver: a `tf.while_loop` over attempted steps.

`integrate` works on the normalised problem the public functions hand it:
a tuple of state leaves, strictly increasing output times of the state's
dtype, tolerances per leaf. Everything here is TensorFlow control flow over a
documented loop state, so it runs eagerly (inside a `tf.function`), in graphs
and under XLA; the loop is bounded by `max_num_steps` (XLA needs the bound to
differentiate through it) and outputs go into pre-sized TensorArrays.
The loop bodies live in `loop_bodies.py`. Adaptive solves of small states
attempt their steps in an inner loop and write outputs in the outer one
(`loop_bodies.attempts_in_inner_loop` says why); both layouts take the same
steps and write the same values.
"""

from typing import NamedTuple, Tuple

import tensorflow as tf

from keras_node import _nest
from keras_node import _status
from keras_node.solvers import interpolation
from keras_node.solvers import loop_bodies
from keras_node.solvers import step_control


class Solution(NamedTuple):
    """What `integrate` returns.

    ys: tuple of stacked leaves, each `[len(t_out), *leaf_shape]`.
    t_reached: time of the last accepted step (the end of the solve).
    last_dt: the step size the controller would try next (lets a caller
        continue with a warm start).
    nfe, num_steps, num_rejected, status: int32 scalars.
    """

    ys: Tuple[tf.Tensor, ...]
    t_reached: tf.Tensor
    last_dt: tf.Tensor
    nfe: tf.Tensor
    num_steps: tf.Tensor
    num_rejected: tf.Tensor
    status: tf.Tensor


class _LoopState(NamedTuple):
    t: tf.Tensor  # end of the last accepted step
    y: tuple  # state at t
    f: tuple  # func(t, y): the next step's first stage
    dt: tf.Tensor  # next step size to attempt (> 0)
    error_ratio: tf.Tensor  # of the last attempted step, for diagnosis
    out_index: tf.Tensor  # next output time to write
    ys: tuple  # one TensorArray per leaf
    nfe: tf.Tensor
    num_steps: tf.Tensor
    num_rejected: tf.Tensor
    status: tf.Tensor
    # The last accepted step and its dense-output coefficients per leaf, for
    # the inner-loop layout (polynomial is empty otherwise, or when unused).
    step_start: tf.Tensor
    step_dt: tf.Tensor
    polynomial: tuple


def _static_or_dynamic_length(t_out):
    static = t_out.shape[0]
    return static if static is not None else tf.shape(t_out)[0]


@tf.autograph.experimental.do_not_convert
def integrate(
    func, y0, t_out, *, tableau, rtol, atol, max_num_steps,
    first_step=None, step_size=None, norm_leaves=None, initial_status=None,
    clip_to_end=False, f0=None, shrink_after_accept=False,
):
    """Solve `dy/dt = func(t, y)` from `t_out[0]`, writing `y` at each `t_out`.

    Args:
        func: `func(t, y) -> dy/dt` on tuples of leaves of one float dtype.
        y0: tuple of leaves at `t_out[0]`.
        t_out: 1-D, strictly increasing, same dtype as the leaves (the
            public functions negate decreasing times before calling this).
        tableau: a `ButcherTableau`.
        rtol, atol: per-leaf tolerance tensors broadcastable to each leaf.
        max_num_steps: Python int, bound on attempted steps.
        first_step: optional positive scalar; adaptive methods only.
        step_size: optional positive scalar; fixed-step methods only. `None`
            takes one step per interval of `t_out`.
        norm_leaves: indices of the leaves in the error norm (default: all;
            the norm is the RMS over all their components).
        initial_status: optional int32 scalar; a non-zero value skips the
            solve (e.g. times found non-monotonic at run time).
        clip_to_end: adaptive methods only: shorten the step that would pass
            `t_out[-1]` so that it lands there. The public solvers never do
            (output times are reached by dense output, API.md); the adjoint's
            backward intervals do, because their end state must be exact and
            nothing past it is ever needed.
        f0: optional `func(t_out[0], y0)`, when the caller already has it
            (then `nfe` does not count it).
        shrink_after_accept: step-size rule after an accepted step (see
            `step_control.next_step_size`).

    Returns:
        A `Solution`.
    """
    y0 = tuple(y0)
    dtype = y0[0].dtype
    if norm_leaves is None:
        norm_leaves = list(range(len(y0)))
    num_out = _static_or_dynamic_length(t_out)
    t0 = tf.gather(t_out, 0)

    nfe = tf.constant(0 if f0 is not None else 1, tf.int32)
    f0 = tuple(func(t0, y0)) if f0 is None else tuple(f0)
    status = tf.where(_nest.all_finite(y0 + f0), _status.SUCCESS, _status.NON_FINITE)
    if initial_status is not None:
        status = tf.where(tf.equal(initial_status, 0), status, initial_status)

    if tableau.adaptive:
        if first_step is None:
            span = tf.gather(t_out, num_out - 1) - t0
            dt0 = step_control.initial_step(func, t0, y0, f0, tableau.order, rtol, atol,
                                            norm_leaves, span=span)
            nfe += 1
        else:
            dt0 = tf.cast(first_step, dtype)
    else:
        dt0 = tf.zeros([], dtype) if step_size is None else tf.cast(step_size, dtype)

    arrays = tuple(
        tf.TensorArray(dtype, size=num_out, element_shape=y.shape).write(0, y) for y in y0
    )
    # With clip_to_end and one output after the start, that output is the
    # state the clipped last step lands on: no dense-output polynomial.
    dense = tableau.adaptive and not (clip_to_end and num_out == 2)
    inner_loop = tableau.adaptive and loop_bodies.attempts_in_inner_loop(y0)
    state = _LoopState(
        t=t0, y=y0, f=f0, dt=dt0, error_ratio=tf.zeros([], dtype),
        out_index=tf.constant(1, tf.int32), ys=arrays, nfe=nfe,
        num_steps=tf.constant(0, tf.int32), num_rejected=tf.constant(0, tf.int32),
        status=status, step_start=t0, step_dt=tf.zeros([], dtype),
        polynomial=(interpolation.constant(y0, tableau.c_mid is not None)
                    if dense and inner_loop else ()),
    )

    def keep_going(s):
        return ((s.out_index < num_out) & tf.equal(s.status, _status.SUCCESS)
                & (s.num_steps + s.num_rejected < max_num_steps))

    if tableau.adaptive:
        t_end = tf.gather(t_out, num_out - 1)

        def attempt(s):
            return loop_bodies.attempt_step(s, func, t_end, tableau, rtol, atol, norm_leaves,
                                            clip_to_end, shrink_after_accept, dense)

        if inner_loop:
            body = loop_bodies.steps_then_outputs(attempt, keep_going, t_out, num_out)
        else:
            body = loop_bodies.step_and_outputs(attempt, t_out, num_out)
    else:
        def body(s):
            return (loop_bodies.fixed_step(s, func, t_out, num_out, tableau, step_size),)

    final = tf.while_loop(keep_going, body, (state,), maximum_iterations=max_num_steps)[0]
    unfinished = (final.out_index < num_out) & tf.equal(final.status, _status.SUCCESS)
    status = tf.where(unfinished, _status.MAX_STEPS, final.status)
    return Solution(
        ys=tuple(ta.stack() for ta in final.ys),
        t_reached=final.t, last_dt=final.dt, nfe=final.nfe,
        num_steps=final.num_steps, num_rejected=final.num_rejected, status=status,
    )
