"""Event search: step until an event function crosses zero, then locate the root.

The loop is the per-sample solver's (`per_sample.py`): each sample steps on
its own and stops at its own event (a joint solve is a batch of one). After
every accepted step the event functions are evaluated at its end; when one
of them changed sign (in the wanted direction) the root is located inside
the step by bisection on the step's dense-output polynomial, which costs
event-function evaluations but no evaluations of `func`.

With several event functions the first root wins: the bisection looks for
the earliest point of the step by which any of them has crossed (exact when
each crosses at most once inside one step, as with scipy's events).
"""

from typing import NamedTuple

import tensorflow as tf

from keras_node import _status
from keras_node.solvers import per_sample


class EventSearch(NamedTuple):
    """What `search` returns (solver time; per sample, shape `(batch,)`).

    t: the event time, or `t_end` for a sample without an event before it.
    event_index: which event function fired, -1 for none.
    t_reached: where each sample's solve ended (for error messages).
    nfe (scalar), num_steps, num_rejected, status: as for a per-sample solve.
    """

    t: tf.Tensor
    event_index: tf.Tensor
    t_reached: tf.Tensor
    nfe: tf.Tensor
    num_steps: tf.Tensor
    num_rejected: tf.Tensor
    status: tf.Tensor


def crossed(g_start, g_end, direction):
    """(..., k) bool: event functions that crossed zero between two values,
    along the solve: rising (`direction=1`: from < 0 to >= 0), falling
    (`-1`: from > 0 to <= 0) or either (`0`). Starting on zero is no
    crossing."""
    rising = (g_start < 0) & (g_end >= 0)
    falling = (g_start > 0) & (g_end <= 0)
    if direction > 0:
        return rising
    if direction < 0:
        return falling
    return rising | falling


def _bisect(event_at, g_start, start, dt, rows, direction, dtype):
    """Per sample of `rows`: the fraction `x` in (0, 1] of the step at which
    an event function has first crossed (to the float precision of `x`), and
    the index of the one that crossed there."""
    lo = tf.zeros_like(start)
    hi = tf.ones_like(start)
    # Halving [0, 1] until the midpoint rounds onto an end: the mantissa
    # bits plus a margin bound the iterations.
    iterations = 30 if dtype == tf.float32 else 60

    def narrowing(lo, hi):
        mid = 0.5 * (lo + hi)
        return rows & (mid > lo) & (mid < hi)

    def halve(lo, hi):
        mid = 0.5 * (lo + hi)
        hit = tf.reduce_any(crossed(g_start, event_at(start + mid * dt), direction), axis=-1)
        moving = narrowing(lo, hi)
        return tf.where(moving & ~hit, mid, lo), tf.where(moving & hit, mid, hi)

    lo, hi = tf.while_loop(lambda lo, hi: tf.reduce_any(narrowing(lo, hi)), halve, (lo, hi),
                           maximum_iterations=iterations)
    fired = crossed(g_start, event_at(start + hi * dt), direction)
    index = tf.argmax(tf.cast(fired, tf.int32), axis=-1, output_type=tf.int32)
    return hi, index


def search(func, event_fn, y0, t_span, controls, direction, initial_status=None):
    """Solve per sample from `t_span[:, 0]` until an event or `t_span[:, 1]`.

    Args:
        func: `func(t, y)` on tuples of leaves, `t` of shape `(batch,)`.
        event_fn: `event_fn(t, y) -> (batch, k)` event values.
        y0: tuple of leaves `(batch, ...)`.
        t_span: `(batch, 2)` increasing solver times; the end may be +inf.
        controls: an adaptive method's `Controls`.
        direction: Python int, -1, 0 or +1 (see `crossed`).
        initial_status: optional int32 `(batch,)` or scalar.

    Returns:
        An `EventSearch`.
    """
    y0 = tuple(y0)
    if controls.norm_leaves is None:
        controls = controls._replace(norm_leaves=tuple(range(len(y0))))
    state = per_sample.initial_state(func, y0, t_span, 2, controls, initial_status)
    state = state._replace(ys=())  # the search writes no outputs
    t_end = t_span[:, 1]
    g0 = event_fn(state.t, state.y)
    none = -tf.ones_like(state.num_steps)

    def keep_going(s, *_):
        return tf.reduce_any(per_sample.active_samples(s, 2, controls.max_num_steps))

    def body(s, g, t_found, index):
        active = per_sample.active_samples(s, 2, controls.max_num_steps)
        new, accept, value_at = per_sample.attempt(s, active, func, controls, t_end)
        g_new = event_fn(new.t, new.y)
        any_crossed = accept & tf.reduce_any(crossed(g, g_new, direction), axis=-1)
        start, dt = s.t, new.t - s.t

        def event_at(times):
            return event_fn(times, value_at(times))

        x, fired = _bisect(event_at, g, start, dt, any_crossed, direction, dt.dtype)
        t_root = start + x * dt
        found = any_crossed & (t_root <= t_end)
        past_end = accept & ~found & (new.t >= t_end)
        t_found = tf.where(found, t_root, tf.where(past_end, t_end, t_found))
        index = tf.where(found, fired, index)
        done = found | past_end
        new = new._replace(out_index=tf.where(done, 2, new.out_index))
        return new, tf.where(accept[:, None], g_new, g), t_found, index

    final, _, t_found, index = tf.while_loop(
        keep_going, body, (state, g0, t_end, none), maximum_iterations=controls.max_num_steps)
    unfinished = (final.out_index < 2) & tf.equal(final.status, _status.SUCCESS)
    return EventSearch(
        t=t_found, event_index=index, t_reached=final.t, nfe=final.nfe, num_steps=final.num_steps,
        num_rejected=final.num_rejected,
        status=tf.where(unfinished, _status.MAX_STEPS, final.status),
    )
