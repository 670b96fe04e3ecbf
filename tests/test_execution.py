"""One execution path and its rule for Python state (issue 14).

Eager `odeint` / `odeint_adjoint` / `ODELayer` calls run one `tf.function`
per (function, options), so they follow `tf.function`'s rule, as the
docstrings say: Python values the function reads are captured when it is
first traced; tensors and variables are read on every call. These tests show
the rule both ways (a stale Python value, a fresh variable), that a new
function gets a fresh trace, that the cache holds functions weakly, and that
a dynamics layer whose name Keras starts with an underscore works in every
gradient mode and regime (bug b).
"""

import gc
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_node
from conftest import REGIMES, in_regime

F64 = tf.float64
Y0 = tf.constant([1.0], F64)
T = [0.0, 1.0]
TIGHT = dict(rtol=1e-10, atol=1e-10)

# A large array (1 MB), as the stale-answer case: mutated in place
# between eager calls.
_RATES = np.ones(131072)


def _decay_at_array_rate(t, y):
    return -_RATES[0] * y


@pytest.mark.parametrize("solver", [keras_node.odeint, keras_node.odeint_adjoint],
                         ids=["odeint", "odeint_adjoint"])
def test_python_state_follows_tf_function_rule(solver):
    """A numpy array mutated in place is captured at the first call (the
    documented rule, bug d); a tf.Variable is read on every call; a new
    function object gets a fresh trace."""
    _RATES[:] = 1.0
    try:
        first = float(solver(_decay_at_array_rate, Y0, T, **TIGHT)[-1, 0])
        _RATES[:] = 2.0
        again = float(solver(_decay_at_array_rate, Y0, T, **TIGHT)[-1, 0])
        np.testing.assert_allclose([first, again], np.exp(-1.0), rtol=1e-8)  # captured: stale, as documented

        def fresh(t, y):  # a new function sees the current value
            return -_RATES[0] * y

        np.testing.assert_allclose(float(solver(fresh, Y0, T, **TIGHT)[-1, 0]), np.exp(-2.0), rtol=1e-8)
    finally:
        _RATES[:] = 1.0
    rate = tf.Variable(1.0, dtype=F64)

    def decay_at_variable_rate(t, y):
        return -rate * y

    for value in (1.0, 3.0):
        rate.assign(value)
        result = float(solver(decay_at_variable_rate, Y0, T, **TIGHT)[-1, 0])
        np.testing.assert_allclose(result, np.exp(-value), rtol=1e-8)


class _Rate(keras.layers.Layer):
    """dh/dt = -rate * h with `rate` a Python attribute and `scale` a weight."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rate = 1.0

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

    def call(self, h):
        return -self.rate * self.scale * h


def test_eager_layer_calls_follow_the_same_rule():
    dynamics = _Rate()
    layer = keras_node.ODELayer(dynamics, rtol=1e-7, atol=1e-9)
    x = tf.ones((1, 1))
    np.testing.assert_allclose(float(layer(x)[0, 0]), np.exp(-1.0), rtol=1e-5)
    dynamics.rate = 2.0  # a Python attribute: captured by the first call
    np.testing.assert_allclose(float(layer(x)[0, 0]), np.exp(-1.0), rtol=1e-5)
    dynamics.scale.assign(3.0)  # a weight: read on every call
    np.testing.assert_allclose(float(layer(x)[0, 0]), np.exp(-3.0), rtol=1e-5)


def test_cache_never_keeps_a_layer_or_function_alive():
    layer = keras_node.ODELayer(keras_node.dynamics.MLP(units=(4,)))
    layer(tf.ones((2, 3)))

    def func(t, y):
        return -y

    keras_node.odeint(func, Y0, T)
    refs = [weakref.ref(layer), weakref.ref(func)]
    del layer, func
    gc.collect()
    assert [ref() for ref in refs] == [None, None]


class _Decay(keras.layers.Layer):
    """Keras names it "_decay": a scope TensorFlow refuses at a graph's root."""

    def call(self, h):
        return -h

    def compute_output_shape(self, input_shape):
        return input_shape


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("gradient", ["adjoint", "backprop"])
def test_dynamics_layer_named_with_underscore(gradient, regime):
    """Bug b: raised "'__decay' is not a valid root scope name"."""
    layer = keras_node.ODELayer(_Decay(), gradient=gradient, rtol=1e-7, atol=1e-9)
    x = tf.ones((2, 3))
    layer(x)  # build

    def value_and_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y)
        return y, tape.gradient(loss, x)

    y, g = in_regime(value_and_grad, regime)(x)
    np.testing.assert_allclose(y, np.exp(-1.0) * np.ones((2, 3)), rtol=1e-5)
    np.testing.assert_allclose(g, np.exp(-1.0) * np.ones((2, 3)), rtol=1e-5)


def test_dynamics_layer_named_with_underscore_trains_with_fit():
    model = keras.Sequential([keras.Input((3,)), keras_node.ODELayer(_Decay()), keras.layers.Dense(1)])
    model.compile("adam", "mse")
    history = model.fit(np.ones((8, 3)), np.zeros((8, 1)), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.auto_jit
def test_dynamics_reading_tensors_of_the_enclosing_function():
    """jit_compile="auto" decides XLA support even when func closes over a
    tensor computed inside the tf.function being traced (the XLA lowering
    probe cannot reach it; the kernel registry answers instead)."""

    @tf.function
    def solve(y0, rate):
        doubled = 2.0 * rate
        return keras_node.odeint(lambda t, y: -doubled * y, y0, [0.0, 1.0], rtol=1e-8, atol=1e-10)

    ys = solve(tf.ones([1]), tf.constant(0.5))
    np.testing.assert_allclose(ys.numpy()[-1], np.exp(-1.0), rtol=1e-6)


@pytest.mark.auto_jit
def test_a_solve_adds_few_ops_around_its_compiled_loop():
    """What runs on every call around the nested XLA function: one status
    check (one conditional, not one per cause) and nothing from
    the `jit_compile="auto"` probe (its random inputs once leaked into the
    caller's graph as stateful ops that ran on every call)."""

    @tf.function(autograph=False)
    def solve(y0):
        return keras_node.odeint(lambda t, y: -y, y0, T, return_stats=True)

    graph = solve.get_concrete_function(Y0).graph
    op_types = [op.type for op in graph.get_operations()]
    assert op_types.count("PartitionedCall") == 1  # the compiled solve
    assert op_types.count("If") + op_types.count("StatelessIf") == 1
    assert not [t for t in op_types if t.startswith("Random")]
    assert len(op_types) < 30, op_types
