"""Reference ODE problems with exact solutions, and the test tolerance policy.

Every problem is `y(t)` with a closed form, valid for all the times the tests
use (t in [-2, 2]). `func(t, y)` is written with TensorFlow ops that work in
any floating dtype; `y0` is the state at t = 0 as float64 numpy (a nest for
the nested problem); `y_exact(t)` returns the exact state at the 1-D times `t`
with a leading time axis, as float64 numpy.

The tests start a solve at any `t[0]` (not only 0) with
`problem.initial_value(t[0], dtype)`, so time-dependent right-hand sides are
exercised away from t = 0 (cos is even, so a t -> -t sign bug would hide at 0).
"""

import dataclasses
from typing import Any, Callable

import numpy as np
import scipy.linalg
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Problem:
    name: str
    func: Callable  # func(t, y) -> dy/dt, TF ops, dtype-generic
    y0: Any  # nest of float64 numpy arrays: the state at t = 0
    y_exact: Callable  # y_exact(times) -> nest, leaves shaped (len(times),) + leaf.shape

    def exact(self, times):
        return self.y_exact(np.asarray(times, dtype=np.float64))

    def initial_value(self, t0, dtype):
        """The exact state at `t0`, as tensors of `dtype` (same nest as y0)."""
        at_t0 = self.exact([float(t0)])
        return tf.nest.map_structure(lambda x: tf.constant(x[0], dtype=dtype), at_t0)

    def __repr__(self):  # short pytest ids
        return self.name


def _cast_like(value, y):
    return tf.constant(value, dtype=y.dtype)


# --- y' = -y ----------------------------------------------------------------
_DECAY_Y0 = np.array([1.0, 2.0, -0.5])

EXP_DECAY = Problem(
    name="exp_decay",
    func=lambda t, y: -y,
    y0=_DECAY_Y0,
    y_exact=lambda t: np.exp(-t)[:, None] * _DECAY_Y0,
)

# --- y' = A y, A stable with a rotation (eigenvalues -0.12 +- 1.50i, -0.36) --
LINEAR_A = np.array([[-0.1, -1.5, 0.2], [1.5, -0.1, 0.0], [0.0, 0.3, -0.4]])
_LINEAR_Y0 = np.array([1.0, 0.0, 0.5])

LINEAR = Problem(
    name="linear",
    func=lambda t, y: tf.linalg.matvec(_cast_like(LINEAR_A, y), y),
    y0=_LINEAR_Y0,
    y_exact=lambda t: np.stack([scipy.linalg.expm(LINEAR_A * ti) @ _LINEAR_Y0 for ti in t]),
)

# --- y' = cos(t) (time-dependent, state-independent) --------------------------
_COS_Y0 = np.array([0.5, -1.0])

TIME_DEPENDENT = Problem(
    name="cos_t",
    func=lambda t, y: tf.cos(t) * tf.ones_like(y),
    y0=_COS_Y0,
    y_exact=lambda t: _COS_Y0 + np.sin(t)[:, None],
)

# --- Riccati y' = y^2, y = y0 / (1 - y0 t): finite for t in [-2, 2] here -----
_RICCATI_Y0 = np.array([0.25, -0.2])

RICCATI = Problem(
    name="riccati",
    func=lambda t, y: y * y,
    y0=_RICCATI_Y0,
    y_exact=lambda t: _RICCATI_Y0 / (1.0 - _RICCATI_Y0 * t[:, None]),
)

# --- y' = 0 ----------------------------------------------------------------------
_ZERO_Y0 = np.array([[0.3, -1.2, 2.0], [0.0, 5.0, -0.7]])

ZERO = Problem(
    name="zero",
    func=lambda t, y: tf.zeros_like(y),
    y0=_ZERO_Y0,
    y_exact=lambda t: np.broadcast_to(_ZERO_Y0, (len(t),) + _ZERO_Y0.shape).copy(),
)

