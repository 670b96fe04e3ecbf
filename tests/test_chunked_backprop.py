"""Backprop under a whole-step XLA compile runs the solver loop in chunks
whose gradient is recomputed (keras_node/solvers/recompute.py, issue 20
item 1), so XLA no longer stacks `max_num_steps` copies of every stage.

Checked: the chunked gradient equals the plain graph's backprop gradient
(float64, so both take the same steps) and central differences of the
solve; the chunked path is the one taken for Keras-layer dynamics, across
several chunks, with output times in different chunks, for adaptive and
fixed-step methods, joint and per-sample (`batch_axis=0`) solves, the
event search of `odeint_event`, in `ODELayer` under
`model.compile(jit_compile=True)`;
dynamics reading a variable that is not a Keras variable keep the plain
loop and get the same gradient.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_node
from keras_node.solvers import recompute

pytestmark = pytest.mark.auto_jit  # real XLA where a test asks for it


class Field(keras.layers.Layer):
    """dy/dt = tanh(y W1 + b1 + t) W2 - 0.3 y, float64, with a
    non-trainable scale (a variable read, never differentiated)."""

    def build(self, shape):
        dim = shape[-1]
        rng = np.random.default_rng(3)
        self.w1 = self.add_weight(shape=(dim, 8), initializer=keras.initializers.Constant(
            rng.normal(size=(dim, 8)) / np.sqrt(dim)), dtype="float64")
        self.b1 = self.add_weight(shape=(8,), initializer="zeros", dtype="float64")
        self.w2 = self.add_weight(shape=(8, dim), initializer=keras.initializers.Constant(
            rng.normal(size=(8, dim)) / np.sqrt(8)), dtype="float64")
        self.scale = self.add_weight(shape=(), initializer=keras.initializers.Constant(0.3),
                                     dtype="float64", trainable=False)

    def call(self, t, y):
        if t.shape.rank == 1:  # per-sample solves: a time per sample
            t = t[:, None]
        return tf.matmul(tf.tanh(tf.matmul(y, self.w1) + self.b1 + t), self.w2) - self.scale * y


def _field():
    field = Field(dtype="float64")
    field.build((None, 3))
    return field


Y0 = tf.constant(np.random.default_rng(0).normal(size=(4, 3)))
TIMES = tf.constant([0.0, 0.7, 1.9, 3.0], tf.float64)
SOLVERS = {"dopri5": dict(method="dopri5", rtol=1e-7, atol=1e-9, max_num_steps=100),
           "rk4": dict(method="rk4", step_size=0.05, max_num_steps=100)}


def _gradient(func, variables, solver, jit):
    """(loss, dL/dy0, dL/dvariables) of a weighted sum over all output times."""

    def step():
        with tf.GradientTape() as tape:
            tape.watch(Y0)
            ys = keras_node.odeint(func, Y0, TIMES, jit_compile=jit, **solver)
            weights = tf.reshape(tf.range(1, 5, dtype=tf.float64), [4, 1, 1])
            loss = tf.reduce_sum(weights * tf.sin(ys))
        return [loss] + tape.gradient(loss, [Y0] + list(variables))

    return [x.numpy() for x in tf.function(step, jit_compile=jit)()]


@pytest.fixture
def chunk_calls(monkeypatch):
    calls = []
    original = recompute.checkpointed_loop

    def spy(*args):
        calls.append(args[3])  # max_num_steps
        return original(*args)

    monkeypatch.setattr(recompute, "checkpointed_loop", spy)
    return calls


def _check_chunked_equals_plain(solver, chunk_calls):
    """The gradient under XLA (chunked loop) equals the plain graph's
    (plain loop) to round-off; returns the spy's calls for the XLA run."""
    field = _field()
    expected = _gradient(field, field.trainable_variables, solver, jit=False)
    assert not chunk_calls  # a plain graph keeps the plain loop
    got = _gradient(field, field.trainable_variables, solver, jit=True)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    return chunk_calls


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_chunked_gradient_equals_plain_backprop(method, chunk_calls):
    # Chunks of 5 attempts; the solve takes 60 (rk4) or ~25.
    assert _check_chunked_equals_plain(SOLVERS[method], chunk_calls) == [100]


