"""`keras_node.divergence`: exact trace and Hutchinson estimate, checked
against a closed form, against `batch_jacobian`'s trace and against a
row-by-row gradient loop (an independent code path)."""

import numpy as np
import pytest
import tensorflow as tf

import keras_node
from conftest import in_regime

TOL = {"float32": 1e-5, "float64": 1e-10}
D = 5


def _field(dtype):
    """f(t, y) = t * tanh(y W) + y b, with div = t sum_i (1 - tanh(u_i)^2) W_ii + sum b."""
    rng = np.random.default_rng(1)
    w = tf.constant(rng.normal(size=(D, D)) / 2, dtype)
    b = tf.constant(rng.normal(size=(D,)), dtype)

    def func(t, y):
        return t * tf.tanh(y @ w) + y * b

    def closed_form(t, y):
        u = np.asarray(y, np.float64) @ np.asarray(w, np.float64)
        return t * ((1 - np.tanh(u) ** 2) * np.diag(np.asarray(w, np.float64))).sum(1) + \
            np.asarray(b, np.float64).sum()

    return func, closed_form


def _trace_by_rows(func, t, y):
    """Reference: one gradient per output component, in a Python loop."""
    flat = tf.reshape(y, [y.shape[0], -1])
    total = tf.zeros([y.shape[0]], y.dtype)
    for i in range(flat.shape[1]):
        with tf.GradientTape() as tape:
            tape.watch(flat)
            f = tf.reshape(func(t, tf.reshape(flat, y.shape)), flat.shape)[:, i]
        total += tape.gradient(f, flat)[:, i]
    return total.numpy()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_exact_matches_closed_form_and_batch_jacobian(dtype, regime):
    func, closed_form = _field(dtype)
    y = tf.constant(np.random.default_rng(2).normal(size=(4, D)), dtype)
    t = tf.constant(0.7, dtype)
    dy, div = in_regime(lambda y: keras_node.divergence(func, t, y), regime)(y)
    assert div.shape == (4,) and div.dtype == dtype
    np.testing.assert_allclose(dy.numpy(), func(t, y).numpy(), rtol=TOL[dtype], atol=TOL[dtype])
    with tf.GradientTape() as tape:
        tape.watch(y)
        f = func(t, y)
    reference = np.trace(tape.batch_jacobian(f, y).numpy(), axis1=1, axis2=2)
    np.testing.assert_allclose(div.numpy(), reference, rtol=0, atol=TOL[dtype])
    np.testing.assert_allclose(div.numpy(), closed_form(0.7, y.numpy()), rtol=0,
                               atol=TOL[dtype] * 10)


def test_exact_on_a_rank_three_event():
    # Event (2, 3): the trace runs over all 6 components.
    w = tf.constant(np.random.default_rng(3).normal(size=(3, 3)), tf.float64)

    def func(t, y):
        return tf.sin(tf.einsum("bij,jk->bik", y, w)) + tf.reverse(y, [1]) ** 2

    y = tf.constant(np.random.default_rng(4).normal(size=(3, 2, 3)), tf.float64)
    _, div = keras_node.divergence(func, 0.0, y)
    np.testing.assert_allclose(div.numpy(), _trace_by_rows(func, 0.0, y), rtol=0, atol=1e-10)


def test_hutchinson_mean_within_three_standard_errors():
    func, _ = _field("float64")
    point = np.random.default_rng(5).normal(size=(1, D))
    n = 10_000
    y = tf.constant(np.repeat(point, n, axis=0), tf.float64)
    _, exact = keras_node.divergence(func, 0.7, y[:1])
    _, estimates = keras_node.divergence(func, 0.7, y, estimator="hutchinson")
    estimates = estimates.numpy()
    assert np.unique(estimates).size > 1  # the probes differ per sample
    standard_error = estimates.std(ddof=1) / np.sqrt(n)
    assert abs(estimates.mean() - float(exact[0])) < 3 * standard_error


def test_hutchinson_with_given_probe_is_the_quadratic_form():
    func, _ = _field("float64")
    y = tf.constant(np.random.default_rng(6).normal(size=(3, D)), tf.float64)
    probe = tf.constant(np.random.default_rng(7).normal(size=(3, D)), tf.float64)
    _, div = keras_node.divergence(func, 0.3, y, estimator="hutchinson", probe=probe)
    with tf.GradientTape() as tape:
        tape.watch(y)
        f = func(0.3, y)
    jac = tape.batch_jacobian(f, y).numpy()
    expected = np.einsum("bi,bij,bj->b", probe.numpy(), jac, probe.numpy())
    np.testing.assert_allclose(div.numpy(), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kwargs, error", [
    ({"estimator": "trace"}, ValueError),
    ({"estimator": 1}, TypeError),
    ({"estimator": "hutchinson", "probe": tf.ones((2, 3))}, ValueError),
], ids=["unknown_estimator", "estimator_not_str", "probe_shape"])
def test_bad_arguments(kwargs, error):
    with pytest.raises(error, match="estimator|probe"):
        keras_node.divergence(lambda t, y: y, 0.0, tf.ones((2, 2)), **kwargs)
