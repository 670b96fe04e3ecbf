"""Step constraints of adaptive solves: `max_step`, `step_times`, `jump_times`.

`max_step` caps every attempted step. Stops (the step and jump times, in
increasing solver time) shorten the step that would pass the next one so
that it lands on it exactly; the solver then moves on to the following
stop. After landing on a jump time, where `func` may be discontinuous,
`func` is evaluated again just past it (`nextafter`): the next step starts
from the right-hand derivative instead of the end of the last step (no FSAL
reuse across a jump), at one extra evaluation. The step that lands keeps the
end-of-step derivative for its dense output, so outputs before the jump
interpolate the left-hand dynamics.

All functions work on scalars (joint solves) and on per-sample vectors
`(batch,)` alike; with no constraints they add nothing to the graph.
"""

from typing import NamedTuple, Optional

import tensorflow as tf

from keras_node import _nest


class Stops(NamedTuple):
    """Constraints in solver time: `times` increasing 1-D, `is_jump` bool."""

    times: tf.Tensor
    is_jump: tf.Tensor


def in_solver_time(step_times, jump_times, direction):
    """`Stops` from user-time step and jump times (either may be None), or
    None without any; `direction` (+-1, a float or a tensor) maps user to
    solver time."""
    parts = [(times, tf.fill(tf.shape(times), flag)) for times, flag in
             ((step_times, False), (jump_times, True)) if times is not None]
    if not parts:
        return None
    times = tf.concat([p[0] for p in parts], 0)
    flags = tf.concat([p[1] for p in parts], 0)
    if not (isinstance(direction, float) and direction == 1.0):
        times = times * tf.cast(direction, times.dtype)
    order = tf.argsort(times, stable=True)
    return Stops(tf.gather(times, order), tf.gather(flags, order))


def first_index(stops, t0):
    """Index of the first stop after `t0` (a scalar or per sample)."""
    if stops is None:
        return ()
    passed = stops.times <= (t0[:, None] if t0.shape.rank else t0)
    return tf.reduce_sum(tf.cast(passed, tf.int32), axis=-1)


def _padded(stops):
    """Stop times with +inf appended: a gather past the last stop is valid."""
    inf = tf.constant(float("inf"), stops.times.dtype)
    return tf.concat([stops.times, [inf]], 0), tf.concat([stops.is_jump, [False]], 0)


def limit(dt, t, index, max_step: Optional[tf.Tensor], stops):
    """The step to attempt from `t`: `dt` capped by `max_step` and shortened
    to land on the next stop. Returns `(dt, lands, stop_time)` (`lands` is
    False and `stop_time` None without stops)."""
    if max_step is not None:
        dt = tf.minimum(dt, tf.cast(max_step, dt.dtype))
    if stops is None:
        return dt, tf.zeros_like(dt, tf.bool), None
    times, _ = _padded(stops)
    stop_time = tf.gather(times, index)
    lands = stop_time - t <= dt
    return tf.where(lands, stop_time - t, dt), lands, stop_time


def after_accept(func, t_new, y_new, f_new, landed, index, stops):
    """After an attempt: `(t, f, index, extra_nfe)`. A step that landed on
    a stop (`landed`: accepted and shortened to it) ends exactly there and
    moves the index on; after a jump time `f` is re-evaluated just past it."""
    if stops is None:
        return t_new, f_new, index, 0
    times, is_jump = _padded(stops)
    t_new = tf.where(landed, tf.gather(times, index), t_new)
    jumped = landed & tf.gather(is_jump, index)
    index = index + tf.cast(landed, tf.int32)

    def evaluate(done, f):
        after = tf.math.nextafter(t_new, tf.ones_like(t_new) * float("inf"))
        fresh = tuple(func(tf.where(jumped, after, t_new), y_new))
        return tf.constant(True), _nest.where(jumped, fresh, f)

    # A loop run at most once rather than a cond (see loop_bodies.write_due_outputs).
    _, f_new = tf.while_loop(lambda done, _: ~done & tf.reduce_any(jumped), evaluate,
                             (tf.constant(False), tuple(f_new)), maximum_iterations=1)
    return t_new, f_new, index, tf.cast(tf.reduce_any(jumped), tf.int32)
