"""The backward interval of a stiff (Rosenbrock) adjoint: z interpolated
from a forward re-solve instead of integrated backward.

Why: the backsolve adjoint integrates z backward in time, and backward in
time a stiff decay is a violent growth. Measured on Robertson (rodas4, rtol
1e-6): the backward solve of [z, a] failed with a step-size underflow 4e-3
after its start, for any number of checkpoints. L-stability damps the
growing modes for steps well beyond their time scale, but the error control
drives the step down to that scale (the augmented state has a fast
transient of its own), where the method's poles amplify every error in z;
the step never gets past. The adjoint a itself is stable backward.

So, per interval between anchors `tau_j < tau_i` (CVODES' checkpointed
interpolation): z is re-solved forward from the stored state at `tau_j` with
the backward solve's method and the state's tolerances, recording every accepted step's end
(t, z, f); then [a, g] is solved backward with z(tau) the cubic Hermite
through the records (the forward's own dense output). Memory grows with
the steps of one interval (buffers of `max_num_steps + 1` records), not of
the whole solve; the dL/dtheta leaf never enters the Jacobian
(`jacobian_leaves`).

Grids of times per sample (`backward_per_sample.py`) do the same in their
shared variable s in [0, 1]. Not covered: the forward step constraints
(`max_step`, step and jump times), which the re-solve does not apply.
Without XLA each record update copies its buffer.
"""

from typing import NamedTuple

import tensorflow as tf

from keras_node import _nest
from keras_node import _status
from keras_node.adjoint import augmented
from keras_node.solvers import interpolation
from keras_node.solvers import step_control
from keras_node.solvers.rk_step import rk_step


class Record(NamedTuple):
    """Accepted step ends of a forward re-solve; rows past `count` hold
    +inf times."""

    t: tf.Tensor  # [N]
    y: tuple  # per leaf [N, ...]
    f: tuple  # per leaf [N, ...]
    count: tf.Tensor  # rows written (>= 1: the start)
    nfe: tf.Tensor
    num_steps: tf.Tensor
    num_rejected: tf.Tensor
    status: tf.Tensor


def _put(buffer, row, value):
    return tf.tensor_scatter_nd_update(buffer, [[row]], [value])


def record_forward(func, z0, t0, t1, controls):
    """Solve z' = func(t, z) from (t0, z0) to t1 (> t0; the last step clipped
    to land there), keeping every accepted step end. `controls`: the state's
    (tableau, rtol, atol, max_num_steps)."""
    tableau, size = controls.tableau, controls.max_num_steps + 1
    leaves = controls.norm_leaves or tuple(range(len(z0)))
    f0 = tuple(func(t0, z0))
    dt0 = step_control.initial_step(func, t0, z0, f0, tableau.order, controls.rtol, controls.atol,
                                    leaves, span=t1 - t0)
    inf = tf.fill([size], tf.constant(float("inf"), t0.dtype))

    def empty(leaf, first):
        return _put(tf.zeros(tf.concat([[size], tf.shape(leaf)], 0), leaf.dtype), 0, first)

    record = Record(t=_put(inf, 0, t0), y=tuple(empty(z, z) for z in z0),
                    f=tuple(empty(z, f) for z, f in zip(z0, f0)), count=tf.constant(1),
                    nfe=tf.constant(2), num_steps=tf.constant(0), num_rejected=tf.constant(0),
                    status=_status.initial(z0, f0))

    def keep_going(r, t, y, f, dt):
        return (t < t1) & tf.equal(r.status, 0) & (r.num_steps + r.num_rejected < controls.max_num_steps)

    def body(r, t, y, f, dt):
        clipped = t1 - t <= dt
        step = tf.where(clipped, t1 - t, dt)
        y1, f1, y_error, _ = rk_step(func, t, y, f, step, tableau)
        ratio = step_control.error_ratio(y_error, y, y1, controls.rtol, controls.atol, leaves)
        accept = ratio <= 1.0
        t_new = tf.where(accept, tf.where(clipped, t1, t + step), t)
        dt_new = step_control.next_step_size(step, ratio, accept, tableau.order)
        dt_new = tf.where(clipped & accept, tf.maximum(dt_new, dt), dt_new)
        y, f = _nest.where(accept, y1, y), _nest.where(accept, f1, f)
        underflow = (t_new + dt_new <= t_new) & (t_new < t1)
        cause = tf.where(tf.math.is_finite(ratio), _status.STEP_UNDERFLOW, _status.NON_FINITE)
        row, accepted = tf.minimum(r.count, size - 1), tf.cast(accept, tf.int32)
        r = Record(
            t=_put(r.t, row, tf.where(accept, t_new, tf.gather(r.t, row))),
            y=tuple(_put(b, row, v) for b, v in zip(r.y, y)),
            f=tuple(_put(b, row, v) for b, v in zip(r.f, f)),
            count=r.count + accepted, nfe=r.nfe + tableau.new_evaluations_per_step,
            num_steps=r.num_steps + accepted, num_rejected=r.num_rejected + 1 - accepted,
            status=tf.where(underflow & tf.equal(r.status, 0), cause, r.status))
        return r, t_new, y, f, dt_new

    final = tf.while_loop(keep_going, body, (record, t0, tuple(z0), f0, dt0),
                          maximum_iterations=controls.max_num_steps)
    record, t_reached = final[0], final[1]
    unfinished = (t_reached < t1) & tf.equal(record.status, 0)
    return record._replace(status=tf.where(unfinished, _status.MAX_STEPS, record.status))


def state_at(record):
    """`z(tau)`: the cubic Hermite through the records, anywhere in their span."""
    last_piece = tf.maximum(record.count - 2, 0)

    def z_of(tau):
        k = tf.minimum(tf.reduce_sum(tf.cast(record.t[1:] <= tau, tf.int32)), last_piece)
        start = tf.gather(record.t, k)
        h = tf.gather(record.t, k + 1) - start
        rows = [tuple(tf.gather(b, i) for b in buffers)
                for buffers in (record.y, record.f) for i in (k, k + 1)]
        # Past the last record (only when no step was taken) x = 0: z0.
        finite = tf.math.is_finite(h)
        h = tf.where(finite, h, tf.zeros_like(h))
        x = tf.math.divide_no_nan(tau - start, h)
        polynomial = interpolation.fit(rows[0], rows[1], rows[2], rows[3], h)
        return interpolation.evaluate(polynomial, x)

    return z_of


def adjoint_dynamics(func, z_of, variables, dtype):
    """`dynamics(sigma, [a, (g)])` of the adjoint with z read from `z_of`."""
    def dynamics(sigma, x):
        n = len(x) - (1 if variables else 0)
        z = z_of(-sigma)
        return augmented.augmented_dynamics(func, n, variables, dtype)(sigma, z + tuple(x))[n:]

    return dynamics
