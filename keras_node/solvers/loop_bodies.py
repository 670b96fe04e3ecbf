"""The bodies of the solver loop (`integrate.py` drives it): one adaptive
step attempt, the two ways of looping over attempts and writing outputs,
and one fixed step.

Each body takes and returns the driver's loop state (`integrate._LoopState`,
changed with `_replace`); outputs go into its buffers through
`write_due_outputs`.
"""

import tensorflow as tf
# Private, because no public API tells whether a gradient tape is recording:
# under XLA while one records, XLA may differentiate the solver loop, which
# decides the loop layout (`attempts_in_inner_loop`).
from tensorflow.python.eager import record

from keras_node import _nest
from keras_node import _status
from keras_node.solvers import interpolation
from keras_node.solvers import step_control
from keras_node.solvers import stops
from keras_node.solvers.rk_step import rk_step

# XLA's CPU runtime runs a loop body sequentially when every buffer it
# touches is at most this big (see `attempts_in_inner_loop`).
_SMALL_BUFFER_BYTES = 512


def output_buffers(y0, num_out, carried=False):
    """One buffer per leaf for the `num_out` outputs, with `y0` written first.

    TensorArrays while a gradient tape may record through the loop: TF
    differentiates their writes without keeping the whole buffer per step.
    Otherwise, or if `carried` (the chunked loop of `recompute.py` passes
    its state through a custom gradient, which takes tensors only), tensors
    carried in the loop state, which model converters (TFLite, ONNX)
    understand; a TensorArray whose element has an unknown batch dimension
    they do not. The values written are the same.
    """
    if record.could_possibly_record() and not carried:
        return tuple(tf.TensorArray(y.dtype, size=num_out, element_shape=y.shape).write(0, y)
                     for y in y0)
    return tuple(tf.tensor_scatter_nd_update(tf.zeros(tf.concat([[num_out], tf.shape(y)], 0), y.dtype),
                                             [[0]], [y]) for y in y0)


def write_output(buffer, index, value):
    """`buffer` (from `output_buffers`) with `value` written at `index`."""
    if isinstance(buffer, tf.TensorArray):
        return buffer.write(index, value)
    return tf.tensor_scatter_nd_update(buffer, [[index]], [value])


def stacked_outputs(buffers):
    """The outputs as tensors `[num_out, *leaf_shape]`."""
    return tuple(b.stack() if isinstance(b, tf.TensorArray) else b for b in buffers)


def write_due_outputs(ys, out_index, t_out, num_out, t1, value_at, allowed=True, max_writes=None):
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
        return j + 1, tuple(write_output(b, j, v) for b, v in zip(arrays, values))

    return tf.while_loop(
        due, write, (out_index, ys),
        maximum_iterations=max_writes or (num_out if isinstance(num_out, int) else None),
    )


