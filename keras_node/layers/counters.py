"""The solver counters of an `ODELayer`, kept as non-trainable Keras weights."""

import tensorflow as tf
# Private, because no public API tells whether a gradient tape is recording.
from tensorflow.python.eager import record

from keras_node.adjoint.stats import assign_then


class Counters:
    """The layer's solver counters: non-trainable int32 Keras variables.

    `backward` quacks like `keras_node.AdjointStats`, so the adjoint's
    backward pass writes its counts straight into the layer.
    """

    def __init__(self, layer):
        def counter(name):
            return layer.add_weight(
                shape=(), dtype="int32", initializer="zeros", trainable=False,
                aggregation="only_first_replica", name=name,
            )

        self.nfe_forward = counter("nfe_forward")
        self.nfe_backward = counter("nfe_backward")
        self.backward = BackwardCounters(self.nfe_backward, counter("num_steps_backward"),
                                          counter("num_rejected_backward"), counter("status_backward"))

    def record_forward(self, ys, stats):
        """`ys`, once the forward solve's `nfe` is stored. A call no
        gradient tape records (inference: `predict`, `evaluate`, validation)
        has no backward solve: its `nfe_backward` is 0, not the last
        training step's count."""
        assignments = [(self.nfe_forward, stats["nfe"])]
        if not record.could_possibly_record():
            assignments.append((self.nfe_backward, tf.constant(0, tf.int32)))
        return assign_then(assignments, [ys])[0]


class BackwardCounters:
    """The backward solve's counters, with `AdjointStats`' attribute names."""

    def __init__(self, nfe, num_steps, num_rejected, status):
        self.nfe, self.num_steps, self.num_rejected, self.status = nfe, num_steps, num_rejected, status