def test_a_solve_within_the_first_chunk_equals_plain_backprop(chunk_calls):
    # Default max_num_steps: chunks of 50 attempts, more than the solve takes,
    # so only the plain first chunk runs (nothing recomputed).
    solver = dict(SOLVERS["dopri5"], max_num_steps=10_000)
    assert _check_chunked_equals_plain(solver, chunk_calls) == [10_000]


def test_per_sample_chunked_gradient_equals_plain_backprop(chunk_calls):
    # batch_axis=0: every sample steps on its own; the per-sample loop is
    # chunked the same way (outputs spread over several chunks of 5).
    solver = dict(SOLVERS["dopri5"], batch_axis=0)
    assert _check_chunked_equals_plain(solver, chunk_calls) == [100]


def test_chunked_gradient_matches_central_differences(chunk_calls):
    field = _field()
    solver = dict(SOLVERS["dopri5"], rtol=1e-10, atol=1e-12, max_num_steps=400)
    _, grad_y0, *_ = _gradient(field, field.trainable_variables, solver, jit=True)
    assert chunk_calls
    eps, y0 = 1e-6, Y0.numpy()
    weights = np.arange(1, 5).reshape(4, 1, 1)

    def loss(y):
        ys = keras_node.odeint(field, tf.constant(y), TIMES, jit_compile=False, **solver)
        return float(np.sum(weights * np.sin(ys.numpy())))

    for index in [(0, 0), (2, 1), (3, 2)]:
        bump = np.zeros_like(y0)
        bump[index] = eps
        central = (loss(y0 + bump) - loss(y0 - bump)) / (2 * eps)
        np.testing.assert_allclose(grad_y0[index], central, rtol=1e-6)


def test_dynamics_reading_a_plain_tf_variable_keep_the_plain_loop(chunk_calls):
    field = _field()
    extra = tf.Variable(0.1, dtype=tf.float64)

    def func(t, y):
        return field(t, y) + extra * y

    got = _gradient(func, field.trainable_variables + [extra], SOLVERS["rk4"], jit=True)
    assert not chunk_calls
    expected = _gradient(func, field.trainable_variables + [extra], SOLVERS["rk4"], jit=False)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_ode_layer_trains_with_backprop_under_a_whole_step_xla_compile(chunk_calls):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 2)).astype("float32")
    y = np.sin(x[:, :1]).astype("float32")
    layer = keras_node.ODELayer(keras_node.dynamics.MLP(units=(16,)), gradient="backprop")
    model = keras.Sequential([keras.Input((2,)), layer, keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(0.05), "mse", jit_compile=True)
    before = [w.numpy().copy() for w in layer.trainable_weights]
    history = model.fit(x, y, epochs=4, batch_size=32, verbose=0).history
    assert chunk_calls  # the whole step compiled with XLA took the chunked loop
    assert np.all(np.isfinite(history["loss"])) and history["loss"][-1] < history["loss"][0]
    assert any(not np.allclose(b, w.numpy()) for b, w in zip(before, layer.trainable_weights))


def test_event_search_is_chunked_too(chunk_calls):
    # odeint_event(gradient="backprop") differentiates its search loop: under
    # a whole-step XLA compile it is chunked like odeint's, with the same
    # gradient as in a plain graph.
    field = _field()

    def run(jit):
        def step():
            with tf.GradientTape() as tape:
                tape.watch(Y0)
                t_event, y_event = keras_node.odeint_event(
                    field, Y0, tf.constant(0.0, tf.float64),
                    lambda t, y: tf.reduce_mean(y ** 2) - 1.5, gradient="backprop",
                    t_max=3.0, jit_compile=jit, **SOLVERS["dopri5"])
                loss = t_event + tf.reduce_sum(tf.sin(y_event))
            return [t_event, loss] + tape.gradient(loss, [Y0] + field.trainable_variables)
        return [x.numpy() for x in tf.function(step, jit_compile=jit)()]

    expected = run(False)
    assert not chunk_calls
    assert 1.4 < expected[0] < 1.5  # the event fires at step 12: three chunks of 5
    got = run(True)
    assert chunk_calls == [100]
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_chunk_size_balances_chunks_and_attempts():
    assert recompute.chunk_size(10_000) == 50
    assert recompute.chunk_size(100) == 5
    assert recompute.chunk_size(101) == 6
    assert recompute.chunk_size(1) == 1
    for steps in (1, 2, 37, 10_000, 12_345):
        size = recompute.chunk_size(steps)
        assert size * -(-steps // size) >= steps  # the chunks cover every attempt
