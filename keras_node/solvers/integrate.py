"""The solver driver: one `tf.while_loop` over attempted steps.

`integrate` works on the normalised problem the public functions hand it:
a tuple of state leaves, strictly increasing output times of the state's
dtype, tolerances per leaf. Everything here is TensorFlow control flow over a
documented loop state, so it runs eagerly (inside a `tf.function`), in graphs
and under XLA; the loop is bounded by `max_num_steps` (XLA needs the bound to
differentiate through it) and outputs go into pre-sized TensorArrays.
"""

from typing import NamedTuple, Tuple

import tensorflow as tf

from keras_node import _nest
from keras_node import _status
from keras_node.solvers import interpolation
from keras_node.solvers import step_control
from keras_node.solvers.rk_step import rk_step


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


def _static_or_dynamic_length(t_out):
    static = t_out.shape[0]
    return static if static is not None else tf.shape(t_out)[0]


def _write_due_outputs(ys, out_index, t_out, num_out, t1, value_at, allowed=True, max_writes=None):
    """Write every output whose time is <= t1 (if `allowed`), from `value_at(time)`.

    A while loop rather than a `tf.cond`: XLA cannot differentiate a cond
    nested in the solver loop (its gradient needs `FakeParam`), while a loop
    that runs zero times costs nothing and differentiates fine.
    """
    last = num_out - 1

    def due(j, _):
        return allowed & (j < num_out) & (tf.gather(t_out, tf.minimum(j, last)) <= t1)

    def write(j, arrays):
        values = value_at(tf.gather(t_out, j))
        return j + 1, tuple(ta.write(j, v) for ta, v in zip(arrays, values))

    return tf.while_loop(
        due, write, (out_index, ys),
        maximum_iterations=max_writes or (num_out if isinstance(num_out, int) else None),
    )


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
    state = _LoopState(
        t=t0, y=y0, f=f0, dt=dt0, error_ratio=tf.zeros([], dtype),
        out_index=tf.constant(1, tf.int32), ys=arrays, nfe=nfe,
        num_steps=tf.constant(0, tf.int32), num_rejected=tf.constant(0, tf.int32),
        status=status,
    )
    def keep_going(s):
        return (s.out_index < num_out) & tf.equal(s.status, _status.SUCCESS)

    def body(s):
        if tableau.adaptive:
            return _adaptive_step(s, func, t_out, num_out, tableau, rtol, atol, norm_leaves,
                                  clip_to_end, shrink_after_accept)
        return _fixed_step(s, func, t_out, num_out, tableau, step_size)

    final = tf.while_loop(keep_going, body, (state,), maximum_iterations=max_num_steps)[0]
    unfinished = (final.out_index < num_out) & tf.equal(final.status, _status.SUCCESS)
    status = tf.where(unfinished, _status.MAX_STEPS, final.status)
    return Solution(
        ys=tuple(ta.stack() for ta in final.ys),
        t_reached=final.t, last_dt=final.dt, nfe=final.nfe,
        num_steps=final.num_steps, num_rejected=final.num_rejected, status=status,
    )


def _adaptive_step(s, func, t_out, num_out, tableau, rtol, atol, norm_leaves, clip_to_end,
                   shrink_after_accept):
    """Attempt one step of size s.dt; accept or reject it; write outputs."""
    dt = s.dt
    if clip_to_end:
        remaining = tf.gather(t_out, num_out - 1) - s.t
        clipped = remaining < dt
        dt = tf.where(clipped, remaining, dt)
    y1, f1, y_error, k = rk_step(func, s.t, s.y, s.f, dt, tableau)
    ratio = step_control.error_ratio(y_error, s.y, y1, rtol, atol, norm_leaves)
    accept = ratio <= 1.0  # False for NaN: a non-finite step is a rejected step
    t1 = s.t + dt
    if clip_to_end and num_out == 2:
        # The only output after the start is the end, which the clipped step
        # lands on: it is y1, and no dense-output polynomial is needed.
        def value_at(_):
            return y1
    else:
        coefficients = interpolation.fit(s.y, y1, s.f, f1, dt, k, tableau.c_mid)

        def value_at(t):
            # divide_no_nan: a zero-length step (an output time repeated, as
            # merged checkpoints can produce) evaluates at its start.
            return interpolation.evaluate(coefficients, tf.math.divide_no_nan(t - s.t, dt))
    out_index, ys = _write_due_outputs(s.ys, s.out_index, t_out, num_out, t1, value_at,
                                       allowed=accept)
    t_new = tf.where(accept, t1, s.t)
    y_new = _nest.where(accept, y1, s.y)
    f_new = _nest.where(accept, f1, s.f)
    dt_new = step_control.next_step_size(dt, ratio, accept, tableau.order, shrink_after_accept)
    if clip_to_end:
        # A step shortened to land on the end says little about the step the
        # dynamics allow: keep the longer proposal for whoever continues.
        dt_new = tf.where(clipped & accept, tf.maximum(dt_new, s.dt), dt_new)

    status = s.status
    if not tableau.fsal:
        # f1 is not part of the error estimate here, so check it directly.
        status = tf.where(accept & ~_nest.all_finite(f1), _status.NON_FINITE, status)
    underflow = (t_new + dt_new <= t_new) & (out_index < num_out)
    cause = tf.where(tf.math.is_finite(ratio), _status.STEP_UNDERFLOW, _status.NON_FINITE)
    status = tf.where(underflow & tf.equal(status, 0), cause, status)
    accepted = tf.cast(accept, tf.int32)
    return (
        _LoopState(
            t=t_new, y=y_new, f=f_new, dt=dt_new, error_ratio=ratio, out_index=out_index,
            ys=ys, nfe=s.nfe + tableau.new_evaluations_per_step,
            num_steps=s.num_steps + accepted, num_rejected=s.num_rejected + 1 - accepted,
            status=status,
        ),
    )


def _fixed_step(s, func, t_out, num_out, tableau, step_size):
    """One step of a fixed-step method, shortened to land on the next output."""
    target = tf.gather(t_out, s.out_index)
    remaining = target - s.t
    if step_size is None:
        lands = tf.constant(True)
        dt = remaining
    else:
        # Land when within a few ulps of a full step, so that rounding in the
        # accumulated time never leaves a sliver of a step before an output.
        eps = 1e-12 if remaining.dtype == tf.float64 else 1e-5
        lands = remaining <= s.dt * (1.0 + eps)
        dt = tf.where(lands, remaining, s.dt)
    y1, f1, _, _ = rk_step(func, s.t, s.y, s.f, dt, tableau)
    t1 = tf.where(lands, target, s.t + dt)
    out_index, ys = _write_due_outputs(s.ys, s.out_index, t_out, num_out, t1,
                                       lambda _: y1, allowed=lands, max_writes=1)
    finite = _nest.all_finite(y1 + f1)
    return (
        _LoopState(
            t=t1, y=y1, f=f1, dt=s.dt, error_ratio=s.error_ratio, out_index=out_index, ys=ys,
            nfe=s.nfe + tableau.new_evaluations_per_step, num_steps=s.num_steps + 1,
            num_rejected=s.num_rejected,
            status=tf.where(finite, s.status, _status.NON_FINITE),
        ),
    )
