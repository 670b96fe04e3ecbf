"""`keras_node.odeint_event`: solve until an event function crosses zero.

Two parts. The search (`solvers/events.py`, compiled like every solve, no
gradient) steps until an event function changes sign and locates the root
on the step's dense output. The state at the event, with its gradient, is
the solution of a second solve from `t0` to the (constant) event time, by
`odeint_adjoint` or `odeint` as `gradient=` says; the event time's own
gradient comes from the implicit function theorem: with g(t*, y(t*)) = 0,
dt* = -(dg/dy . dy + dg/dtheta) / (dg/dt + dg/dy . f), added as a term whose
value is zero.
"""

import functools

import tensorflow as tf
# Private, for the same reason as in adjoint/__init__.py: the search is not
# differentiated (its gradient is the implicit function theorem's), so no
# tape may record it.
from tensorflow.python.eager import record

from keras_node import _execution
from keras_node import _inputs
from keras_node import _nest
from keras_node import _status
from keras_node._times import convert_times
from keras_node._validate import check_bool, check_choice, short_repr
from keras_node.adjoint import solve_adjoint
from keras_node.odeint import (check_callable, direction_and_tau, resolve_jit, solve,
                               to_user_time, where_label)
from keras_node.options import AdjointOptions, SolverOptions
from keras_node.solvers import events as event_search
from keras_node.solvers.integrate import Controls

__all__ = ["odeint_event"]


@tf.autograph.experimental.do_not_convert
def odeint_event(
    func, y0, t0, event_fn, *, t_max=None, direction=0, gradient="adjoint", variables=None,
    method="dopri5", rtol=1e-3, atol=1e-6, first_step=None, max_num_steps=10_000,
    batch_axis=None, return_stats=False, jit_compile="auto", name=None,
):
    """Solve `dy/dt = func(t, y)` from `t0` until `event_fn(t, y)` crosses zero.

    Args:
        func, y0, method, rtol, atol, first_step, max_num_steps,
            jit_compile, name: as for `keras_node.odeint` (adaptive methods
            only: the root is found on their dense output).
        t0: start time: a scalar, or per sample `(batch,)` with `batch_axis=0`.
        event_fn: `event_fn(t, y)` returning one event value (a scalar; per
            sample, shape `(batch,)`) or k of them (shape `(k,)`; per sample
            `(batch, k)`). The first root of any of them ends the solve.
        t_max: optional end time (scalar or per sample). No event before it
            returns `(t_max, y(t_max))` with `stats["event_index"] = -1`.
            Without it, no event within `max_num_steps` is a failed solve.
            `t_max < t0` integrates backward in time.
        direction: +1 counts only crossings from negative to non-negative
            (along the solve), -1 only from positive to non-positive, 0 both.
            Starting exactly on zero is no crossing.
        gradient: `"adjoint"` (constant memory) or `"backprop"`: how the
            state at the event is differentiated.
        variables: the trainable variables `func` reads, for the adjoint
            (as for `keras_node.odeint_adjoint`); `event_fn`'s variables get
            gradients in either mode.
        batch_axis: `0` for a batch of independent problems, each stopping
            at its own event (per-sample steps, as for `keras_node.odeint`).
        return_stats: also return the search's stats: nfe, num_steps,
            num_rejected, status (per sample with `batch_axis=0`) and
            `event_index` (which event function fired, -1 for none).

    The root is located to float precision on the dense output of the step
    that brackets it, with no extra evaluations of `func`. The state there
    comes from a second solve to the event time, which carries the gradient
    (about as many evaluations again).

    Returns:
        `(t_event, y_event)`, or `(t_event, y_event, stats)`. Gradients flow
        to `y0`, `t0`, `t_max` (where no event fired) and the variables of
        `func` and `event_fn`, exactly for the event condition (implicit
        function theorem).

    Raises:
        ValueError / TypeError: bad arguments, or an `event_fn` result of
            the wrong shape.
        tf.errors.InvalidArgumentError: a failed solve (NaN under XLA).

    Example:

    >>> def fall(t, y):                 # height, velocity
    ...     return tf.stack([y[1], -9.8])
    >>> def ground(t, y):
    ...     return y[0]
    >>> t_hit, y_hit = keras_node.odeint_event(
    ...     fall, tf.constant([10.0, 0.0]), 0.0, ground, direction=-1)
    """
    options = SolverOptions.of(method=method, rtol=rtol, atol=atol, first_step=first_step,
                            max_num_steps=max_num_steps, jit_compile=jit_compile,
                            batch_axis=batch_axis)
    settings = _settings(func, event_fn, t_max, direction, gradient, options, name)
    check_bool(return_stats, "return_stats")
    per_sample = options.batch_axis == 0
    t0, t_max = _span_ends(t0, t_max, per_sample)
    # Without t_max the search runs to infinity (_search_core); t0 + 1 only
    # gives the problem its direction.
    end = t_max if t_max is not None else t0 + 1.0
    problem = _inputs.problem(y0, tf.stack([t0, end], axis=-1), options)
    jit = resolve_jit(options, func, problem, settings.where)
    core = functools.partial(_search_core, settings=settings)
    with record.stop_recording():
        t_found, index, stats, t_reached = _execution.run(func, settings.key(), core, problem, jit)
    t_found, = _status.guard([t_found], stats["status"], t_reached, settings.where,
                             options.max_num_steps, sample_axis=0)
    t_event, y_event = _state_at_event(func, y0, t0, t_found, index, t_max, variables, settings)
    stats["event_index"] = index
    return (t_event, y_event, stats) if return_stats else (t_event, y_event)


