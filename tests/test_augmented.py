"""`ODELayer(augment_dim=k)` (Dupont et al. 2019): k zero channels appended
on the last axis and kept in the output; Dupont's g(x) = -x, which no 1-D
flow can fit (its maps are increasing) and an augmented one can."""

import keras
import numpy as np
import pytest

import keras_node


@pytest.mark.parametrize("return_sequences", [False, True])
def test_zero_channels_appended_and_kept(return_sequences):
    x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    # The MLP starts as the zero field: the output is the augmented input.
    layer = keras_node.ODELayer(keras_node.dynamics.MLP(units=(4,)), augment_dim=2,
                                t=(0.0, 0.5, 1.0), return_sequences=return_sequences)
    y = layer(x).numpy()
    expected = np.concatenate([x, np.zeros((5, 2), "float32")], -1)
    final = y[:, -1] if return_sequences else y
    np.testing.assert_array_equal(final, expected)
    assert tuple(layer.compute_output_shape((None, 3))) == (
        (None, 3, 5) if return_sequences else (None, 5))
    assert tuple(layer(keras.Input((3,))).shape) == ((None, 3, 5) if return_sequences else (None, 5))
    config = layer.get_config()
    assert config["augment_dim"] == 2
    rebuilt = keras_node.ODELayer.from_config(config)
    assert rebuilt.get_config() == config


def test_augmented_channels_evolve():
    x = np.ones((2, 1), "float32")
    layer = keras_node.ODELayer(keras_node.dynamics.MLP(units=(4,), final_initializer="ones"),
                                augment_dim=1)
    assert np.all(layer(x).numpy()[:, 1] != 0.0)  # the dynamics see and move the extra channel


def _fit_negation(augment_dim, epochs):
    """Train x -> -x on [-1, 1] with the flow's first channel as the output."""
    keras.utils.set_random_seed(0)
    x = np.linspace(-1, 1, 32).astype("float32")[:, None]
    layer = keras_node.ODELayer(keras_node.dynamics.MLP(units=(16,), time_dependent=False),
                                augment_dim=augment_dim, atol=1e-4, gradient="backprop")
    inputs = keras.Input((1,))
    model = keras.Model(inputs, layer(inputs)[:, :1])
    model.compile(keras.optimizers.Adam(0.03), "mse")
    return model.fit(x, -x, epochs=epochs, batch_size=32, verbose=0).history["loss"][-1], x


def test_dupont_negation_needs_augmentation():
    plain, x = _fit_negation(0, epochs=40)
    augmented, _ = _fit_negation(1, epochs=40)
    # An increasing map phi has mean (phi(x) + x)^2 >= mean x^2 on this
    # symmetric grid (the isotonic fit of -x is the constant 0).
    bound = float(np.mean(x**2))
    assert plain > 0.99 * bound
    assert augmented < 0.1 * bound
