"""`ODELayer(regularizers=...)` (RNODE): values against closed forms on linear
dynamics f = h K, where h(t) = h0 expm(K t); the Frobenius estimate against
its expectation; zero weights change nothing; gradients adjoint = backprop =
central differences; losses and `reg_<key>` metrics in `fit`."""

import itertools

import keras
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import tensorflow as tf

import keras_node
from problems import central_differences

D, T = 3, 1.3
K = np.array([[-0.3, 0.8, 0.1], [-0.7, -0.2, 0.4], [0.2, -0.1, -0.5]])
H0 = np.random.default_rng(0).normal(size=(4, D))
ALL = {"kinetic": 1.0, "jacobian_frobenius": 1.0, "taylor2": 1.0}
TIGHT = 1e-10  # solver rtol = atol; closed forms are checked to 1e-7


def _linear_layer(regularizers, t=(0.0, T), gradient="backprop", kernel=K, per_sample_steps=False):
    dynamics = keras.layers.Dense(D, use_bias=False, dtype="float64")
    layer = keras_node.ODELayer(dynamics, t=t, rtol=TIGHT, atol=TIGHT, gradient=gradient,
                                regularizers=regularizers, dtype="float64",
                                per_sample_steps=per_sample_steps)
    layer.build((None, D))
    dynamics.kernel.assign(kernel)
    return layer


def _quad(integrand, t0, t1):
    """Per-sample integral over |dt| of integrand(t) (a (batch,) vector)."""
    lo, hi = sorted((t0, t1))
    return scipy.integrate.quad_vec(integrand, lo, hi, epsabs=1e-13, epsrel=1e-12)[0]


def _losses(layer):
    return [float(x) for x in layer.losses]


@pytest.mark.parametrize("t, per_sample_steps", [((0.0, T), False), ((T, 0.0), False),
                                                 ((0.0, T), True)],
                         ids=["forward", "backward", "per_sample_steps"])
def test_kinetic_and_taylor2_equal_closed_forms(t, per_sample_steps):
    layer = _linear_layer({"kinetic": 1.0, "taylor2": 2.0}, t=t, per_sample_steps=per_sample_steps)
    layer(H0, training=True)

    def state(s):  # h at time s, from h(t0) = H0
        return H0 @ scipy.linalg.expm(K * (s - t[0]))

    kinetic = _quad(lambda s: ((state(s) @ K) ** 2).mean(1), *t)
    taylor2 = _quad(lambda s: ((state(s) @ K @ K) ** 2).mean(1), *t)  # h'' = f K
    np.testing.assert_allclose(_losses(layer), [kinetic.mean(), 2.0 * taylor2.mean()],
                               rtol=1e-7, atol=0)


class _Affine(keras.layers.Layer):
    """Time-dependent f(h, t) = h K + t c: h'' = f K + c checks the df/dt term."""

    def build(self, input_shape):
        self.c = self.add_weight(shape=(D,), initializer="ones", dtype="float64")

    def call(self, h, t=None):
        return h @ tf.constant(K, h.dtype) + t * self.c


def test_taylor2_includes_the_time_derivative():
    layer = keras_node.ODELayer(_Affine(dtype="float64"), t=(0.0, T), rtol=TIGHT, atol=TIGHT,
                                regularizers={"taylor2": 1.0}, dtype="float64")
    layer(H0, training=True)
    c = np.ones(D)

    def rhs(s, y):  # [h (batch*D), r (batch)] with r' = mean(h''^2)
        h = y[: H0.size].reshape(H0.shape)
        f = h @ K + s * c
        return np.concatenate([f.ravel(), ((f @ K + c) ** 2).mean(1)])

    y0 = np.concatenate([H0.ravel(), np.zeros(len(H0))])
    reference = scipy.integrate.solve_ivp(rhs, (0.0, T), y0, method="DOP853", rtol=1e-12,
                                          atol=1e-12).y[H0.size:, -1]
    np.testing.assert_allclose(_losses(layer), [reference.mean()], rtol=1e-7, atol=0)


def test_frobenius_is_the_probe_form_with_the_right_expectation():
    # f = h K: the VJP eps^T df/dh is K eps, constant along the solve, so
    # each sample's value is T/D |K eps|^2 for its probe; over all 2^D
    # Rademacher probes its mean is T |K|_F^2 / D.
    n = 2000
    layer = _linear_layer({"jacobian_frobenius": 1.0})
    values = np.array([T / D * np.sum((K @ np.array(e)) ** 2)
                       for e in itertools.product((-1.0, 1.0), repeat=D)])
    layer(np.random.default_rng(1).normal(size=(n, D)), training=True)
    mean = _losses(layer)[0]
    expectation = T * np.sum(K**2) / D
    np.testing.assert_allclose(values.mean(), expectation, rtol=1e-12)
    standard_error = values.std() / np.sqrt(n)
    assert abs(mean - expectation) < 3 * standard_error
    # One sample: its value is one of the 2^D probe values.
    single = _linear_layer({"jacobian_frobenius": 1.0})
    single(H0[:1], training=True)
    assert np.min(np.abs(values - _losses(single)[0])) < 1e-8


