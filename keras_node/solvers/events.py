"""Event search: step until an event function crosses zero, then locate the root.

The loop is the per-sample solver's (`per_sample.py`): each sample steps on
its own and stops at its own event (a joint solve is a batch of one). After
every accepted step the event functions are evaluated at its end; when one
of them changed sign (in the wanted direction) the root is located inside
the step by bisection on the step's dense-output polynomial, which costs
event-function evaluations but no evaluations of `func`, and the state there
is that polynomial's value. The search is the whole solve: `backprop`
differentiates its loop, and the adjoint re-anchors at the states it
records (`thinned_records.py`).

With several event functions the first root wins: the bisection looks for
the earliest point of the step by which any of them has crossed (exact when
each crosses at most once inside one step, as with scipy's events).
"""

from typing import NamedTuple

import tensorflow as tf

from keras_node import _nest
from keras_node import _status
from keras_node.solvers import interpolation
from keras_node.solvers import per_sample
from keras_node.solvers import recompute
from keras_node.solvers import thinned_records


class EventSearch(NamedTuple):
    """What `search` returns (solver time; per sample, shape `(batch,)`).

    t: the event time, or `t_end` for a sample without an event before it.
    event_index: which event function fired, -1 for none.
    t_reached: where each sample's solve ended (for error messages).
    y: the state at `t` (leaves), from the dense output of the step that
        brackets it.
    records: the `thinned_records.Records` kept, or None.
    last_dt: each sample's next step-size proposal.
    nfe (scalar), num_steps, num_rejected, status: as for a per-sample solve.
    """

    t: tf.Tensor
    event_index: tf.Tensor
    t_reached: tf.Tensor
    y: tuple
    records: object
    last_dt: tf.Tensor
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
    # (ArgMax has GPU kernels for floats, not int32.)
    index = tf.argmax(tf.cast(fired, tf.float32), axis=-1, output_type=tf.int32)
    return hi, index


class _Loop(NamedTuple):
    """The search loop's state."""

    solver: tuple  # the per-sample solver's state
    g: tf.Tensor  # (batch, k) event values at the solver's time
    last: tuple  # (start, dt, polynomial): each sample's last step (`per_sample.attempt`)
    g_start: tf.Tensor  # (batch, k) event values at the start of `last`
    crossed: tf.Tensor  # (batch,) bool: an event function crossed inside `last`
    records: tuple  # () or (thinned_records.Records,)


