"""Dense output: exact on polynomials of its degree, and y0/y1 at the ends."""

import numpy as np
import pytest
import tensorflow as tf

from keras_node.solvers import interpolation


def _poly(coefficients, x):
    return sum(c * x ** k for k, c in enumerate(coefficients))


def _dpoly(coefficients, x):
    return sum(k * c * x ** (k - 1) for k, c in enumerate(coefficients) if k)


@pytest.mark.parametrize("degree, quartic", [(4, True), (3, False)], ids=["quartic", "hermite"])
def test_interpolant_is_exact_on_polynomial_of_its_degree(degree, quartic):
    rng = np.random.default_rng(1)
    coefficients = rng.normal(size=degree + 1)
    t0, dt = 0.3, 0.7
    y = lambda t: _poly(coefficients, t)  # noqa: E731
    f = lambda t: _dpoly(coefficients, t)  # noqa: E731
    leaf = lambda v: (tf.constant([v], tf.float64),)  # noqa: E731
    # A one-stage "tableau" whose single stage value is the exact midpoint
    # slope average: y0 + dt * w * k0 == y(t0 + dt/2) with k0 = f(t0).
    k, c_mid = None, None
    if quartic:
        w = (y(t0 + dt / 2) - y(t0)) / (dt * f(t0))
        k, c_mid = [leaf(f(t0))], (w,)
    coeffs = interpolation.fit(leaf(y(t0)), leaf(y(t0 + dt)), leaf(f(t0)), leaf(f(t0 + dt)),
                               tf.constant(dt, tf.float64), k, c_mid)
    for x in np.linspace(0.0, 1.0, 11):
        got = float(interpolation.evaluate(coeffs, tf.constant(x, tf.float64))[0][0])
        assert got == pytest.approx(y(t0 + x * dt), abs=1e-12)


def test_hermite_is_not_exact_on_quartic():
    # Guards the test above: a cubic interpolant must miss a quartic.
    coefficients = [0.0, 0.0, 0.0, 0.0, 1.0]
    y = lambda t: _poly(coefficients, t)  # noqa: E731
    f = lambda t: _dpoly(coefficients, t)  # noqa: E731
    leaf = lambda v: (tf.constant([v], tf.float64),)  # noqa: E731
    coeffs = interpolation.fit(leaf(y(0.0)), leaf(y(1.0)), leaf(f(0.0)), leaf(f(1.0)),
                               tf.constant(1.0, tf.float64))
    mid = float(interpolation.evaluate(coeffs, tf.constant(0.5, tf.float64))[0][0])
    assert abs(mid - y(0.5)) > 1e-3