class _Settings:
    """One call's validated Python settings."""

    def __init__(self, options, event_fn, has_t_max, direction, gradient, where):
        self.options, self.event_fn, self.has_t_max = options, event_fn, has_t_max
        self.direction, self.gradient, self.where = direction, gradient, where

    def key(self):
        # The compiled search holds event_fn, so its id stays unique.
        return ("odeint_event", self.options.key(), id(self.event_fn), self.has_t_max,
                self.direction, self.where)


def _settings(func, event_fn, t_max, direction, gradient, options, name):
    check_callable(func)
    if not callable(event_fn):
        raise TypeError("event_fn must be callable as event_fn(t, y) -> event values. "
                        f"Received: event_fn={short_repr(event_fn)}")
    if isinstance(direction, bool) or not isinstance(direction, int):
        raise TypeError(f"direction must be -1, 0 or 1. Received: direction={short_repr(direction)} "
                        f"of type {type(direction).__name__}")
    if direction not in (-1, 0, 1):
        raise ValueError(f"direction must be -1, 0 or 1. Received: direction={direction}")
    check_choice(gradient, "gradient", ("adjoint", "backprop"))
    if not options.tableau.adaptive:
        raise ValueError("odeint_event needs an adaptive method (the event is located on its dense "
                         f"output). Received: method={options.method!r}")
    return _Settings(options, event_fn, t_max is not None, direction, gradient,
                     where_label("odeint_event", name))


def _span_ends(t0, t_max, per_sample):
    """`t0` and `t_max` as tensors: scalars, or per sample (batch,) ones."""
    def convert(value, name):
        tensor = convert_times(value, name)
        allowed = (0, 1) if per_sample else (0,)
        if tensor.shape.rank not in allowed:
            expected = "a scalar or a vector (batch,)" if per_sample else "a scalar"
            raise ValueError(f"{name} must be {expected}. Received: {name} with shape {tensor.shape}")
        return tensor

    t0 = convert(t0, "t0")
    if t_max is None:
        return t0, None
    t_max = convert(t_max, "t_max")
    dtype = t0.dtype if t0.dtype.is_floating else t_max.dtype
    t0, t_max = tf.cast(t0, dtype), tf.cast(t_max, dtype)
    if t0.shape.rank != t_max.shape.rank:
        t0, t_max = t0 + tf.zeros_like(t_max), t_max + tf.zeros_like(t0)
    return t0, t_max


def _search_core(func, problem, settings):
    """The search (a core of `_execution.run`): event time (user time),
    event index, stats and time reached."""
    options = settings.options
    sign, tau, initial_status = direction_and_tau(problem)
    if not settings.has_t_max:
        infinity = tf.constant(float("inf"), tau.dtype)
        tau = tf.concat([tau[..., :1], tf.fill(tf.shape(tau[..., 1:]), infinity)], -1)
    controls = Controls(tableau=options.tableau, rtol=problem.rtol, atol=problem.atol,
                        max_num_steps=options.max_num_steps, first_step=problem.first_step)
    func = _inputs.normalized_func(func, problem.y0, sign)
    event_fn = _normalized_event_fn(settings.event_fn, problem.y0, sign, options.batch_axis == 0)
    leaves = problem.leaves
    if options.batch_axis == 0:
        if tau.shape.rank == 1:
            tau = tf.broadcast_to(tau, tf.concat([tf.shape(leaves[0])[:1], [2]], 0))
    else:  # a joint solve is a batch of one
        func, event_fn = _batch_of_one(func), _batch_of_one(event_fn)
        leaves, tau = tuple(y[None] for y in leaves), tau[None]
    found = event_search.search(func, event_fn, leaves, tau, controls, settings.direction,
                                initial_status)
    stats = {"nfe": found.nfe, "num_steps": found.num_steps, "num_rejected": found.num_rejected,
             "status": found.status}
    t_event, t_reached = to_user_time(found.t, sign), to_user_time(found.t_reached, sign)
    index = found.event_index
    if options.batch_axis != 0:
        t_event, index, t_reached = t_event[0], index[0], t_reached[0]
        stats = {k: v if k == "nfe" else v[0] for k, v in stats.items()}
    return t_event, index, stats, t_reached