# --- nested state: decoupled decay (shape (3,)) and rotation (shape (2, 2)) -----
# "decay": y' = -k * y; "rot": each row r of the (2, 2) leaf obeys r' = R r,
# i.e. Y' = Y R^T, so Y(t) = Y0 expm(R t)^T.
_NESTED_K = np.array([0.5, 1.0, 2.0])
_NESTED_R = np.array([[0.0, -1.5], [1.5, 0.0]])
_NESTED_Y0 = {
    "decay": np.array([1.0, -2.0, 0.5]),
    "rot": np.array([[1.0, 0.0], [0.3, -0.8]]),
}


def _nested_func(t, y):
    k = _cast_like(_NESTED_K, y["decay"])
    r = _cast_like(_NESTED_R, y["rot"])
    return {"decay": -k * y["decay"], "rot": tf.matmul(y["rot"], r, transpose_b=True)}


def _nested_exact(t):
    return {
        "decay": np.exp(-np.outer(t, _NESTED_K)) * _NESTED_Y0["decay"],
        "rot": np.stack([_NESTED_Y0["rot"] @ scipy.linalg.expm(_NESTED_R * ti).T for ti in t]),
    }


NESTED = Problem(name="nested", func=_nested_func, y0=_NESTED_Y0, y_exact=_nested_exact)

ALL_PROBLEMS = (EXP_DECAY, LINEAR, TIME_DEPENDENT, RICCATI, ZERO, NESTED)


# =============================================================================
# Tolerance policy
# =============================================================================
#
# A test compares a solution `y` with the exact `y*` component-wise as
#
#     |y - y*| <= tol * (1 + |y*|)          (np.testing.assert_allclose(rtol=tol, atol=tol))
#
# with `tol = error_tolerance(...)`:
#
#     tol = C * max(1, T) * max(scale, ROUNDOFF_ULPS * eps(compute dtype)) + eps(dtype)
#
# - `scale` is what the method promises: for an adaptive method the solver
#   tolerance max(rtol, atol); for a fixed-step method of order p the
#   truncation error scale step_size**p.
# - C = 10. The adaptive controller bounds each step's *local* error
#   estimate by ~tolerance; the global error is the sum of propagated local
#   errors. All tableaus here advance with the higher-order solution (local
#   extrapolation), so the true local error is far below the estimate and,
#   on the mild (Lipschitz <= ~2) reference problems, global/tolerance stays
#   O(1); the factor 10 is the usual margin (torchdiffeq/diffrax tests use
#   10-100x). For fixed-step methods C covers the error constant
#   |y^(p+1)| T e^{LT} / (p+1)! of the reference problems. C was checked, before
#   keras_node existed, against scipy's RK45/RK23 and a numpy RK4/midpoint/
#   Euler on the same problems and tolerances, passing with >= 3x margin.
# - Interpolation: every adaptive method reaches the output times through one
#   shared quartic (4th-order) interpolant (STYLE.md B6, as torchdiffeq), whose
#   error over a step h is O(h**5). The controller picks h ~ tol**(1/order), so
#   outputs are only accurate to ~ tol**(5/order): for dopri8 (order 8) the
#   scale is tol**(5/8), not tol (for order <= 5 this changes nothing).
# - max(1, T), T the length of the time span: global error (phase drift on the
#   oscillatory problems) grows about linearly with the span.
# - ROUNDOFF_ULPS * eps: the floor set by rounding, accumulated over O(100)
#   steps, in the dtype the solve runs in (float32 for float16/bfloat16).
# - + eps(dtype): the final cast of a float16/bfloat16 result (negligible for
#   float32/float64).
#
# Solver tolerances are picked from the method order so that every method
# takes a similar, modest number of steps (h ~ rtol**(1/order) ~ 0.03), with a
# floor that float32 arithmetic can resolve.

C_TOLERANCE = 10.0
ROUNDOFF_ULPS = 100.0
INTERPOLANT_ORDER = 4

ORDERS = {
    "euler": 1,
    "midpoint": 2,
    "rk4": 4,
    "heun_euler": 2,
    "bosh3": 3,
    "dopri5": 5,
    "tsit5": 5,
    "dopri8": 8,
}
ADAPTIVE_METHODS = ("dopri5", "tsit5", "bosh3", "heun_euler", "dopri8")
FIXED_METHODS = ("euler", "midpoint", "rk4")
# Left out of the generic parametrizations (one Jacobian and six linear
# solves per step make each case slow for what it would add): rodas4 has its
# own tests in test_rodas.py, the exact problems included.
STIFF_METHODS = ("rodas4",)

