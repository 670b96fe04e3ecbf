"""Keras layers of keras_node."""

from keras_node.layers.ode_layer import ODELayer as ODELayer
from keras_node.layers.cde import NeuralCDE as NeuralCDE
from keras_node.layers.odernn import ODERNN as ODERNN

__all__ = ["NeuralCDE", "ODELayer", "ODERNN"]