@pytest.mark.parametrize("gradient", ["backprop", "adjoint"])
def test_weights_do_not_change_the_solve(gradient):
    x = H0.astype("float32")
    outputs, nfe, weights = [], [], None
    for regularizers in (None, {"kinetic": 0.0, "taylor2": 0.0}, ALL):
        layer = keras_node.ODELayer(
            keras_node.dynamics.MLP(units=(8,), final_initializer="glorot_uniform"),
            gradient=gradient, regularizers=regularizers)
        layer.build((None, D))
        weights = layer.dynamics.get_weights() if weights is None else weights
        layer.dynamics.set_weights(weights)
        outputs.append(layer(x, training=True).numpy())
        nfe.append(layer.nfe_forward)
        assert len(layer.losses) == (3 if regularizers is ALL else 0)
    np.testing.assert_array_equal(outputs[1], outputs[0])  # zero weights: nothing computed
    np.testing.assert_array_equal(outputs[2], outputs[0])  # the states stay out of error control
    assert nfe[0] == nfe[1] == nfe[2]


def test_no_regularisation_outside_training():
    layer = _linear_layer(ALL)
    plain = _linear_layer(None)
    np.testing.assert_array_equal(layer(H0).numpy(), plain(H0).numpy())
    assert layer.losses == []


def test_gradients_adjoint_backprop_and_central_differences():
    weights = {"kinetic": 1.0, "jacobian_frobenius": 0.3, "taylor2": 0.5}
    seed_state = _linear_layer(weights)._probe_seed.state.numpy()

    layers = {mode: _linear_layer(weights, gradient=mode) for mode in ("adjoint", "backprop")}

    def loss_and_grad(gradient, kernel=K):
        layer = layers[gradient]  # one layer per mode: its solve is compiled once
        layer.dynamics.kernel.assign(kernel)
        layer._probe_seed.state.assign(seed_state)  # the same probe in every solve
        with tf.GradientTape() as tape:
            y = layer(H0, training=True)
            loss = tf.add_n(layer.losses) + 0.1 * tf.reduce_sum(y**2)
        return float(loss), tape.gradient(loss, layer.dynamics.kernel).numpy()

    _, adjoint = loss_and_grad("adjoint")
    _, backprop = loss_and_grad("backprop")
    central = central_differences(lambda value: loss_and_grad("backprop", value)[0], K)
    np.testing.assert_allclose(backprop, central, atol=1e-7)
    np.testing.assert_allclose(adjoint, central, atol=1e-7)


def test_fit_under_xla_reports_each_term_and_config_round_trips():
    x = np.random.default_rng(2).normal(size=(16, 2)).astype("float32")
    layer = keras_node.ODELayer(keras_node.dynamics.MLP(units=(8,), final_initializer="glorot_uniform"),
                                regularizers={"kinetic": 0.1, "jacobian_frobenius": 0.2})
    model = keras.Sequential([keras.Input((2,)), layer, keras.layers.Dense(1)])
    model.compile("adam", "mse", jit_compile=True)  # the regularised solve under XLA
    logs = model.fit(x, x[:, :1], epochs=1, batch_size=16, verbose=0).history
    assert logs["reg_kinetic"][0] > 0 and logs["reg_jacobian_frobenius"][0] > 0
    mse = float(np.mean((model.predict(x, verbose=0) - x[:, :1]) ** 2))
    assert abs(model.evaluate(x, x[:, :1], verbose=0, return_dict=True)["loss"] - mse) < 1e-5
    config = layer.get_config()
    assert config["regularizers"] == {"kinetic": 0.1, "jacobian_frobenius": 0.2}
    assert keras_node.ODELayer.from_config(config).get_config() == config


def test_tolerances_per_channel():
    # A per-channel atol applies to h; the (batch,) integrals are not
    # broadcast against it. Same steps and outputs as the plain solve.
    atol = [1e-9, 1e-8, 1e-9]
    layers = []
    for regularizers in (None, {"kinetic": 1.0}):
        dynamics = keras.layers.Dense(D, use_bias=False, dtype="float64")
        layer = keras_node.ODELayer(dynamics, t=(0.0, T), rtol=1e-8, atol=atol,
                                    regularizers=regularizers, dtype="float64")
        layer.build((None, D))
        dynamics.kernel.assign(K)
        layers.append((layer, layer(H0, training=True).numpy()))
    (plain, y_plain), (regularized, y_regularized) = layers
    np.testing.assert_array_equal(y_regularized, y_plain)
    assert regularized.nfe_forward == plain.nfe_forward
    kinetic = _quad(lambda s: ((H0 @ scipy.linalg.expm(K * s) @ K) ** 2).mean(1), 0.0, T)
    np.testing.assert_allclose(_losses(regularized), [kinetic.mean()], rtol=1e-5)
