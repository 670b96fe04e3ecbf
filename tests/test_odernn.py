"""`keras_node.ODERNN` against `keras.layers.RNN` (zero dynamics), an exact
decay between observations, the adjoint against backprop, serialization and
training.

Tolerance: float64 solves at rtol 1e-10 / atol 1e-12 against exp(-r t):
1e-7; zero dynamics reproduce the RNN exactly up to float32 rounding
(acceptance bound 1e-5).
"""

import numpy as np
import pytest
import keras
import tensorflow as tf

import keras_node
from series_fields import Decay, Zero

TIGHT = dict(rtol=1e-10, atol=1e-12)


def _series(batch=3, n=5, channels=2, seed=0, per_sample=True, dtype="float64"):
    rng = np.random.default_rng(seed)
    shape = (batch, n) if per_sample else (n,)
    times = np.sort(rng.uniform(0.0, 3.0, size=shape), axis=-1).astype(dtype)
    mask = rng.uniform(size=(batch, n)) > 0.3
    return times, rng.normal(size=(batch, n, channels)).astype(dtype), mask


@pytest.mark.parametrize("per_sample, gradient", [(False, "backprop"), (True, "backprop"),
                                                  (True, "adjoint")],
                         ids=["shared_times", "per_sample_times", "per_sample_times_adjoint"])
def test_zero_dynamics_is_keras_rnn(per_sample, gradient):
    """Zero dynamics: the RNN itself, masked steps keeping the state."""
    times, values, mask = _series(per_sample=per_sample, dtype="float32")
    cell = keras.layers.GRUCell(4)
    layer = keras_node.ODERNN(cell, Zero(), return_sequences=True, gradient=gradient)
    got = layer([values, times, mask])
    expected = keras.layers.RNN(cell, return_sequences=True)(values, mask=mask)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert not np.allclose(got[:, -1], 0.0, atol=1e-3)


@pytest.mark.parametrize("gradient, backward", [("backprop", False), ("adjoint", False),
                                                ("backprop", True)],
                         ids=["backprop", "adjoint", "backward_in_time"])
def test_masked_steps_follow_the_dynamics(gradient, backward):
    """h decays by exp(-rate * gap) between observations and across masked
    ones (grows, for decreasing times); the cell updates only observed
    steps (reference: the closed form and the cell called step by step)."""
    times, values, mask = _series()
    if backward:  # a series read from its last observation to its first
        times = times[:, ::-1].copy()
    mask[:, 0] = [True, False, True]
    cell = keras.layers.SimpleRNNCell(3, dtype="float64")
    layer = keras_node.ODERNN(cell, Decay(0.7, dtype="float64"), return_sequences=True,
                              dtype="float64", gradient=gradient, **TIGHT)
    got = layer([values, times, mask]).numpy()
    h = np.zeros((3, 3))
    for i in range(values.shape[1]):
        if i:
            h = h * np.exp(-0.7 * (times[:, i] - times[:, i - 1]))[:, None]
        updated = cell(values[:, i], [h])[0].numpy()
        h = np.where(mask[:, i, None], updated, h)
        np.testing.assert_allclose(got[:, i], h, atol=1e-7, rtol=0)


def test_nan_at_masked_steps():
    """Masked observations may be NaN: outputs and gradients stay finite."""
    times, values, mask = _series(dtype="float32")
    mask[:, 2] = False
    values[:, 2] = np.nan
    layer = keras_node.ODERNN(keras.layers.GRUCell(3), Decay())
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer([values, times, mask]) ** 2)
    grads = tape.gradient(loss, layer.trainable_variables)
    assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads)


def test_adjoint_gradients_match_backprop():
    times, values, mask = _series(n=3)
    cell, dynamics = keras.layers.GRUCell(3, dtype="float64"), Decay(0.4, dtype="float64")
    grads = []
    for gradient in ("adjoint", "backprop"):
        layer = keras_node.ODERNN(cell, dynamics, dtype="float64", gradient=gradient, **TIGHT)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.sin(layer([values, times, mask])))
        grads.append(tape.gradient(loss, layer.trainable_variables))
    assert len(grads[0]) == len(cell.trainable_variables) + 1
    for a, b in zip(*grads):
        assert np.max(np.abs(b)) > 1e-4
        np.testing.assert_allclose(a, b, atol=1e-7, rtol=1e-6)


