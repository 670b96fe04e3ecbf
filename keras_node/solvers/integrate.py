"""The solver driver: a `tf.while_loop` over attempted steps.

`integrate` works on the normalised problem the public functions hand it:
a tuple of state leaves, strictly increasing output times of the state's
dtype, tolerances per leaf. Everything here is TensorFlow control flow over a
documented loop state, so it runs eagerly (inside a `tf.function`), in graphs
and under XLA; the loop is bounded by `max_num_steps` (XLA needs the bound to
differentiate through it) and outputs go into pre-sized TensorArrays.
Adaptive solves of small states attempt their steps in an inner loop and
write outputs in the outer one (`attempts_in_inner_loop` says why); both
layouts take the same steps and write the same values.
"""

from typing import NamedTuple, Tuple

import tensorflow as tf
from tensorflow.python.eager import record

from keras_node import _nest
from keras_node import _status
from keras_node.solvers import interpolation
from keras_node.solvers import step_control
from keras_node.solvers.rk_step import rk_step


# XLA's CPU runtime runs a loop body sequentially when every buffer it
# touches is at most this big (see `attempts_in_inner_loop`).
_SMALL_BUFFER_BYTES = 512


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
    # With clip_to_end and one output after the start, that output is the
    # state the clipped last step lands on: no dense-output polynomial.
    dense = tableau.adaptive and not (clip_to_end and num_out == 2)
    inner_loop = tableau.adaptive and attempts_in_inner_loop(y0)
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
            return _attempt_step(s, func, t_end, tableau, rtol, atol, norm_leaves,
                                 clip_to_end, shrink_after_accept, dense)

        if inner_loop:
            body = _steps_then_outputs(attempt, keep_going, t_out, num_out)
        else:
            body = _step_and_outputs(attempt, t_out, num_out)
    else:
        def body(s):
            return (_fixed_step(s, func, t_out, num_out, tableau, step_size),)

    final = tf.while_loop(keep_going, body, (state,), maximum_iterations=max_num_steps)[0]
    unfinished = (final.out_index < num_out) & tf.equal(final.status, _status.SUCCESS)
    status = tf.where(unfinished, _status.MAX_STEPS, final.status)
    return Solution(
        ys=tuple(ta.stack() for ta in final.ys),
        t_reached=final.t, last_dt=final.dt, nfe=final.nfe,
        num_steps=final.num_steps, num_rejected=final.num_rejected, status=status,
    )


def attempts_in_inner_loop(y0):
    """Whether a solve of the state `y0` (a tuple of leaves) attempts its
    steps in an inner loop between output times (`_steps_then_outputs`)
    rather than one per iteration (`_step_and_outputs`).

    Why two layouts: XLA's CPU runtime runs a loop body's operations one
    after the other only when every buffer the body touches is at most 512
    bytes (or the body is at most 8 operations); otherwise it schedules them
    concurrently on TensorFlow's thread pool, whose hand-offs cost a
    2-component solve with 1000 outputs a third of its time
    (benchmarks/RESULTS.md, 2b and 2c). With the outputs written outside the loop
    that attempts steps, that loop touches only state-sized buffers, which
    for a small state stay under the limit. For large states the body runs
    concurrently either way, and the single loop measured faster (the inner
    loop must carry the last step's polynomial). And under XLA while a tape
    records, XLA may differentiate the loop, and its gradient of a loop
    nested in a loop keeps every intermediate for outer x inner maximum
    iterations: one attempt per iteration there.
    """
    small = all(
        y.shape.is_fully_defined() and y.shape.num_elements() * y.dtype.size <= _SMALL_BUFFER_BYTES
        for y in y0
    )
    return small and not (_status.in_xla_context() and record.could_possibly_record())


def _step_and_outputs(attempt, t_out, num_out):
    """Loop body: attempt one step, then write the outputs it covers (if
    accepted) from its dense-output polynomial."""

    def body(s):
        new, accept, (start, dt, polynomial) = attempt(s)
        out_index, ys = _write_due_outputs(s.ys, s.out_index, t_out, num_out, start + dt,
                                           _dense_output(start, dt, polynomial, new.y),
                                           allowed=accept)
        return (new._replace(out_index=out_index, ys=ys),)

    return body


