"""Backprop of joint `odeint` solves replays each attempted step backward
(keras_node/solvers/replay.py, keras_node/_backprop.py, issue 20 item 1):
the forward solve is XLA-compiled even while a tape records, and under a
whole-step XLA compile memory no longer grows with `max_num_steps`.

Checked: the gradients (of y0, every output time and the variables) equal
the plain graph's backprop gradients (float64, so both take the same
steps) eagerly, in `tf.function` and under a whole-step XLA compile, across
several chunks of attempts (the first chunk's states kept by the forward,
the later ones run again); they match the exact
gradients of a linear ODE (matrix exponential) and central differences for
a variable; dynamics reading a plain `tf.Variable` are covered; the replay
is the path taken; `jit_compile=True` with a tape outside now works, and an
`ODELayer` trains with it.
"""

import keras
import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

import keras_node
from backprop_fields import built_field
from keras_node.solvers import replay

pytestmark = pytest.mark.auto_jit  # real XLA for jit_compile="auto"

RNG = np.random.default_rng(5)
Y0 = tf.constant(RNG.normal(size=(4, 3)))
TIMES = tf.constant([0.0, 0.7, 1.9, 3.0], tf.float64)
WEIGHTS = tf.reshape(tf.range(1, 5, dtype=tf.float64), [4, 1, 1])
SOLVERS = {"dopri5": dict(method="dopri5", rtol=1e-7, atol=1e-9, max_num_steps=100),
           "tsit5": dict(method="tsit5", rtol=1e-7, atol=1e-9, max_num_steps=100),
           "rk4": dict(method="rk4", step_size=0.05, max_num_steps=100)}


@pytest.fixture
def replays(monkeypatch):
    """The `max_num_steps` of every replayed backward pass."""
    calls = []
    original = replay.backward

    def spy(*args):
        calls.append(args[-1])
        return original(*args)

    monkeypatch.setattr(replay, "backward", spy)
    return calls


def _gradients(func, variables, solver, jit, where):
    """[loss, dL/dy0, dL/dt, dL/dvariables...] of a weighted sum over all
    outputs; `where`: "eager", "function" or "xla" (the whole step)."""

    def step():
        with tf.GradientTape() as tape:
            tape.watch([Y0, TIMES])
            ys = keras_node.odeint(func, Y0, TIMES, jit_compile=jit, **solver)
            loss = tf.reduce_sum(WEIGHTS * tf.sin(ys))
        return [loss] + tape.gradient(loss, [Y0, TIMES] + list(variables))

    if where != "eager":
        step = tf.function(step, jit_compile=where == "xla")
    return [x.numpy() for x in step()]


# Each method once, each place once (every case compiles for seconds). The
# eager case passes jit_compile=True with the tape outside, which raised
# before the replay (a gradient cannot reach into an XLA loop).
@pytest.mark.parametrize("method, where, jit", [("dopri5", "eager", True), ("tsit5", "xla", "auto"),
                                                ("rk4", "function", "auto")])
