"""Counters of the adjoint's backward solve, readable after a gradient."""

import keras
import tensorflow as tf

COUNTER_NAMES = ("nfe", "num_steps", "num_rejected", "status")


class AdjointStats:
    """Counters of the last backward (adjoint) solve, readable after a gradient.

    Pass one as `odeint_adjoint(..., backward_stats=stats)`; after
    `tape.gradient(...)` its int32 variables `nfe`, `num_steps`,
    `num_rejected` and `status` hold the backward solve's counts. Create it
    outside `tf.function` (it owns variables).

    Example:

    >>> stats = keras_node.AdjointStats()
    >>> with tf.GradientTape() as tape:
    ...     tape.watch(y0)
    ...     ys = keras_node.odeint_adjoint(f, y0, t, backward_stats=stats)
    >>> grad = tape.gradient(tf.reduce_sum(ys[-1]), y0)
    >>> int(stats.nfe)
    """

    def __init__(self):
        with tf.init_scope():
            for name in COUNTER_NAMES:
                setattr(self, name, tf.Variable(0, dtype=tf.int32, trainable=False,
                                                name=f"{name}_backward"))

    def as_dict(self):
        """The counters as a dict of int32 scalar tensors."""
        return {name: tf.convert_to_tensor(getattr(self, name)) for name in COUNTER_NAMES}


def check_stats(stats):
    """`backward_stats` must be None or have the four counter variables."""
    if stats is not None and not all(hasattr(stats, name) for name in COUNTER_NAMES):
        raise TypeError(
            "backward_stats must be a keras_node.AdjointStats (or have nfe, num_steps, "
            f"num_rejected and status variables). Received: backward_stats of type "
            f"{type(stats).__name__}"
        )
    return stats


def record(stats, flat, counts, status):
    """Assign the backward counts to `stats` (if any) whenever `flat` is used."""
    if stats is None:
        return flat
    values = (counts[0], counts[1], counts[2], status)
    return assign_then([(getattr(stats, n), v) for n, v in zip(COUNTER_NAMES, values)], flat)


def _assign(variable, value):
    """Assign and return the update op: a Keras variable's backend variable
    when it has one. While Keras traces a model symbolically to build it,
    `value` is a plain tensor: then Keras' own `assign` records the value."""
    backend = variable.value if isinstance(variable, keras.Variable) else variable
    if not hasattr(backend, "assign"):
        return variable.assign(value)
    return backend.assign(value)


def assign_then(assignments, outputs):
    """`outputs` (a list of tensors), after `variable.assign(value)` for
    each pair in `assignments` (tf or Keras variables).

    The outputs carry control dependencies on the assignments, so a graph
    that uses them runs the assignments too, even one without automatic
    control dependencies (the graph TensorFlow builds for a gradient). A
    Keras variable's `assign` returns the value rather than the update, so
    the update of its backend variable is the one depended on.
    """
    updates = [_assign(variable, value) for variable, value in assignments]
    if tf.executing_eagerly():
        return list(outputs)
    with tf.control_dependencies(updates):
        return [tf.identity(x) for x in outputs]
