"""Keras layers of keras_node."""

from keras_node.layers.ode_layer import ODELayer as ODELayer

__all__ = ["ODELayer"]