def attempts_in_inner_loop(y0):
    """Whether a solve of the state `y0` (a tuple of leaves) attempts its
    steps in an inner loop between output times (`steps_then_outputs`)
    rather than one per iteration (`step_and_outputs`).

    Why two layouts: XLA's CPU runtime runs a loop body's operations one
    after the other only when every buffer the body touches is at most 512
    bytes (or the body is at most 8 operations); otherwise it schedules them
    concurrently on TensorFlow's thread pool, whose hand-offs cost a
    2-component solve with 1000 outputs a third of its time
    (benchmarks/RESULTS.md, 2b and 2c). With the outputs written outside the
    loop that attempts steps, that loop touches only state-sized buffers, which
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


def step_and_outputs(attempt, t_out, num_out):
    """Loop body: attempt one step, then write the outputs it covers (if
    accepted) from its dense-output polynomial."""

    def body(s):
        new, accept, (start, dt, polynomial) = attempt(s)
        out_index, ys = write_due_outputs(s.ys, s.out_index, t_out, num_out, start + dt,
                                          _dense_output(start, dt, polynomial, new.y),
                                          allowed=accept)
        return (new._replace(out_index=out_index, ys=ys),)

    return body


def steps_then_outputs(attempt, keep_going, t_out, num_out):
    """Loop body: attempt steps until one ends at or past the next output
    time, then write the outputs the last accepted step covers."""
    last = num_out - 1

    def body(s):
        target = tf.gather(t_out, tf.minimum(s.out_index, last))

        def before_target(s):
            return (s.t < target) & keep_going(s)

        def step(s):
            new, accept, (start, dt, polynomial) = attempt(s)
            if not s.last_step:
                return (new,)
            kept = (start, dt, polynomial)
            return (new._replace(last_step=tf.nest.map_structure(
                lambda a, b: tf.where(accept, a, b), kept, s.last_step)),)

        # The output buffers stay out of the inner loop (attempts_in_inner_loop).
        stepped = tf.while_loop(before_target, step, (s._replace(ys=()),))[0]
        if stepped.last_step:
            value_at = _dense_output(*stepped.last_step, stepped.y)
        else:
            value_at = _dense_output(None, None, (), stepped.y)
        out_index, ys = write_due_outputs(s.ys, s.out_index, t_out, num_out, stepped.t,
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


def attempt_step(s, func, t_end, controls, dense):
    """Attempt one step of size s.dt towards `t_end`; accept or reject it.

    Returns `(new_state, accept, (start, dt, polynomial))`: the loop state
    after the attempt (outputs untouched), whether it was accepted, and the
    attempted step's dense output (`polynomial` empty unless `dense`).
    """
    tableau = controls.tableau
    dt, lands = s.dt, False
    if controls.max_step is not None or controls.stops is not None:
        dt, lands, _ = stops.limit(dt, s.t, s.stop_index, controls.max_step, controls.stops)
    if controls.clip_to_end:
        remaining = t_end - s.t
        clipped = remaining < dt
        dt = tf.where(clipped, remaining, dt)
        if controls.stops is not None:
            lands = lands & ~clipped
    y1, f1, y_error, k = rk_step(func, s.t, s.y, s.f, dt, tableau)
    ratio = step_control.error_ratio(y_error, s.y, y1, controls.rtol, controls.atol,
                                     controls.norm_leaves)
    accept = ratio <= 1.0  # False for NaN: a non-finite step is a rejected step
    t_new = tf.where(accept, s.t + dt, s.t)
    polynomial = interpolation.fit(s.y, y1, s.f, f1, dt, k, tableau.c_mid) if dense else ()
    dt_new = step_control.next_step_size(dt, ratio, accept, tableau.order,
                                         controls.shrink_after_accept)
    if controls.clip_to_end:
        # A step shortened to land on the end says little about the step the
        # dynamics allow: keep the longer proposal for whoever continues.
        dt_new = tf.where(clipped & accept, tf.maximum(dt_new, s.dt), dt_new)
    stop_index, extra_nfe = s.stop_index, 0
    if controls.stops is not None:
        # Landing on a stop is a shortened step too.
        t_new, f1, stop_index, extra_nfe = stops.after_accept(func, t_new, y1, f1, accept & lands,
                                                              s.stop_index, controls.stops)
        dt_new = tf.where(accept & lands, tf.maximum(dt_new, s.dt), dt_new)

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
        error_ratio=ratio, nfe=s.nfe + tableau.new_evaluations_per_step + extra_nfe,
        stop_index=stop_index,
        num_steps=s.num_steps + accepted, num_rejected=s.num_rejected + 1 - accepted,
        status=status,
    )
    return new, accept, (s.t, dt, polynomial)


def fixed_step(s, func, t_out, num_out, tableau, step_size, record_steps=None):
    """One step of a fixed-step method, shortened to land on the next output;
    with `record_steps`, also record the state after the steps they name."""
    target = tf.gather(t_out, s.out_index)
    dt, lands = fixed_step_size(target - s.t, s.dt, step_size is not None)
    y1, f1, _, _ = rk_step(func, s.t, s.y, s.f, dt, tableau)
    t1 = tf.where(lands, target, s.t + dt)
    out_index, ys = write_due_outputs(s.ys, s.out_index, t_out, num_out, t1,
                                      lambda _: y1, allowed=lands, max_writes=1)
    records = _record(s, record_steps, ~lands, t1, y1) if s.records else ()
    finite = _nest.all_finite(y1 + f1)
    return s._replace(
        t=t1, y=y1, f=f1, out_index=out_index, ys=ys, records=records,
        nfe=s.nfe + tableau.new_evaluations_per_step, num_steps=s.num_steps + 1,
        status=tf.where(finite, s.status, _status.NON_FINITE),
    )


def fixed_step_size(remaining, step, has_step_size):
    """`(dt, lands)` of a fixed-step method `remaining` short of its next
    output: a full `step`, or the rest when that lands on the output
    (always without a step size: one step per interval). Scalars or per
    sample alike."""
    if not has_step_size:
        return remaining, tf.ones_like(remaining, tf.bool)
    # Land when within a few ulps of a full step, so that rounding in the
    # accumulated time never leaves a sliver of a step before an output.
    eps = 1e-12 if remaining.dtype == tf.float64 else 1e-5
    lands = remaining <= step * (1.0 + eps)
    return tf.where(lands, remaining, step), lands


def _record(s, record_steps, allowed, t1, y1):
    """`s.records` = (next index, times, *states) with `(t1, y1)` stored as
    the next record when this step (number `s.num_steps + 1`) reaches the
    next count in `record_steps`.

    Records are whole tensors with a leading axis of `len(record_steps)`
    (static, so XLA can hold them), updated in place at the next index.
    """
    index, arrays = s.records[0], s.records[1:]
    # A sentinel past every step count keeps the gather valid once all
    # records are written.
    padded = tf.concat([record_steps, [tf.int32.max]], axis=0)
    due = allowed & (s.num_steps + 1 >= tf.gather(padded, index))

    def write(j, arrays):
        values = (t1,) + tuple(y1)
        return j + 1, tuple(tf.tensor_scatter_nd_update(r, [[j]], [v]) for r, v in zip(arrays, values))

    # A loop that runs at most once, not a cond (see write_due_outputs).
    index, arrays = tf.while_loop(lambda j, _: due & tf.equal(j, index), write, (index, arrays),
                                  maximum_iterations=1)
    return (index,) + tuple(arrays)
