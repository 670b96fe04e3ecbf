"""Hand-checkable sublayers for the time-series layer tests."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_node_tests")
class ConstantField(keras.layers.Layer):
    """A NeuralCDE vector field that ignores z: the matrix M, so that
    z(T) = z(t0) + M (X(T) - X(t0)) exactly."""

    def __init__(self, hidden_size, channels, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size, self.channels = hidden_size, channels

    def build(self, input_shape):
        self.matrix = self.add_weight(shape=(self.hidden_size, self.channels),
                                      initializer="random_normal", name="matrix")

    def call(self, z):
        return tf.broadcast_to(self.matrix, (tf.shape(z)[0], self.hidden_size, self.channels))

    def get_config(self):
        return dict(super().get_config(), hidden_size=self.hidden_size, channels=self.channels)


def mlp_field(hidden_size, channels, width=16, dtype=None):
    """A small trainable NeuralCDE vector field."""
    return keras.Sequential([
        keras.layers.Dense(width, activation="softplus", dtype=dtype),
        keras.layers.Dense(hidden_size * channels, activation="tanh", dtype=dtype),
        keras.layers.Reshape((hidden_size, channels), dtype=dtype),
    ])


@keras.saving.register_keras_serializable(package="keras_node_tests")
class Decay(keras.layers.Layer):
    """dh/dt = -rate * h, rate a weight: between observations h decays by
    exp(-rate * gap)."""

    def __init__(self, rate=0.7, **kwargs):
        super().__init__(**kwargs)
        self.initial_rate = rate

    def build(self, input_shape):
        self.rate = self.add_weight(shape=(), name="rate",
                                    initializer=keras.initializers.Constant(self.initial_rate))

    def call(self, h):
        return -self.rate * h

    def get_config(self):
        return dict(super().get_config(), rate=self.initial_rate)


@keras.saving.register_keras_serializable(package="keras_node_tests")
class Zero(keras.layers.Layer):
    """dh/dt = 0."""

    def call(self, h):
        return tf.zeros_like(h)
