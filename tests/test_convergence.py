"""Empirical convergence of keras_node.odeint in float64."""

import numpy as np
import pytest
import tensorflow as tf

import keras_node
from problems import ADAPTIVE_METHODS, LINEAR, ORDERS, RICCATI, TIME_DEPENDENT, error_tolerance

# Step sizes 2**-e, chosen per order so that the errors stay in the asymptotic
# range and well above float64 rounding (rk4 at h = 2**-6 is still ~1e-10).
EXPONENTS = {"euler": range(3, 8), "midpoint": range(3, 8), "rk4": range(2, 7)}
T_SPAN = np.array([0.25, 1.75])  # 1.5 = 3 * 2**-1: every 2**-e divides it


def _final_error(problem, method, step_size):
    y0 = problem.initial_value(T_SPAN[0], tf.float64)
    ys = keras_node.odeint(problem.func, y0, T_SPAN, method=method, step_size=step_size)
    return np.max(np.abs(np.asarray(ys)[-1] - problem.exact(T_SPAN)[-1]))


@pytest.mark.parametrize("problem", [RICCATI, TIME_DEPENDENT, LINEAR], ids=lambda p: p.name)
@pytest.mark.parametrize("method", list(EXPONENTS))
def test_fixed_step_order(method, problem):
    """The log-log slope of error vs step size is the method order +- 0.5."""
    exponents = np.array(list(EXPONENTS[method]))
    errors = np.array([_final_error(problem, method, 2.0**-e) for e in exponents])
    assert np.all(errors > 0) and np.all(np.isfinite(errors)), errors
    slope = -np.polyfit(exponents, np.log2(errors), 1)[0]
    assert abs(slope - ORDERS[method]) <= 0.5, (slope, errors)


# The order of an adaptive method's main solution cannot be measured through
# the API (a fixed step size applies to fixed-step methods only), so we check
# tolerance proportionality instead. All the adaptive tableaus advance with the
# higher-order solution (local extrapolation) and control the error per step,
# so the global error is roughly proportional to the tolerance (Hairer, Norsett
# & Wanner I, II.4). Outputs come from the shared quartic interpolant, whose
# error scales as tol**(5/order) (problems.dense_output_scale), so over a
# tolerance ratio of 10**k theory predicts k * min(1, 5/order) decades. We
# require half of them, which leaves room for the loose end not being
# asymptotic yet, while a method whose error ignores the tolerance (or whose
# main solution is of a lower order than its estimator) fails.
TOLERANCE_PAIRS = {
    # method: (loose rtol, tight rtol); atol = rtol * 1e-2
    "dopri5": (1e-4, 1e-8),
    "tsit5": (1e-4, 1e-8),
    "dopri8": (1e-5, 1e-10),
    "bosh3": (1e-3, 1e-6),
    "heun_euler": (1e-2, 1e-5),
}
ADAPTIVE_T = np.linspace(0.0, 3.0, 7)


def _adaptive_error(method, rtol):
    y0 = LINEAR.initial_value(0.0, tf.float64)
    ys = keras_node.odeint(LINEAR.func, y0, ADAPTIVE_T, method=method, rtol=rtol, atol=rtol * 1e-2)
    exact = LINEAR.exact(ADAPTIVE_T)
    return np.max(np.abs(np.asarray(ys) - exact) / (1 + np.abs(exact)))  # the policy's measure


@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_adaptive_error_shrinks_with_tolerance(method):
    assert set(TOLERANCE_PAIRS) == set(ADAPTIVE_METHODS)
    loose, tight = TOLERANCE_PAIRS[method]
    error_loose = _adaptive_error(method, loose)
    error_tight = _adaptive_error(method, tight)
    predicted_decades = np.log10(loose / tight) * min(1.0, 5.0 / ORDERS[method])
    assert error_tight * 10 ** (predicted_decades / 2) <= error_loose, (error_loose, error_tight)
    # And the tight solve is not merely relatively better: it meets the policy.
    span = ADAPTIVE_T[-1] - ADAPTIVE_T[0]
    allowed = error_tolerance(
        tf.float64, rtol=tight, atol=tight * 1e-2, order=ORDERS[method], span=span
    )
    assert error_tight <= allowed, (error_tight, allowed)