def test_replayed_gradient_equals_plain_backprop(method, where, jit, replays):
    # max_num_steps=100: chunks of 5 attempts; the solves take 25-60.
    field = built_field()
    expected = _gradients(field, field.trainable_variables, SOLVERS[method], False, "function")
    assert not replays  # jit_compile=False in a graph keeps TensorFlow's own loop gradient
    got = _gradients(field, field.trainable_variables, SOLVERS[method], jit, where)
    assert replays == [100]
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_linear_ode_gradients_match_the_matrix_exponential(replays):
    # dy/dt = y A: y(t) = y0 expm(A t), so for L = sum_i <c_i, y(t_i)>:
    # dL/dy0 = sum_i c_i expm(A t_i)^T and dL/dt_i = <c_i, y(t_i) A>.
    a = RNG.normal(size=(3, 3)) * 0.5
    matrix = tf.constant(a)
    c = RNG.normal(size=(4, 4, 3))
    times = TIMES.numpy()

    def step():
        with tf.GradientTape() as tape:
            tape.watch([Y0, TIMES])
            ys = keras_node.odeint(lambda t, y: tf.matmul(y, matrix), Y0, TIMES,
                                   rtol=1e-11, atol=1e-13, max_num_steps=400)
            loss = tf.reduce_sum(tf.constant(c) * ys)
        return tape.gradient(loss, [Y0, TIMES])

    grad_y0, grad_t = [g.numpy() for g in tf.function(step)()]
    assert replays == [400]
    y0 = Y0.numpy()
    exact_y0 = sum(c[i] @ scipy.linalg.expm(a * times[i]).T for i in range(4))
    exact_t = [np.sum(c[i] * (y0 @ scipy.linalg.expm(a * times[i]) @ a)) for i in range(4)]
    np.testing.assert_allclose(grad_y0, exact_y0, rtol=1e-8, atol=1e-9)
    # The first output is y0 itself, which does not move with t[0]; t[0]
    # moves every later output: dL/dt0 = -sum_i <expm(A t_i)^T c_i, y0 A>.
    exact_t[0] = -sum(np.sum((c[i] @ scipy.linalg.expm(a * times[i]).T) * (y0 @ a))
                      for i in range(1, 4))
    np.testing.assert_allclose(grad_t, exact_t, rtol=1e-7, atol=1e-8)


def test_variable_gradient_matches_central_differences(replays):
    field = built_field()
    solver = dict(SOLVERS["dopri5"], rtol=1e-11, atol=1e-13, max_num_steps=400)
    grads = _gradients(field, field.trainable_variables, solver, "auto", "function")
    assert replays == [400]
    w1 = field.w1
    original = w1.numpy()

    def loss_at(w):
        w1.assign(w)
        ys = keras_node.odeint(field, Y0, TIMES, jit_compile=False, **solver)
        return float(tf.reduce_sum(WEIGHTS * tf.sin(ys)))

    eps = 1e-6
    for index in [(0, 0), (1, 5), (2, 7)]:
        bump = np.zeros_like(original)
        bump[index] = eps
        central = (loss_at(original + bump) - loss_at(original - bump)) / (2 * eps)
        np.testing.assert_allclose(grads[3][index], central, rtol=1e-6)
    w1.assign(original)


def test_dynamics_reading_a_plain_tf_variable_under_a_whole_step_compile(replays):
    # Before the replay these kept XLA's stacked loop (no chunking without
    # Keras variables): 2.5 s per step on the bench MLP.
    field = built_field()
    extra = tf.Variable(0.1, dtype=tf.float64)

    def func(t, y):
        return field(t, y) + extra * y

    variables = field.trainable_variables + [extra]
    expected = _gradients(func, variables, SOLVERS["dopri5"], False, "function")
    got = _gradients(func, variables, SOLVERS["dopri5"], "auto", "xla")
    assert replays == [100]
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_jit_compile_true_with_a_tape_outside_and_no_replay_is_an_error():
    # Per-sample solves are not replayed: a gradient from outside the
    # compiled solve is still impossible, and named.
    field = built_field()
    with pytest.raises(ValueError, match="jit_compile=True cannot be combined"):
        _gradients(field, field.trainable_variables, dict(SOLVERS["dopri5"], batch_axis=0),
                   True, "eager")


def test_ode_layer_trains_with_backprop(replays):
    # Keras' default compile; under model.compile(jit_compile=True) the
    # replay runs inline (test_ode_layer.py::test_fit_with_jit_compile).
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 2)).astype("float32")
    y = np.sin(x[:, :1]).astype("float32")
    layer = keras_node.ODELayer(keras_node.dynamics.MLP(units=(16,)), gradient="backprop")
    model = keras.Sequential([keras.Input((2,)), layer, keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(0.05), "mse", jit_compile=False)
    before = [w.numpy().copy() for w in layer.trainable_weights]
    history = model.fit(x, y, epochs=4, batch_size=32, verbose=0).history
    assert replays  # the training step replayed the solve (its forward under XLA)
    assert np.all(np.isfinite(history["loss"])) and history["loss"][-1] < history["loss"][0]
    assert any(not np.allclose(b, w.numpy()) for b, w in zip(before, layer.trainable_weights))
