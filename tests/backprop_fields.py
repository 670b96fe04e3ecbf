"""The Keras-layer dynamics the backprop tests differentiate
(test_chunked_backprop.py, test_replay_backprop.py)."""

import keras
import numpy as np
import tensorflow as tf


class Field(keras.layers.Layer):
    """dy/dt = tanh(y W1 + b1 + t) W2 - scale y, float64, with a
    non-trainable scale (a variable read, never differentiated)."""

    def build(self, shape):
        dim = shape[-1]
        rng = np.random.default_rng(3)
        self.w1 = self.add_weight(shape=(dim, 8), initializer=keras.initializers.Constant(
            rng.normal(size=(dim, 8)) / np.sqrt(dim)), dtype="float64")
        self.b1 = self.add_weight(shape=(8,), initializer="zeros", dtype="float64")
        self.w2 = self.add_weight(shape=(8, dim), initializer=keras.initializers.Constant(
            rng.normal(size=(8, dim)) / np.sqrt(8)), dtype="float64")
        self.scale = self.add_weight(shape=(), initializer=keras.initializers.Constant(0.3),
                                     dtype="float64", trainable=False)

    def call(self, t, y):
        if t.shape.rank == 1:  # per-sample solves: a time per sample
            t = t[:, None]
        return tf.matmul(tf.tanh(tf.matmul(y, self.w1) + self.b1 + t), self.w2) - self.scale * y


def built_field(dim=3):
    """A built `Field` for states of `dim` components."""
    field = Field(dtype="float64")
    field.build((None, dim))
    return field
