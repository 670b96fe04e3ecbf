"""What `ODELayer` and `CNF` add around a solve: augmentation, regularisers'
states, losses and metrics (the integrals themselves: `regularizers.py`)."""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from keras_node.divergence import rademacher


def augment(inputs, augment_dim):
    """`inputs` with `augment_dim` zero channels appended on the last axis
    (Dupont et al. 2019)."""
    if augment_dim == 0:
        return inputs
    zeros = tf.zeros(tf.concat([tf.shape(inputs)[:-1], [augment_dim]], 0), inputs.dtype)
    return tf.concat([inputs, zeros], -1)


def augmented_shape(shape, augment_dim):
    """The shape of `augment(inputs)` for inputs of `shape`."""
    shape = tuple(shape)
    if augment_dim == 0 or shape[-1] is None:
        return shape
    return shape[:-1] + (shape[-1] + augment_dim,)


def time_direction(times, dtype):
    """+1 or -1 (per sample for a grid per row): the sign of `t[-1] - t[0]`,
    which turns integrals in solver time into integrals over |dt|."""
    times = tf.convert_to_tensor(times)
    return tf.cast(tf.sign(times[..., -1] - times[..., 0]), dtype)


def solve_options(options, layout):
    """`options` for a solve of `layout`'s state: only h (and a
    log-density) under error control. A tolerance that is not one number
    (per component of h) is given per leaf, the other leaves getting its
    minimum (it must not be broadcast onto their `(batch,)` shape)."""
    changes = {"norm_leaves": layout.norm_leaves}
    for name in ("rtol", "atol"):
        value = getattr(options, name)
        if isinstance(value, float):
            continue
        if isinstance(value, (list, tuple)):  # one array, not a nest of numbers
            value = np.asarray(value, np.float64)
        minimum = float(np.min(value)) if isinstance(value, np.ndarray) else tf.reduce_min(value)
        changes[name] = (value,) + (minimum,) * (layout.num_leaves - 1)
    return dataclasses.replace(options, **changes)


class Regularization:
    """A layer's regularisers: the probe, the metrics and the losses.

    Args:
        layer: the owning layer (it tracks the metrics and seed generator
            created here as its attributes).
        weights: `{term: weight}` (validated, `ModelOptions.regularizers`).
        layout: the `regularizers.Layout` of the layer's solve.
    """

    def __init__(self, layer, weights, layout):
        self.weights, self.layout = dict(weights or {}), layout
        layer._reg_metrics = [keras.metrics.Mean(name=f"reg_{term}") for term in layout.terms]
        # Unseeded: drawn from Keras' global seed (keras.utils.set_random_seed).
        layer._probe_seed = keras.random.SeedGenerator() if layout.probe else None
        self.layer = layer

    def probe(self, h):
        """A Rademacher probe shaped like h, fresh per solve (None if unused)."""
        return rademacher(h, seed=self.layer._probe_seed) if self.layout.probe else None

    def report(self, integrals):
        """`add_loss(weight * batch mean)` and update the `reg_<term>`
        metric, for each term (the layer calls this in training only)."""
        for metric, term in zip(self.layer._reg_metrics, self.layout.terms):
            value = tf.reduce_mean(integrals[term])
            self.layer.add_loss(self.weights[term] * value)
            metric.update_state(value)
