"""A NaN or inf in the input is named as such, not blamed on the dynamics
(issue 19, "Non-finite inputs").

One NaN row used to fail the whole call with "the state or the dynamics
became non-finite ... Check the dynamics for overflow". Now the solve's
status starts as NON_FINITE_INPUT when the initial state is not finite, and
the message says the input is bad; with per-sample steps only the affected
samples fail (named eagerly and in graphs; NaN under XLA).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_node
from keras_node import _status

INPUT_MESSAGE = "initial state contains NaN or inf"


def decay(t, y):
    return -y


def rows_with_nan(*bad_rows, batch=5):
    """A float64 batch of states (batch, 2) with NaN in `bad_rows`."""
    y0 = np.ones((batch, 2))
    y0[list(bad_rows), 1] = np.nan
    return tf.constant(y0)


@pytest.mark.parametrize("regime", ["eager", "function"])
def test_joint_solve_names_the_input_not_the_dynamics(regime):
    solve = lambda y0: keras_node.odeint(decay, y0, [0.0, 1.0])  # noqa: E731
    if regime == "function":
        solve = tf.function(solve)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        solve(rows_with_nan(3))
    message = str(info.value)
    assert INPUT_MESSAGE in message, message
    assert "Check the dynamics" not in message, message


@pytest.mark.parametrize("regime", ["eager", "function"])
def test_per_sample_solve_names_the_first_bad_sample(regime):
    solve = lambda y0: keras_node.odeint(decay, y0, [0.0, 1.0], batch_axis=0)  # noqa: E731
    if regime == "function":
        solve = tf.function(solve)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        solve(rows_with_nan(2, 4))
    message = str(info.value)
    assert INPUT_MESSAGE in message, message
    if regime == "eager":
        assert "sample 2 (and 1 more)" in message, message
    else:
        assert "First failed sample:" in message and "2" in message, message


def test_per_sample_solve_under_xla_makes_only_the_bad_samples_nan():
    @tf.function(jit_compile=True)
    def solve(y0):
        return keras_node.odeint(decay, y0, [0.0, 1.0], batch_axis=0, return_stats=True)

    ys, stats = solve(rows_with_nan(2, 4))
    status = stats["status"].numpy()
    np.testing.assert_array_equal(status, [0, 0, _status.NON_FINITE_INPUT, 0, _status.NON_FINITE_INPUT])
    assert np.all(np.isnan(ys.numpy()[:, [2, 4]]))
    np.testing.assert_allclose(ys.numpy()[-1, [0, 1, 3]], np.exp(-1.0), rtol=1e-3)  # default rtol


def test_dynamics_that_blow_up_keep_their_own_message():
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        keras_node.odeint(lambda t, y: y * y, tf.constant([2.0], tf.float64), [0.0, 1.0])
    message = str(info.value)
    assert INPUT_MESSAGE not in message, message
    assert "non-finite" in message or "underflow" in message, message


def test_adjoint_forward_pass_names_the_input():
    y0 = rows_with_nan(1)
    with pytest.raises(tf.errors.InvalidArgumentError, match=INPUT_MESSAGE):
        keras_node.odeint_adjoint(decay, y0, [0.0, 1.0])


@pytest.mark.parametrize("per_sample_steps", [False, True])
def test_ode_layer_predict_with_a_nan_row(per_sample_steps):
    layer = keras_node.ODELayer(keras_node.dynamics.MLP(units=(8,)), per_sample_steps=per_sample_steps)
    model = keras.Sequential([keras.Input((2,)), layer])
    x = np.ones((8, 2), np.float32)
    x[5, 0] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match=INPUT_MESSAGE):
        model.predict(x, verbose=0)