def search(func, event_fn, y0, t_span, controls, direction, initial_status=None, record_slots=0,
           record_stride=1, compile_root_search=False):
    """Solve per sample from `t_span[:, 0]` until an event or `t_span[:, 1]`.

    Args:
        func: `func(t, y)` on tuples of leaves, `t` of shape `(batch,)`.
        event_fn: `event_fn(t, y) -> (batch, k)` event values.
        y0: tuple of leaves `(batch, ...)`.
        t_span: `(batch, 2)` increasing solver times; the end may be +inf.
        controls: an adaptive method's `Controls` (with `variables`, the
            loop is checkpointed for XLA's gradient: `recompute.py`).
        direction: Python int, -1, 0 or +1 (see `crossed`).
        initial_status: optional int32 `(batch,)` or scalar.
        record_slots, record_stride: keep up to `record_slots` states of
            accepted steps before the event, every `record_stride`-th step
            at first (`thinned_records.py`); 0 keeps none.
        compile_root_search: locate the root in an XLA function of its own
            (when the loop is not under XLA already).

    Returns:
        An `EventSearch`. Its state `y` is differentiable: gradients flow
        through the steps taken (not through the event time, which the
        caller differentiates by the implicit function theorem).
    """
    y0 = tuple(y0)
    if controls.norm_leaves is None:
        controls = controls._replace(norm_leaves=tuple(range(len(y0))))
    state = per_sample.initial_state(func, y0, t_span, 2, controls, initial_status)
    state = state._replace(ys=())  # the search writes no outputs
    t_end = t_span[:, 1]
    g0 = tf.stop_gradient(event_fn(state.t, state.y))
    records = ((thinned_records.empty(state.t, y0, record_slots, record_stride),)
               if record_slots else ())
    # Until a sample stops, its `last` step is the constant y0 (so its value is finite).
    no_step = (state.t, tf.zeros_like(state.t),
               interpolation.constant(y0, controls.tableau.c_mid is not None))
    start = _Loop(solver=state, g=g0, last=no_step, g_start=g0,
                  crossed=tf.zeros_like(state.t, tf.bool), records=records)

    # A batch of one (every joint solve) stops with its last attempt: no
    # need to keep its last step aside (the `where` per iteration costs).
    single = y0[0].shape[0] == 1

    def keep_going(loop):
        return tf.reduce_any(per_sample.active_samples(loop.solver, 2, controls.max_num_steps))

    def body(loop):
        s = loop.solver
        active = per_sample.active_samples(s, 2, controls.max_num_steps)
        new, accept, step = per_sample.attempt(s, active, func, controls, t_end)
        # Event values carry no gradient: the event time's comes from the
        # implicit function theorem, outside the loop.
        g_new = tf.stop_gradient(event_fn(new.t, new.y))
        crossed_now = accept & tf.reduce_any(crossed(loop.g, g_new, direction), axis=-1)
        # A sample stops at a crossing or at t_end; after the loop, the
        # root is located in its last step (and found to lie before t_end or not).
        done = crossed_now | (accept & (new.t >= t_end))
        records = loop.records
        if records:
            records = (thinned_records.add(records[0], accept & ~done, new.num_steps, new.t,
                                           new.y),)
        return (_Loop(
            solver=new._replace(out_index=tf.where(done, 2, new.out_index)),
            g=tf.where(accept[:, None], g_new, loop.g),
            last=step if single else tf.nest.map_structure(
                lambda a, b: tf.where(_nest.per_sample(done, a), a, b), step, loop.last),
            g_start=tf.where(done[:, None], loop.g, loop.g_start),
            crossed=tf.where(done, crossed_now, loop.crossed), records=records),)

    final = recompute.solver_loop(keep_going, body, start, controls.max_num_steps,
                                  controls.variables)
    t_event, index, y = _locate(final, event_fn, t_end, direction, compile_root_search)
    solver = final.solver
    unfinished = (solver.out_index < 2) & tf.equal(solver.status, _status.SUCCESS)
    return EventSearch(
        t=t_event, event_index=index, t_reached=solver.t, y=y,
        records=final.records[0] if final.records else None, last_dt=solver.dt, nfe=solver.nfe,
        num_steps=solver.num_steps, num_rejected=solver.num_rejected,
        status=tf.where(unfinished, _status.MAX_STEPS, solver.status),
    )


def _locate(final, event_fn, t_end, direction, compile_root_search):
    """`(t, event_index, y)` per sample from each one's last step: the
    first root inside it when it lies before t_end, else t_end."""
    start, dt, polynomial = tf.nest.map_structure(tf.stop_gradient, final.last)

    def root_search(g_start, start, dt, polynomial, rows):
        def event_at(times):
            return event_fn(times, per_sample.dense_value((start, dt, polynomial), times))
        return _bisect(event_at, g_start, start, dt, rows, direction, dt.dtype)

    if compile_root_search and not _status.in_xla_context():
        # Dozens of small iterations: ~2 ms on the bench MLP outside XLA
        # (where a gradient through the loop keeps the search).
        root_search = tf.function(root_search, autograph=False, jit_compile=True)
    x, fired = root_search(tf.stop_gradient(final.g_start), start, dt, polynomial, final.crossed)
    t_root = start + x * dt
    found = final.crossed & (t_root <= t_end)
    t_event = tf.where(found, t_root, t_end)
    stopped = tf.equal(final.solver.out_index, 2)
    # Where the search did not stop (a failure), the step's start: t_end may
    # be infinite, and an infinite value, even unselected, makes the gradient NaN.
    y = per_sample.dense_value(final.last, tf.where(stopped, t_event, start))
    return t_event, tf.where(found, fired, -tf.ones_like(fired)), y
