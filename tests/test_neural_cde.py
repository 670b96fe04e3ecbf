"""`keras_node.NeuralCDE`: the closed form of a constant vector field, the
adjoint against backprop, serialization and training.

Tolerance: the solves run at rtol 1e-9 / atol 1e-10 in float64; the closed
form is then met to 1e-6 (the acceptance bound), well above the solver's
error (~1e-7 here: dX/dt has kinks at the knots).
"""

import numpy as np
import pytest
import keras
import tensorflow as tf

import keras_node
from series_fields import ConstantField, mlp_field

TIGHT = dict(rtol=1e-9, atol=1e-10)


@pytest.fixture(autouse=True)
def _keras_seed():
    """Fixed initial weights: the solver's error (and the training curve)
    depend on them."""
    keras.utils.set_random_seed(0)


def _series(batch=4, n=6, channels=2, seed=0, per_sample=True):
    """Gaps of 0.3 to 0.8 between observations: an interpolating spline
    through O(1) noise at nearly equal times would have huge slopes."""
    rng = np.random.default_rng(seed)
    shape = (batch, n) if per_sample else (n,)
    times = np.cumsum(rng.uniform(0.3, 0.8, size=shape), axis=-1)
    return times, rng.normal(size=(batch, n, channels))


@pytest.mark.parametrize("per_sample", [False, True], ids=["shared_times", "per_sample_times"])
@pytest.mark.parametrize("gradient", ["adjoint", "backprop"])
def test_constant_field_closed_form(per_sample, gradient):
    """z(t_i) = z(t0) + M (X(t_i) - X(t0)), at every observation time."""
    times, values = _series(per_sample=per_sample)
    layer = keras_node.NeuralCDE(ConstantField(3, 2), 3, return_sequences=True, dtype="float64",
                                 gradient=gradient, **TIGHT)
    zs = layer([values, times]).numpy()
    matrix = layer.vector_field.matrix.numpy()
    z0 = layer.initial(values[:, 0]).numpy()
    expected = z0[:, None, :] + (values - values[:, :1]) @ matrix.T
    np.testing.assert_allclose(zs, expected, atol=1e-6, rtol=0)
    assert not np.allclose(zs[:, -1], z0, atol=1e-3)


def test_missing_values_give_finite_states():
    times, values = _series()
    values[0, 2:4, 1] = np.nan
    values[1, 0, 0] = np.nan
    layer = keras_node.NeuralCDE(mlp_field(3, 2, dtype="float64"), 3, dtype="float64")
    assert np.all(np.isfinite(layer([values, times])))


def test_adjoint_gradients_match_backprop():
    """dL/d(vector field, initial map) by the adjoint and by backprop agree
    (float64, tight tolerances: both approximate the exact gradient to
    ~1e-7)."""
    times, values = _series(batch=3, n=4, per_sample=False)
    field = mlp_field(3, 2, dtype="float64")
    adjoint = keras_node.NeuralCDE(field, 3, dtype="float64", **TIGHT)
    backprop = keras_node.NeuralCDE(field, 3, dtype="float64", gradient="backprop", **TIGHT)
    adjoint([values, times])
    backprop([values, times])
    backprop.initial.set_weights(adjoint.initial.get_weights())
    grads = []
    for layer in (adjoint, backprop):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.sin(layer([values, times])))
        grads.append(tape.gradient(loss, layer.trainable_variables))
    assert len(grads[0]) == len(field.trainable_variables) + 2
    for a, b in zip(*grads):
        assert np.max(np.abs(b)) > 1e-3
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_jit_compile():
    times, values = _series(per_sample=True)
    layer = keras_node.NeuralCDE(ConstantField(3, 2), 3, dtype="float64", jit_compile=True, **TIGHT)
    z = layer([values, times]).numpy()
    z0 = layer.initial(values[:, 0]).numpy()
    np.testing.assert_allclose(z, z0 + (values[:, -1] - values[:, 0]) @ layer.vector_field.matrix.numpy().T,
                               atol=1e-6)


def _model(n=6, channels=2, hidden=3, **layer_kwargs):
    values, times = keras.Input((n, channels)), keras.Input((n,))
    z = keras_node.NeuralCDE(mlp_field(hidden, channels), hidden, **layer_kwargs)([values, times])
    return keras.Model([values, times], keras.layers.Dense(1)(z))


def test_keras_round_trip_and_export(tmp_path):
    times, values = _series()
    # Fixed steps: the exported graph rounds differently from predict's,
    # which could flip an adaptive step decision (a difference at the
    # solver's tolerance); with rk4 only roundoff differs.
    model = _model(method="rk4", step_size=0.25)
    inputs = [values.astype("float32"), times.astype("float32")]
    before = model.predict(inputs, verbose=0)
    model.save(tmp_path / "cde.keras")
    loaded = keras.models.load_model(tmp_path / "cde.keras")
    np.testing.assert_array_equal(loaded.predict(inputs, verbose=0), before)
    model.export(str(tmp_path / "saved"), verbose=False)  # SavedModel for serving
    restored = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(restored.serve(inputs), before, atol=1e-6)
    layer = [x for x in loaded.layers if isinstance(x, keras_node.NeuralCDE)][0]
    assert layer.settings.options.method == "rk4" and layer.settings.options.step_size == 0.25


def test_fit_lowers_the_loss():
    """Learn the sign of X(T) - X(t0) in channel 0 (a CDE's natural target)."""
    times, values = _series(batch=32, seed=3)
    target = (values[:, -1, :1] > values[:, 0, :1]).astype("float32")
    model = _model()
    model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
    history = model.fit([values.astype("float32"), times.astype("float32")], target, epochs=4,
                        batch_size=16, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.parametrize("make, error, match", [
    (lambda: keras_node.NeuralCDE("mlp", 3), TypeError, "vector_field must be a Keras layer"),
    (lambda: keras_node.NeuralCDE(ConstantField(3, 2), 0), ValueError, "hidden_size"),
    (lambda: keras_node.NeuralCDE(ConstantField(3, 2), 3, gradient="exact"), ValueError, "gradient"),
    (lambda: keras_node.NeuralCDE(ConstantField(3, 2), 3, method="rk5"), ValueError, "method"),
], ids=["field_type", "hidden_size", "gradient", "method"])
def test_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_inputs():
    times, values = _series()
    with pytest.raises(ValueError, match=r"takes inputs \(values, times\)"):
        keras_node.NeuralCDE(ConstantField(3, 2), 3)(values)
    with pytest.raises(ValueError, match=r"\(batch, 3, 2\)"):
        keras_node.NeuralCDE(ConstantField(4, 2), 3)([values, times])

