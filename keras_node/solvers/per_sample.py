"""The solver loop of per-sample solves (`batch_axis=0`): each sample steps on its own.

Axis 0 of every state leaf is a batch of independent problems. Each sample
has its own time, step size, accept/reject decision, step counters and
status, all vectors of shape `(batch,)`; `func` is still called once per
stage on the whole batch, with the per-sample times. A sample whose solve is
over (it reached its last output time, or failed) takes zero-length steps,
which leave it unchanged, and stops counting steps; the loop ends when no
sample is left. Every sample's arithmetic (error norm, step size, initial
step) reads only its own rows, so its result does not depend on the batch.

Outputs are whole tensors `[num_out, batch, ...]`: as a sample's accepted
step passes its next output times, their dense-output values are scattered
into its column. Compared with the joint loop (`integrate.py`): one layout
(one attempt per iteration, then the outputs it covers), no clipping to the
end and no step records, which only the joint adjoint uses.
"""

from typing import NamedTuple

import tensorflow as tf

from keras_node import _nest
from keras_node import _status
from keras_node.solvers import interpolation
from keras_node.solvers import recompute
from keras_node.solvers import step_control
from keras_node.solvers import stops
from keras_node.solvers.integrate import Solution
from keras_node.solvers.loop_bodies import fixed_step_size
from keras_node.solvers.rk_step import rk_step


class _State(NamedTuple):
    t: tf.Tensor  # (batch,) end of each sample's last accepted step
    y: tuple  # state leaves at t
    f: tuple  # func(t, y)
    dt: tf.Tensor  # (batch,) next step size to attempt
    out_index: tf.Tensor  # (batch,) int32, each sample's next output to write
    ys: tuple  # output tensors [num_out, batch, ...], one per leaf
    nfe: tf.Tensor  # scalar: batched evaluations of func
    num_steps: tf.Tensor  # (batch,)
    num_rejected: tf.Tensor  # (batch,)
    status: tf.Tensor  # (batch,)
    stop_index: tuple = ()  # (batch,) next step/jump time, with stops (else ())


@tf.autograph.experimental.do_not_convert
def integrate_per_sample(func, y0, t_out, controls, *, initial_status=None):
    """Solve `dy/dt = func(t, y)` per sample, writing `y_b` at each `t_out[b]`.

    Args:
        func: `func(t, y) -> dy/dt` on tuples of leaves; `t` has shape
            `(batch,)`.
        y0: tuple of leaves, each `(batch, ...)`.
        t_out: `(batch, num_out)` output times, each row strictly increasing
            (the caller negates decreasing times), of the leaves' dtype.
        controls: an `integrate.Controls` (`clip_to_end` and
            `shrink_after_accept` are not used here).
        initial_status: optional int32, scalar or `(batch,)`; non-zero
            entries skip those samples (e.g. times found non-monotonic).

    Returns:
        An `integrate.Solution` whose `ys` are `[num_out, batch, ...]` and
        whose `t_reached`, `last_dt`, `num_steps`, `num_rejected` and
        `status` have shape `(batch,)`; `nfe` is a scalar.
    """
    y0 = tuple(y0)
    if controls.norm_leaves is None:
        controls = controls._replace(norm_leaves=tuple(range(len(y0))))
    num_out = t_out.shape[1] if t_out.shape[1] is not None else tf.shape(t_out)[1]
    state = initial_state(func, y0, t_out, num_out, controls, initial_status)

    def keep_going(s):
        return tf.reduce_any(active_samples(s, num_out, controls.max_num_steps))

    def body(s):
        active = active_samples(s, num_out, controls.max_num_steps)
        if controls.tableau.adaptive:
            return (_adaptive_step(s, active, func, t_out, num_out, controls),)
        return (_fixed_step(s, active, func, t_out, num_out, controls),)

    final = recompute.solver_loop(keep_going, body, state, controls.max_num_steps,
                                  controls.variables)
    unfinished = (final.out_index < num_out) & tf.equal(final.status, _status.SUCCESS)
    return Solution(
        ys=final.ys, t_reached=final.t, last_dt=final.dt, nfe=final.nfe,
        num_steps=final.num_steps, num_rejected=final.num_rejected,
        status=tf.where(unfinished, _status.MAX_STEPS, final.status),
    )