def _steps_then_outputs(attempt, keep_going, t_out, num_out):
    """Loop body: attempt steps until one ends at or past the next output
    time, then write the outputs the last accepted step covers."""
    last = num_out - 1

    def body(s):
        target = tf.gather(t_out, tf.minimum(s.out_index, last))

        def before_target(s):
            return (s.t < target) & keep_going(s)

        def step(s):
            new, accept, (start, dt, polynomial) = attempt(s)
            return (new._replace(
                step_start=tf.where(accept, start, s.step_start),
                step_dt=tf.where(accept, dt, s.step_dt),
                polynomial=tuple(_nest.where(accept, p_new, p_old)
                                 for p_new, p_old in zip(polynomial, s.polynomial)),
            ),)

        # The output buffers stay out of the inner loop (attempts_in_inner_loop).
        stepped = tf.while_loop(before_target, step, (s._replace(ys=()),))[0]
        value_at = _dense_output(stepped.step_start, stepped.step_dt, stepped.polynomial,
                                 stepped.y)
        out_index, ys = _write_due_outputs(s.ys, s.out_index, t_out, num_out, stepped.t,
                                           value_at)
        return (stepped._replace(out_index=out_index, ys=ys),)

    return body


def _dense_output(start, dt, polynomial, y_end):
    """`value_at(t)` inside the step [start, start + dt]: the polynomial, or
    (without one: the step lands on the only output) the end state."""
    if not polynomial:
        return lambda _: y_end

    def value_at(t):
        # divide_no_nan: a zero-length step (an output time repeated, as
        # merged checkpoints can produce) evaluates at its start.
        return interpolation.evaluate(polynomial, tf.math.divide_no_nan(t - start, dt))

    return value_at


def _attempt_step(s, func, t_end, tableau, rtol, atol, norm_leaves, clip_to_end,
                  shrink_after_accept, dense):
    """Attempt one step of size s.dt towards `t_end`; accept or reject it.

    Returns `(new_state, accept, (start, dt, polynomial))`: the loop state
    after the attempt (outputs untouched), whether it was accepted, and the
    attempted step's dense output (`polynomial` empty unless `dense`).
    """
    dt = s.dt
    if clip_to_end:
        remaining = t_end - s.t
        clipped = remaining < dt
        dt = tf.where(clipped, remaining, dt)
    y1, f1, y_error, k = rk_step(func, s.t, s.y, s.f, dt, tableau)
    ratio = step_control.error_ratio(y_error, s.y, y1, rtol, atol, norm_leaves)
    accept = ratio <= 1.0  # False for NaN: a non-finite step is a rejected step
    t_new = tf.where(accept, s.t + dt, s.t)
    polynomial = interpolation.fit(s.y, y1, s.f, f1, dt, k, tableau.c_mid) if dense else ()
    dt_new = step_control.next_step_size(dt, ratio, accept, tableau.order, shrink_after_accept)
    if clip_to_end:
        # A step shortened to land on the end says little about the step the
        # dynamics allow: keep the longer proposal for whoever continues.
        dt_new = tf.where(clipped & accept, tf.maximum(dt_new, s.dt), dt_new)

    status = s.status
    if not tableau.fsal:
        # f1 is not part of the error estimate here, so check it directly.
        status = tf.where(accept & ~_nest.all_finite(f1), _status.NON_FINITE, status)
    underflow = (t_new + dt_new <= t_new) & (t_new < t_end)
    cause = tf.where(tf.math.is_finite(ratio), _status.STEP_UNDERFLOW, _status.NON_FINITE)
    status = tf.where(underflow & tf.equal(status, 0), cause, status)
    accepted = tf.cast(accept, tf.int32)
    new = s._replace(
        t=t_new, y=_nest.where(accept, y1, s.y), f=_nest.where(accept, f1, s.f), dt=dt_new,
        error_ratio=ratio, nfe=s.nfe + tableau.new_evaluations_per_step,
        num_steps=s.num_steps + accepted, num_rejected=s.num_rejected + 1 - accepted,
        status=status,
    )
    return new, accept, (s.t, dt, polynomial)


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
    return s._replace(
        t=t1, y=y1, f=f1, out_index=out_index, ys=ys,
        nfe=s.nfe + tableau.new_evaluations_per_step, num_steps=s.num_steps + 1,
        status=tf.where(finite, s.status, _status.NON_FINITE),
    )
