"""`keras_node.CubicSpline` against scipy's natural cubic spline (the
independent oracle), finite differences, and torchcde's missing-value rule.

Tolerance: 1e-6 in float64 (the issue's acceptance bound; the two
tridiagonal solves agree to rounding, ~1e-13 on these O(1) problems).
"""

import numpy as np
import pytest
import scipy.interpolate
import tensorflow as tf

import keras_node
from conftest import in_regime

TOL = 1e-6


def _series(batch=3, n=7, channels=2, seed=0, per_sample=False):
    rng = np.random.default_rng(seed)
    shape = (batch, n) if per_sample else (n,)
    times = np.sort(rng.uniform(0.0, 5.0, size=shape), axis=-1)
    values = rng.normal(size=(batch, n, channels))
    return times, values


def _queries(times):
    """Times inside, on the knots, and outside (extrapolation) of a row."""
    return np.concatenate([[times[0] - 0.3, times[-1] + 0.4], times,
                           0.5 * (times[1:] + times[:-1])])


def _scipy(times, values):
    return scipy.interpolate.CubicSpline(times, values, axis=0, bc_type="natural")


@pytest.mark.parametrize("per_sample", [False, True], ids=["shared_times", "per_sample_times"])
def test_matches_scipy_natural_spline(per_sample):
    times, values = _series(per_sample=per_sample)
    spline = keras_node.CubicSpline(times, values)
    for b in range(values.shape[0]):
        row = times[b] if per_sample else times
        reference = _scipy(row, values[b])
        for t in _queries(row):
            np.testing.assert_allclose(spline.evaluate(t)[b], reference(t), atol=TOL, rtol=0)
            np.testing.assert_allclose(spline.derivative(t)[b], reference(t, 1), atol=TOL, rtol=0)


def test_time_per_sample_query():
    """A `(batch,)` query evaluates each sample at its own time."""
    times, values = _series(per_sample=True)
    spline = keras_node.CubicSpline(times, values)
    query = times[:, 2] + 0.1
    got = spline.derivative(query)
    for b in range(values.shape[0]):
        np.testing.assert_allclose(got[b], _scipy(times[b], values[b])(query[b], 1), atol=TOL)


def test_two_knots_is_linear():
    spline = keras_node.CubicSpline([0.0, 2.0], np.array([[[1.0], [5.0]]]))
    np.testing.assert_allclose(spline.evaluate(0.5), [[2.0]], atol=1e-6)
    np.testing.assert_allclose(spline.derivative(1.7), [[2.0]], atol=1e-6)


def test_missing_values_follow_torchcde():
    """Interior NaNs are skipped, the ends are filled with the first/last
    observation, an all-NaN channel is 0: compared with scipy on the knots
    that rule leaves."""
    times, values = _series(batch=2, n=8, channels=2)
    missing = values.copy()
    missing[0, [0, 1, 4], 0] = np.nan  # leading and interior
    missing[0, [6, 7], 1] = np.nan  # trailing
    missing[1, :, 0] = np.nan  # nothing observed
    spline = keras_node.CubicSpline(times, missing)
    filled_00 = values[0, :, 0].copy()
    filled_00[[0, 1]] = values[0, 2, 0]
    keep = [0, 1, 2, 3, 5, 6, 7]
    filled_01 = values[0, :, 1].copy()
    filled_01[[6, 7]] = values[0, 5, 1]
    references = {(0, 0): _scipy(times[keep], filled_00[keep]), (0, 1): _scipy(times, filled_01),
                  (1, 1): _scipy(times, values[1, :, 1])}
    for t in _queries(times):
        got, slope = spline.evaluate(t).numpy(), spline.derivative(t).numpy()
        for (b, c), reference in references.items():
            np.testing.assert_allclose(got[b, c], reference(t), atol=TOL)
            np.testing.assert_allclose(slope[b, c], reference(t, 1), atol=TOL)
        assert got[1, 0] == 0.0 and slope[1, 0] == 0.0


def test_gradients_match_finite_differences():
    """d(sum(w * X(t)) + sum(v * X'(t)))/d values by central differences;
    NaN entries get a zero, finite gradient."""
    times, values = _series(batch=2, n=6, channels=2, per_sample=True)
    values[1, 3, 0] = np.nan
    rng = np.random.default_rng(1)
    w, v = rng.normal(size=(2, 2)), rng.normal(size=(2, 2))
    t = np.array([1.3, 2.9])

    def loss(x):
        spline = keras_node.CubicSpline(times, x)
        return tf.reduce_sum(w * spline.evaluate(t)) + tf.reduce_sum(v * spline.derivative(t))

    x = tf.constant(values)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = loss(x)
    grad = tape.gradient(value, x).numpy()
    assert np.all(np.isfinite(grad)) and grad[1, 3, 0] == 0.0
    eps = 1e-6
    for index in np.ndindex(values.shape):
        if np.isnan(values[index]):
            continue
        step = np.zeros_like(values)
        step[index] = eps
        fd = (loss(tf.constant(values + step)) - loss(tf.constant(values - step))) / (2 * eps)
        np.testing.assert_allclose(grad[index], fd, atol=1e-7)


def test_regimes(regime):
    """Eager, tf.function and XLA give scipy's values, with NaN inputs too."""
    times, values = _series(per_sample=True)
    values[0, 3, 1] = np.nan

    def f(x, t):
        spline = keras_node.CubicSpline(times, x)
        return spline.evaluate(t), spline.derivative(t)

    got, slope = in_regime(f, regime)(tf.constant(values), tf.constant(times[:, 3]))
    assert np.all(np.isfinite(got)) and np.all(np.isfinite(slope))
    reference = _scipy(times[1], values[1])
    np.testing.assert_allclose(got[1], reference(times[1, 3]), atol=TOL)
    np.testing.assert_allclose(slope[1], reference(times[1, 3], 1), atol=TOL)


@pytest.mark.parametrize("times, values, error, match", [
    ([0.0, 1.0], [[[1], [2]]], TypeError, "must be floating"),
    ([0.0, 1.0], np.zeros((2, 3)), ValueError, "shape \\(batch, n, channels\\)"),
    ([0.0, 1.0, 2.0], np.zeros((1, 2, 1)), ValueError, "needs n times"),
    ([1.0, 0.0], np.zeros((1, 2, 1)), ValueError, "strictly increasing"),
    ([0.0, 0.0], np.zeros((1, 2, 1)), ValueError, "strictly increasing"),
    (np.zeros((2, 2, 2)), np.zeros((1, 2, 1)), ValueError, "times must be 1-D"),
    (np.array([[0.0, 1.0]] * 3), np.zeros((2, 2, 1)), ValueError, "a row per sample"),
    ("soon", np.zeros((1, 2, 1)), TypeError, "times must be"),
], ids=["int_values", "rank2_values", "length_mismatch", "decreasing", "repeated", "rank3_times",
        "rows_mismatch", "string_times"])
def test_bad_inputs(times, values, error, match):
    with pytest.raises(error, match=match):
        keras_node.CubicSpline(times, values)


def test_bad_query_rank():
    spline = keras_node.CubicSpline([0.0, 1.0], np.zeros((1, 2, 1)))
    with pytest.raises(ValueError, match="scalar or a time per sample"):
        spline.evaluate(tf.zeros((1, 1)))