def active_samples(s, num_out, max_num_steps):
    """(batch,) bool: samples still being solved."""
    return ((s.out_index < num_out) & tf.equal(s.status, _status.SUCCESS)
            & (s.num_steps + s.num_rejected < max_num_steps))


def initial_state(func, y0, t_out, num_out, controls, initial_status):
    """The loop state before the first step: f0, status, first step size per
    sample, output tensors with `y0` written."""
    tableau, dtype = controls.tableau, y0[0].dtype
    batch = tf.shape(t_out)[0]
    t0 = t_out[:, 0]
    f0 = tuple(func(t0, y0))
    nfe = tf.constant(1, tf.int32)
    status = _status.initial(y0, f0, batched=True)
    if initial_status is not None:
        status = tf.where(tf.equal(initial_status, 0), status, initial_status)
    if tableau.adaptive and controls.first_step is None:
        span = t_out[:, -1] - t0
        dt0 = step_control.initial_step(func, t0, y0, f0, tableau.order, controls.rtol,
                                        controls.atol, controls.norm_leaves, span=span,
                                        batched=True)
        nfe += 1
    elif tableau.adaptive or controls.step_size is not None:
        size = controls.first_step if tableau.adaptive else controls.step_size
        dt0 = tf.fill([batch], tf.cast(size, dtype))
    else:
        dt0 = tf.zeros([batch], dtype)
    ys = tuple(
        tf.tensor_scatter_nd_update(tf.zeros(tf.concat([[num_out], tf.shape(y)], 0), dtype), [[0]], [y])
        for y in y0
    )
    ys = tuple(tf.ensure_shape(buffer, [t_out.shape[1]] + y.shape.as_list()) for buffer, y in zip(ys, y0))
    zeros = tf.zeros([batch], tf.int32)
    return _State(t=t0, y=y0, f=f0, dt=dt0, out_index=zeros + 1, ys=ys, nfe=nfe,
                  num_steps=zeros, num_rejected=zeros, status=status,
                  stop_index=stops.first_index(controls.stops, t0))


def _adaptive_step(s, active, func, t_out, num_out, controls):
    """Every active sample attempts a step of its own size; the accepted
    ones move on and write the outputs their step passed."""
    new, accept, step = attempt(s, active, func, controls, t_out[:, -1])
    out_index, ys = _write_outputs(s.ys, s.out_index, t_out, num_out, new.t,
                                   lambda times: dense_value(step, times), accept)
    return new._replace(out_index=out_index, ys=ys)


def attempt(s, active, func, controls, t_end):
    """Every active sample attempts a step of its own size from `s`.

    Returns `(new, accept, step)`: the state after the attempt (outputs
    untouched), the (batch,) accepted mask, and the attempted step as
    `(start, dt, polynomial)` per sample, for `dense_value`.
    A step size that underflows before `t_end` ((batch,)) fails the sample.
    """
    tableau = controls.tableau
    dt, lands = s.dt, False
    if controls.max_step is not None or controls.stops is not None:
        dt, lands, _ = stops.limit(dt, s.t, s.stop_index, controls.max_step, controls.stops)
    dt = tf.where(active, dt, tf.zeros_like(dt))  # finished samples stand still
    y1, f1, y_error, k = rk_step(func, s.t, s.y, s.f, dt, tableau)
    ratio = step_control.error_ratio(y_error, s.y, y1, controls.rtol, controls.atol,
                                     controls.norm_leaves, batched=True)
    accept = active & (ratio <= 1.0)  # False for NaN: a non-finite step is a rejected step
    t_new = tf.where(accept, s.t + dt, s.t)
    dt_new = tf.where(active, step_control.next_step_size(dt, ratio, accept, tableau.order), s.dt)
    f_next, stop_index, extra_nfe = f1, s.stop_index, 0
    if controls.stops is not None:
        # Landing on a stop is a shortened step: keep the longer proposal.
        t_new, f_next, stop_index, extra_nfe = stops.after_accept(
            func, t_new, y1, f1, accept & lands, s.stop_index, controls.stops)
        dt_new = tf.where(accept & lands, tf.maximum(dt_new, s.dt), dt_new)
    status = s.status
    if not tableau.fsal:
        # f1 is not part of the error estimate here, so check it directly.
        finite = _nest.all_finite(f1, batched=True)
        status = tf.where(accept & ~finite, _status.NON_FINITE, status)
    underflow = active & (t_new + dt_new <= t_new) & (t_new < t_end)
    cause = tf.where(tf.math.is_finite(ratio), _status.STEP_UNDERFLOW, _status.NON_FINITE)
    status = tf.where(underflow & tf.equal(status, _status.SUCCESS), cause, status)
    polynomial = interpolation.fit(s.y, y1, s.f, f1, dt, k, tableau.c_mid)

    accepted, attempted = tf.cast(accept, tf.int32), tf.cast(active, tf.int32)
    new = s._replace(
        t=t_new, y=_nest.where(accept, y1, s.y), f=_nest.where(accept, f_next, s.f), dt=dt_new,
        nfe=s.nfe + tableau.new_evaluations_per_step + extra_nfe,
        stop_index=stop_index,
        num_steps=s.num_steps + accepted, num_rejected=s.num_rejected + attempted - accepted,
        status=status,
    )
    return new, accept, (s.t, dt, polynomial)


