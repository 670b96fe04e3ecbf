"""`keras_node.odeint_event`: solve until an event function crosses zero.

One solve. The search (`solvers/events.py`; `_event_cores.py` runs it)
steps until an event function changes sign, locates the root on the step's
dense output and returns the state there. Its gradient at the (constant)
event time is, as `gradient=` says, the adjoint's (the search is the
forward pass of `odeint_adjoint`'s custom gradient and records states for
the backward pass to re-anchor at) or backprop through the search's loop.
The event time's own gradient comes from the implicit function theorem:
with g(t*, y(t*)) = 0, dt* = -(dg/dy . dy + dg/dtheta) / (dg/dt + dg/dy . f),
added as a term whose value is zero.
"""

import functools

import tensorflow as tf

from keras_node import _event_cores
from keras_node import _execution
from keras_node import _inputs
from keras_node import _nest
from keras_node import _status
from keras_node._times import convert_times
from keras_node._validate import check_bool, check_choice, short_repr
from keras_node.adjoint import solve_adjoint
from keras_node.odeint import check_callable, jit_for_backprop, resolve_jit, where_label
from keras_node.options import AdjointOptions, SolverOptions

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
    that brackets it, and the state there is that dense output's value: no
    evaluations of `func` beyond the search's steps (and one at the event,
    for the time's gradient).

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
    t0, t_max = _span_ends(t0, t_max, options.batch_axis == 0)
    # The grid's end gives the direction and the span. Without t_max the
    # search runs to infinity (_search); t0 + 1 only gives the direction.
    # The end carries no gradient here: t_max's is added in _with_time_terms.
    end = t_max if t_max is not None else t0 + 1.0
    grid = tf.stack([t0, tf.stop_gradient(end)], axis=-1)
    if settings.gradient == "adjoint":
        forward_core = functools.partial(_event_cores.adjoint_forward_core, event=settings)
        ys, stats = solve_adjoint(func, y0, grid, options, AdjointOptions(), variables=variables,
                                  name=settings.where,
                                  forward=(forward_core, settings.key()))
        y_event = [y[-1] for y in tf.nest.flatten(ys)]  # guarded by the adjoint already
        t_found, index = stats.pop("event_t"), stats.pop("event_index")
        t_found, = _status.guard([t_found], stats["status"], stats.pop("t_reached"),
                                 settings.where, options.max_num_steps, sample_axis=0)
        structure = ys
    else:
        problem = _inputs.problem(y0, grid, options)
        xla_works = resolve_jit(options, func, problem, settings.where)
        jit = jit_for_backprop(xla_works, options, settings.where)
        # Outside XLA (a tape records), the root search alone can still use it.
        core = functools.partial(_event_cores.backprop_core, settings=settings,
                                 compile_root_search=bool(xla_works) and not jit)
        t_found, index, stats, t_reached, y_event = _execution.run(func, settings.key(), core,
                                                                   problem, jit)
        t_found, *y_event = _status.guard([t_found] + y_event, stats["status"], t_reached,
                                          settings.where, options.max_num_steps, sample_axis=0)
        y_event = [tf.cast(y, problem.dtype) for y in y_event]
        structure = problem.y0
    t_event, y_event = _with_time_terms(func, t_found, y_event, index, t_max, structure, settings)
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
                self.direction, self.gradient, self.where)


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


def _with_time_terms(func, t_found, y_end, index, t_max, structure, settings):
    """`(t_event, y_event)` from the search's results, with the gradient of
    the end time: the implicit function theorem's where an event fired,
    t_max's where none did (y_end's gradient holds the end time constant).
    Both are terms whose value is zero."""
    per_sample = settings.options.batch_axis == 0
    found = index >= 0
    t_stop = tf.stop_gradient(t_found)
    fired = tf.maximum(index, 0)

    def fired_value(y):  # the value of the event function that fired
        g = tf.convert_to_tensor(settings.event_fn(t_stop, tf.nest.pack_sequence_as(structure, y)))
        g = tf.cast(_event_cores.as_event_matrix(g, y[0], per_sample), t_stop.dtype)
        return tf.gather(g, fired, batch_dims=1) if per_sample else tf.gather(g, fired)

    # d/dt of the fired event function along the solution, at the event.
    y_stop = [tf.stop_gradient(y) for y in y_end]
    with tf.GradientTape() as tape:
        tape.watch([t_stop] + y_stop)
        total = tf.reduce_sum(fired_value(y_stop))
    g_t, *g_y = tape.gradient(total, [t_stop] + y_stop,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
    f = [tf.stop_gradient(tf.cast(v, y.dtype)) for v, y in
         zip(tf.nest.flatten(func(t_stop, tf.nest.pack_sequence_as(structure, y_stop))), y_stop)]
    rate = g_t + tf.add_n([_sum_per_problem(a * b, per_sample) for a, b in zip(g_y, f)])
    rate = tf.stop_gradient(tf.where(found, rate, tf.ones_like(rate)))
    shift = -fired_value(y_end) / rate
    shift = tf.where(found, shift - tf.stop_gradient(shift), tf.zeros_like(shift))
    if t_max is not None:
        t_max = tf.cast(t_max, t_stop.dtype)
        shift += tf.where(found, tf.zeros_like(shift), t_max - tf.stop_gradient(t_max))
    y_event = [y + (_nest.per_sample(shift, y) if per_sample else shift) * tf.cast(v, y.dtype)
               for y, v in zip(y_end, f)]
    return t_stop + shift, tf.nest.pack_sequence_as(structure, y_event)


def _sum_per_problem(x, per_sample):
    if not per_sample:
        return tf.reduce_sum(x)
    return tf.reduce_sum(tf.reshape(x, [tf.shape(x)[0], -1]), axis=1)