def _batch_of_one(fn):
    """`fn(tau, leaves)` of a joint problem as a per-sample one of batch 1."""
    def wrapped(tau, leaves):
        out = fn(tau[0], tuple(y[0] for y in leaves))
        return tf.nest.map_structure(lambda v: v[None], out)
    return wrapped


def _normalized_event_fn(event_fn, structure, sign, per_sample):
    """`event_fn(tau, leaves) -> (k,)` per problem (`(batch, k)` per sample),
    in the solve dtype; the shape is checked once, while tracing."""
    def wrapped(tau, leaves):
        t = tau if _inputs.is_plus_one(sign) else tau * sign
        with tf.name_scope("event_fn"):
            g = tf.convert_to_tensor(event_fn(t, tf.nest.pack_sequence_as(structure, list(leaves))))
        return tf.cast(_as_event_matrix(g, leaves[0], per_sample), leaves[0].dtype)
    return wrapped


def _as_event_matrix(g, first_leaf, per_sample):
    rank = g.shape.rank
    batch = first_leaf.shape[0] if per_sample else None
    ok_rank = rank in ((1, 2) if per_sample else (0, 1))
    ok_batch = not per_sample or batch is None or g.shape[0] is None or g.shape[0] == batch
    if not (ok_rank and ok_batch):
        expected = (f"(batch,) or (batch, k) with batch = {batch}" if per_sample
                    else "a scalar or a vector (k,) of event values")
        raise ValueError(f"event_fn(t, y) must return {expected}. Received: shape {g.shape}")
    if per_sample:
        return g if rank == 2 else g[:, None]
    return tf.reshape(g, [-1])


def _state_at_event(func, y0, t0, t_found, index, t_max, variables, settings):
    """`(t_event, y_event)` with gradients: the state from a solve to the
    (constant) event time, plus the implicit function theorem's term for
    the time, whose value is zero."""
    options = settings.options
    per_sample = options.batch_axis == 0
    found = index >= 0
    t_stop = tf.stop_gradient(t_found)
    t_end = t_stop if t_max is None else tf.where(found, t_stop, tf.cast(t_max, t_stop.dtype))
    grid = tf.stack([tf.cast(t0, t_end.dtype) + tf.zeros_like(t_end), t_end], axis=-1)
    if settings.gradient == "adjoint":
        ys, _ = solve_adjoint(func, y0, grid, options, AdjointOptions(), variables=variables,
                              name=settings.where)
    else:
        ys, _ = solve(func, y0, grid, options, name=settings.where)
    y_end = [y[-1] for y in tf.nest.flatten(ys)]
    fired = tf.maximum(index, 0)

    def fired_value(y):  # the value of the event function that fired
        g = tf.convert_to_tensor(settings.event_fn(t_stop, tf.nest.pack_sequence_as(ys, y)))
        g = tf.cast(_as_event_matrix(g, y[0], per_sample), t_stop.dtype)
        return tf.gather(g, fired, batch_dims=1) if per_sample else tf.gather(g, fired)

    # d/dt of the fired event function along the solution, at the event.
    y_stop = [tf.stop_gradient(y) for y in y_end]
    with tf.GradientTape() as tape:
        tape.watch([t_stop] + y_stop)
        total = tf.reduce_sum(fired_value(y_stop))
    g_t, *g_y = tape.gradient(total, [t_stop] + y_stop,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
    f = [tf.stop_gradient(tf.cast(v, y.dtype)) for v, y in
         zip(tf.nest.flatten(func(t_stop, tf.nest.pack_sequence_as(ys, y_stop))), y_stop)]
    rate = g_t + tf.add_n([_sum_per_problem(a * b, per_sample) for a, b in zip(g_y, f)])
    rate = tf.stop_gradient(tf.where(found, rate, tf.ones_like(rate)))
    shift = -fired_value(y_end) / rate
    shift = tf.where(found, shift - tf.stop_gradient(shift), tf.zeros_like(shift))
    y_event = [y + (_nest.per_sample(shift, y) if per_sample else shift) * tf.cast(v, y.dtype)
               for y, v in zip(y_end, f)]
    return t_end + shift, tf.nest.pack_sequence_as(ys, y_event)


def _sum_per_problem(x, per_sample):
    if not per_sample:
        return tf.reduce_sum(x)
    return tf.reduce_sum(tf.reshape(x, [tf.shape(x)[0], -1]), axis=1)