def dense_value(step, times):
    """The dense output of `step` (`(start, dt, polynomial)` per sample, as
    `attempt` returns it) at per-sample `times` inside it."""
    start, dt, polynomial = step
    return interpolation.evaluate(polynomial, tf.math.divide_no_nan(times - start, dt))


def _fixed_step(s, active, func, t_out, num_out, controls):
    """One step of a fixed-step method per active sample, shortened to
    land on its next output time."""
    target = _next_times(t_out, s.out_index, num_out)
    dt, lands = fixed_step_size(target - s.t, s.dt, controls.step_size is not None)
    dt = tf.where(active, dt, tf.zeros_like(dt))
    y1, f1, _, _ = rk_step(func, s.t, s.y, s.f, dt, controls.tableau)
    t1 = tf.where(active, tf.where(lands, target, s.t + dt), s.t)
    out_index, ys = _write_outputs(s.ys, s.out_index, t_out, num_out, t1, lambda _: y1,
                                   active & lands)
    finite = _nest.all_finite(y1 + f1, batched=True)
    return s._replace(
        t=t1, y=_nest.where(active, y1, s.y), f=_nest.where(active, f1, s.f), out_index=out_index,
        ys=ys, nfe=s.nfe + controls.tableau.new_evaluations_per_step,
        num_steps=s.num_steps + tf.cast(active, tf.int32),
        status=tf.where(active & ~finite, _status.NON_FINITE, s.status),
    )


def _next_times(t_out, out_index, num_out):
    """(batch,) each sample's output time number `out_index` (clamped)."""
    return tf.gather(t_out, tf.minimum(out_index, num_out - 1), batch_dims=1)


def _write_outputs(ys, out_index, t_out, num_out, t1, value_at, allowed):
    """Write, per sample where `allowed`, every output whose time is <= t1.

    Each iteration writes at most one output per sample: a scatter of one
    row per sample (rows not due write back what they hold), so the cost
    does not grow with the number of outputs. A while loop rather than a
    cond, for XLA's gradient (see `loop_bodies.write_due_outputs`).
    """
    rows = tf.range(tf.shape(t_out)[0])

    def due(j):
        return allowed & (j < num_out) & (_next_times(t_out, j, num_out) <= t1)

    def write(j, arrays):
        now = due(j)
        values = value_at(_next_times(t_out, j, num_out))
        indices = tf.stack([tf.minimum(j, num_out - 1), rows], axis=1)
        arrays = tuple(
            tf.tensor_scatter_nd_update(a, indices, tf.where(_nest.per_sample(now, v), v,
                                                             tf.gather_nd(a, indices)))
            for a, v in zip(arrays, values)
        )
        return j + tf.cast(now, tf.int32), arrays

    return tf.while_loop(
        lambda j, _: tf.reduce_any(due(j)), write, (out_index, ys),
        maximum_iterations=num_out if isinstance(num_out, int) else None,
    )
