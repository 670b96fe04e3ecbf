"""keras_node.dynamics: MLP and ConvBlock against API.md ("Ready-made dynamics").

These are plain Keras layers; the tests call them directly (no solver), so
they are fast: shapes, the hidden widths, time as an extra input, the
zero-initialised output (a fresh ODELayer is the identity map), config round
trips and argument validation.
"""

import keras
import numpy as np
import pytest

import keras_node
from keras_node.dynamics import MLP, ConvBlock


def _sample(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


# --- MLP -----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 3), (5, 4, 3), (2, 3, 4, 3)], ids=["rank2", "rank3", "rank4"])
def test_mlp_output_shape_equals_state_shape(shape):
    mlp = MLP(units=(8, 6), final_initializer="glorot_uniform")
    y = mlp(_sample(shape), t=0.3)
    assert tuple(y.shape) == shape
    assert tuple(mlp.compute_output_shape(shape)) == shape


@pytest.mark.parametrize("time_dependent", [True, False])
def test_mlp_hidden_widths_and_time_feature(time_dependent):
    mlp = MLP(units=(8, 6), time_dependent=time_dependent)
    mlp.build((None, 3))
    extra = 1 if time_dependent else 0
    kernels = [w for w in mlp.weights if w.path.endswith("kernel")]
    assert [tuple(k.shape) for k in kernels] == [(3 + extra, 8), (8 + extra, 6), (6, 3)]


def test_mlp_units_accepts_an_int():
    mlp = MLP(units=8)
    mlp.build((None, 3))
    assert mlp.units == (8,)
    assert [tuple(w.shape) for w in mlp.weights if w.path.endswith("kernel")] == [(4, 8), (8, 3)]


def test_mlp_defaults():
    mlp = MLP()
    assert mlp.units == (64, 64) and mlp.time_dependent
    assert keras.activations.serialize(mlp.activation) == "tanh"


def test_mlp_depends_on_time_only_when_time_dependent():
    x = _sample((4, 3))
    dependent = MLP(units=(8,), final_initializer="glorot_uniform")
    assert not np.allclose(dependent(x, t=0.0), dependent(x, t=1.0), atol=1e-4)
    independent = MLP(units=(8,), time_dependent=False, final_initializer="glorot_uniform")
    np.testing.assert_array_equal(independent(x, t=0.0), independent(x, t=1.0))


@pytest.mark.parametrize(
    "make, shape",
    [(lambda: MLP(units=(8,)), (6, 3)), (lambda: ConvBlock(filters=8, groups=4), (2, 6, 6, 4))],
    ids=["mlp", "conv_block"],
)
def test_default_dynamics_start_as_zero_field_and_identity_layer(make, shape):
    x = _sample(shape)
    dynamics = make()
    np.testing.assert_array_equal(np.asarray(dynamics(x, t=0.5)), np.zeros(shape, "float32"))
    layer = keras_node.ODELayer(make())
    np.testing.assert_array_equal(np.asarray(layer(x)), x)


@pytest.mark.parametrize(
    "kwargs", [{"units": ()}, {"units": (8, 0)}, {"units": (8, -1)}, {"units": (8.5,)}, {"units": "64"}],
    ids=["empty", "zero", "negative", "float", "string"],
)
def test_mlp_bad_units_raise(kwargs):
    with pytest.raises((ValueError, TypeError), match="units"):
        MLP(**kwargs)


def test_mlp_needs_known_last_dimension():
    with pytest.raises(ValueError, match="last dimension"):
        MLP(units=(8,)).build((None, None))


# --- ConvBlock --------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_conv_block_keeps_the_state_shape(channels):
    shape = (2, 6, 5, channels)
    block = ConvBlock(filters=8, kernel_size=3, final_initializer="glorot_uniform")
    y = block(_sample(shape), t=0.2)
    assert tuple(y.shape) == shape
    assert tuple(block.compute_output_shape(shape)) == shape


@pytest.mark.parametrize("time_dependent", [True, False])
def test_conv_block_filters_and_time_channel(time_dependent):
    block = ConvBlock(filters=8, kernel_size=5, time_dependent=time_dependent)
    block.build((None, 6, 6, 3))
    extra = 1 if time_dependent else 0
    assert tuple(block.conv_hidden.kernel.shape) == (5, 5, 3 + extra, 8)
    assert tuple(block.conv_out.kernel.shape) == (5, 5, 8 + extra, 3)


def test_conv_block_groups_divide_the_channels():
    block = ConvBlock(filters=12, groups=8)
    block.build((None, 4, 4, 6))
    assert 6 % block.norm_in.groups == 0 and 12 % block.norm_hidden.groups == 0
    assert block.norm_in.groups == 2 and block.norm_hidden.groups == 4


def test_conv_block_defaults():
    block = ConvBlock()
    assert block.filters == 64 and block.kernel_size == 3 and block.time_dependent


def test_conv_block_depends_on_time_only_when_time_dependent():
    x = _sample((2, 5, 5, 2))
    dependent = ConvBlock(filters=4, final_initializer="glorot_uniform")
    assert not np.allclose(dependent(x, t=0.0), dependent(x, t=1.0), atol=1e-4)
    independent = ConvBlock(filters=4, time_dependent=False, final_initializer="glorot_uniform")
    np.testing.assert_array_equal(independent(x, t=0.0), independent(x, t=1.0))


@pytest.mark.parametrize(
    "kwargs", [{"filters": 0}, {"filters": 2.5}, {"kernel_size": 0}, {"kernel_size": "3"}],
    ids=["zero_filters", "float_filters", "zero_kernel", "string_kernel"],
)
def test_conv_block_bad_arguments_raise(kwargs):
    (name,) = kwargs
    with pytest.raises((ValueError, TypeError), match=name):
        ConvBlock(**kwargs)


@pytest.mark.parametrize("shape", [(None, 8), (None, 4, 8), (None, 4, 4, None)], ids=["rank2", "rank3", "no_channels"])
def test_conv_block_rejects_non_images(shape):
    with pytest.raises(ValueError, match="images"):
        ConvBlock(filters=4).build(shape)


# --- serialization -------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: MLP(units=(8, 5), activation="softplus", time_dependent=False,
                     final_initializer="glorot_uniform", name="f"), (4, 3)),
        (lambda: ConvBlock(filters=6, kernel_size=5, groups=2, activation="tanh",
                           final_initializer="glorot_uniform", name="g"), (2, 6, 6, 4)),
    ],
    ids=["mlp", "conv_block"],
)
def test_config_round_trip(make, shape):
    x = _sample(shape)
    layer = make()
    y = np.asarray(layer(x, t=0.4))
    config = layer.get_config()
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is type(layer)
    assert revived.get_config() == config
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    for copy in (revived, clone):
        copy(x, t=0.4)
        copy.set_weights(layer.get_weights())
        np.testing.assert_array_equal(np.asarray(copy(x, t=0.4)), y)


def test_registered_under_keras_node_package():
    assert keras.saving.get_registered_name(MLP) == "keras_node>MLP"
    assert keras.saving.get_registered_name(ConvBlock) == "keras_node>ConvBlock"