# Fixed step sizes (powers of two, exact in binary): error scale h**order is
# 3.9e-3 (euler), 6.1e-5 (midpoint), 9.5e-7 (rk4); a few hundred steps at most.
FIXED_STEP_SIZES = {1: 2.0**-8, 2: 2.0**-7, 4: 2.0**-5}

_EPS = {
    tf.float16: 2.0**-10,
    tf.bfloat16: 2.0**-7,
    tf.float32: 2.0**-23,
    tf.float64: 2.0**-52,
}


def eps(dtype):
    return _EPS[tf.as_dtype(dtype)]


def compute_dtype(dtype):
    """The dtype a solve runs in: float16/bfloat16 states integrate in float32."""
    dtype = tf.as_dtype(dtype)
    return tf.float32 if dtype in (tf.float16, tf.bfloat16) else dtype


def roundoff_tolerance(dtype):
    """Tolerance for the same arithmetic done two ways (no truncation error)."""
    return ROUNDOFF_ULPS * eps(compute_dtype(dtype)) + eps(dtype)


def dense_output_scale(tol, order):
    """Error scale of interpolated outputs of an adaptive method of `order`."""
    return max(tol, tol ** ((INTERPOLANT_ORDER + 1) / order))


def error_tolerance(dtype, *, rtol=0.0, atol=0.0, order=None, step_size=None, span=1.0):
    """Allowed error vs the exact solution (see the policy above).

    Fixed-step: give `order` and `step_size`. Adaptive: give `rtol`, `atol` and
    the method `order` (omit `order` only for order <= 5).
    """
    if step_size is not None:
        scale = float(step_size) ** order
    else:
        scale = max(float(np.max(rtol)), float(np.max(atol)))
        if order is not None:
            scale = dense_output_scale(scale, order)
    floor = ROUNDOFF_ULPS * eps(compute_dtype(dtype))
    return C_TOLERANCE * max(1.0, abs(span)) * max(scale, floor) + eps(dtype)


def solver_tolerances(method, dtype):
    """(rtol, atol) the tests give an adaptive method in `dtype`."""
    floor = 1e-12 if compute_dtype(dtype) == tf.float64 else 1e-5
    rtol = max(10.0 ** (-1.5 * ORDERS[method]), floor)
    return rtol, rtol * 1e-2


def solver_settings(method, dtype, span=1.0):
    """(odeint keyword arguments, allowed error) for `method` in `dtype`."""
    order = ORDERS[method]
    if method in FIXED_METHODS:
        step_size = FIXED_STEP_SIZES[order]
        kwargs = {"method": method, "step_size": step_size}
        return kwargs, error_tolerance(dtype, order=order, step_size=step_size, span=span)
    rtol, atol = solver_tolerances(method, dtype)
    kwargs = {"method": method, "rtol": rtol, "atol": atol}
    return kwargs, error_tolerance(dtype, rtol=rtol, atol=atol, order=order, span=span)


def to_numpy(nest):
    return tf.nest.map_structure(lambda x: np.asarray(x), nest)


def assert_close(actual, expected, tol, err_msg=""):
    """Every leaf of `actual` within `tol * (1 + |expected|)` of `expected`."""
    tf.nest.assert_same_structure(actual, expected)
    for a, e in zip(tf.nest.flatten(actual), tf.nest.flatten(expected)):
        a = np.asarray(a).astype(np.float64)
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol, err_msg=err_msg)


def central_differences(value_of, x, eps=1e-6):
    """The gradient of the scalar `value_of(x)` at the array `x` by central
    differences, one component at a time (an independent reference)."""
    gradient = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        bump = np.zeros_like(x)
        bump[index] = eps
        gradient[index] = (value_of(x + bump) - value_of(x - bump)) / (2 * eps)
    return gradient