def test_jit_compile():
    """The per-interval solves under XLA inside the observation loop."""
    times, values, mask = _series()
    cell = keras.layers.SimpleRNNCell(3, dtype="float64")
    args = dict(return_sequences=True, dtype="float64", **TIGHT)
    plain = keras_node.ODERNN(cell, Decay(dtype="float64"), **args)([values, times, mask])
    xla = keras_node.ODERNN(cell, Decay(dtype="float64"), jit_compile=True, **args)(
        [values, times, mask])
    np.testing.assert_allclose(xla, plain, atol=1e-9)


def _model(n=5, channels=2, **layer_kwargs):
    values, times, mask = keras.Input((n, channels)), keras.Input((n,)), keras.Input((n,))
    h = keras_node.ODERNN(keras.layers.GRUCell(4), keras_node.dynamics.MLP(units=(8,)),
                          **layer_kwargs)([values, times, mask])
    return keras.Model([values, times, mask], keras.layers.Dense(1)(h))


def test_keras_round_trip_and_export(tmp_path):
    times, values, mask = _series(dtype="float32")
    inputs = [values, times, mask.astype("float32")]
    model = _model(method="rk4")  # fixed steps: the served graph's roundoff flips no step decision
    before = model.predict(inputs, verbose=0)
    model.save(tmp_path / "odernn.keras")
    loaded = keras.models.load_model(tmp_path / "odernn.keras")
    np.testing.assert_array_equal(loaded.predict(inputs, verbose=0), before)
    model.export(str(tmp_path / "saved"), verbose=False)  # SavedModel for serving
    restored = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(restored.serve(inputs), before, atol=1e-6)
    layer = [x for x in loaded.layers if isinstance(x, keras_node.ODERNN)][0]
    assert layer.settings.options.method == "rk4" and layer.settings.gradient == "backprop"


def test_fit_lowers_the_loss():
    times, values, mask = _series(batch=32, seed=2, dtype="float32")
    target = values[:, :, :1].sum(axis=1)
    model = _model()
    model.compile(keras.optimizers.Adam(0.02), "mse")
    history = model.fit([values, times, mask.astype("float32")], target, epochs=4, batch_size=16,
                        verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.parametrize("make, error, match", [
    (lambda: keras_node.ODERNN(keras.layers.LSTMCell(3), Zero()), ValueError, "single state"),
    (lambda: keras_node.ODERNN(keras.layers.GRUCell(3), "mlp"), TypeError, "dynamics must be"),
    (lambda: keras_node.ODERNN("gru", Zero()), TypeError, "cell must be"),
    (lambda: keras_node.ODERNN(keras.layers.GRUCell(3), Zero(), rtol=-1.0), ValueError, "rtol"),
], ids=["lstm_cell", "dynamics_type", "cell_type", "rtol"])
def test_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_inputs():
    times, values, mask = _series(dtype="float32")
    layer = keras_node.ODERNN(keras.layers.GRUCell(3), Zero())
    with pytest.raises(ValueError, match=r"takes inputs \(values, times, mask\)"):
        layer([values, times, mask, mask])
    with pytest.raises(ValueError, match="must return dh/dt with the shape of h"):
        keras_node.ODERNN(keras.layers.GRUCell(3), keras.layers.Dense(2))([values, times])


@pytest.mark.auto_jit
def test_eager_tape_with_auto_jit():
    """Regression (NeuralCDE and ODERNN share the code): backprop under an
    eager GradientTape with the real `jit_compile="auto"` must keep the
    solver loops out of XLA (their TensorLists cannot leave it): it failed,
    and gives the gradients of `jit_compile=False`; `True` is a clear error."""
    times, values, mask = _series(dtype="float32")
    cell = keras.layers.GRUCell(3)
    grads = []
    for jit_compile in ("auto", False):
        layer = keras_node.ODERNN(cell, Decay(), jit_compile=jit_compile)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer([values, times, mask]) ** 2)
        grads.append(tape.gradient(loss, cell.trainable_variables))
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="jit_compile=True cannot be combined"):
        with tf.GradientTape():
            keras_node.ODERNN(cell, Decay(), jit_compile=True)([values, times, mask])
