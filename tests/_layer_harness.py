"""A `run_layer_test`-style checklist for ODELayer (STYLE.md C, "Layer harness").

Keras tests its own layers with `keras.src.testing.TestCase.run_layer_test`
(a private API). This re-implements the parts of its checklist that apply to
a layer wrapping a user layer, as small functions each test calls on its own,
so that a failure names the check:

- `check_eager_and_symbolic_call`: shape and dtype of an eager call and of
  `compute_output_shape`; the output is not the input (the dynamics are
  non-zero, so an identity map would hide wiring bugs); `keras.Input` with
  unknown and known batch size; a functional model on the layer computes
  what the eager call does.
- `check_build`: explicit `build` with unknown and known batch size, then
  calls with several batch sizes.
- `check_rows_independent_of_batch`: calls with different batch sizes in a
  row give each row the same result.
- `check_config_round_trip`: `get_config`/`from_config` and
  `serialize_keras_object`/`deserialize_keras_object` give equal configs
  and, after copying the weights, identical outputs.

Tolerances: computations that repeat the same operations (same weights, same
inputs, same batch) must agree exactly; an output computed on a different
batch may differ by the solver's error control, since the adaptive step is
chosen from a norm over the whole batch (tolerance policy of problems.py).
"""

import keras
import numpy as np

import keras_node
from problems import error_tolerance


def sample(shape, seed=0):
    """Deterministic float32 inputs of `shape`, O(1) in size."""
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def expected_output_shape(input_shape, num_times, return_sequences):
    if not return_sequences:
        return tuple(input_shape)
    return (input_shape[0], num_times) + tuple(input_shape[1:])


def batch_tolerance(layer):
    """Allowed difference between solves of the same rows in different batches."""
    return error_tolerance("float32", rtol=layer.options.rtol, atol=layer.options.atol,
                           span=abs(layer.t[-1] - layer.t[0]))


def check_eager_and_symbolic_call(make_layer, x, expected_shape):
    """Eager call, `compute_output_shape`, and symbolic calls on `keras.Input`."""
    layer = make_layer()
    y = layer(x)
    assert tuple(y.shape) == tuple(expected_shape)
    assert y.dtype == "float32"
    assert tuple(layer.compute_output_shape(x.shape)) == tuple(expected_shape)
    assert np.all(np.isfinite(y))
    final = np.asarray(y[:, -1] if layer.return_sequences else y)
    assert not np.allclose(final, x, atol=1e-3), "the layer acted as the identity map"
    if layer.return_sequences:
        # ys[0] equals y0 exactly (API.md), so the first time slice is the input.
        np.testing.assert_array_equal(np.asarray(y[:, 0]), x)

    # Symbolic call on the same (built) layer, batch size unknown: a
    # functional model on it computes what the eager call did.
    inputs = keras.Input(shape=x.shape[1:])
    outputs = layer(inputs)
    assert tuple(outputs.shape) == (None,) + tuple(expected_shape[1:])
    np.testing.assert_array_equal(np.asarray(keras.Model(inputs, outputs)(x)), np.asarray(y))

    # Symbolic calls on fresh (unbuilt) layers, batch size unknown and known.
    assert tuple(make_layer()(keras.Input(shape=x.shape[1:])).shape) == (None,) + tuple(expected_shape[1:])
    assert tuple(make_layer()(keras.Input(batch_shape=x.shape)).shape) == tuple(expected_shape)


def check_build(make_layer, x, expected_shape, batch_sizes):
    """`build` with unknown, then known, batch size; call with `batch_sizes`.

    After building with a known batch size the layer is called with the last
    of `batch_sizes` (a different one): building never fixes the batch size.
    """
    for build_shape, sizes in [((None,) + x.shape[1:], batch_sizes), (x.shape, batch_sizes[-1:])]:
        layer = make_layer()
        layer.build(build_shape)
        assert layer.built and layer.dynamics.built
        assert layer.trainable_weights, "build did not create the dynamics' weights"
        num_weights = len(layer.weights)
        for n in sizes:
            y = layer(x[:n])
            assert tuple(y.shape) == (n,) + tuple(expected_shape[1:])
        assert len(layer.weights) == num_weights, "calling the layer created new weights"


def check_rows_independent_of_batch(layer, x, sizes):
    """Calls with different batch sizes in a row solve each row the same way."""
    full = np.asarray(layer(x))
    tol = batch_tolerance(layer)
    for n in sizes:
        part = np.asarray(layer(x[:n]))
        assert part.shape == (n,) + full.shape[1:]
        np.testing.assert_allclose(part, full[:n], rtol=tol, atol=tol)


def check_config_round_trip(layer, x):
    """Equal configs after from_config and after (de)serialization; same outputs."""
    y = np.asarray(layer(x))
    config = layer.get_config()

    clone = keras_node.ODELayer.from_config(config)
    assert clone.get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is keras_node.ODELayer
    assert type(revived.dynamics) is type(layer.dynamics)
    assert revived.get_config() == config

    for copy in (clone, revived):
        copy(x)  # build (no-op if already built)
        copy.set_weights(layer.get_weights())
        np.testing.assert_array_equal(np.asarray(copy(x)), y)
    return config
