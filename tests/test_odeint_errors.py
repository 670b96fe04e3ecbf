"""Errors of keras_node.odeint (API.md, "Errors"): bad arguments and failing solves.

Message checks are deliberately loose (keywords, a number); every failing
solve uses a small max_num_steps so nothing can hang.
"""

import re

import numpy as np
import pytest
import tensorflow as tf

import keras_node
from conftest import in_regime

Y0 = tf.constant([1.0, 2.0], tf.float64)
T = np.array([0.0, 0.5, 1.0])


def decay(t, y):
    return -y


# --- bad arguments ---------------------------------------------------------------------


def test_unknown_method_lists_valid_methods():
    with pytest.raises(ValueError) as info:
        keras_node.odeint(decay, Y0, T, method="rk45_typo")
    message = str(info.value)
    assert "rk45_typo" in message
    for name in keras_node.METHODS:
        assert name in message


@pytest.mark.parametrize(
    "t, received",
    [
        pytest.param([[0.0, 1.0]], r"\(1, 2\)|\[1, 2\]|2-D|rank|ndim", id="2-D"),
        pytest.param(0.0, r"\(\)|\[\]|scalar|0-D|rank|ndim", id="scalar"),
    ],
)
def test_t_not_1d(t, received):
    with pytest.raises(ValueError, match=r"(?i)\bt\b") as info:
        keras_node.odeint(decay, Y0, t)
    assert re.search(received, str(info.value), re.I), str(info.value)


@pytest.mark.parametrize("t", [[0.0], []], ids=["one", "empty"])
def test_t_too_short(t):
    with pytest.raises(ValueError, match=r"(?i)\bt\b") as info:
        keras_node.odeint(decay, Y0, t)
    assert re.search(r"\b2\b|two|least", str(info.value), re.I), str(info.value)


NOT_MONOTONIC = {
    "zigzag": [0.0, 1.0, 0.5],
    "repeated": [0.0, 0.5, 0.5, 1.0],
    "repeated-decreasing": [1.0, 0.5, 0.5, 0.0],
    "flat": [1.0, 1.0],
}


@pytest.mark.parametrize("as_type", ["list", "numpy", "tensor"])
@pytest.mark.parametrize("case", list(NOT_MONOTONIC))
def test_t_not_strictly_monotonic(case, as_type):
    t = NOT_MONOTONIC[case]
    t = {"list": t, "numpy": np.array(t), "tensor": tf.constant(t, tf.float64)}[as_type]
    with pytest.raises(ValueError, match=r"(?i)monoton|increasing|decreasing") as info:
        keras_node.odeint(decay, Y0, t)
    assert re.search(r"0\.5|1\.0|\b1\b", str(info.value)), str(info.value)


@pytest.mark.parametrize(
    "y0",
    [
        pytest.param(tf.constant([1, 2], tf.int32), id="int32-tensor"),
        pytest.param(np.array([1, 2], np.int64), id="int64-numpy"),
        pytest.param({"a": tf.constant([1.0]), "b": tf.constant([1], tf.int32)}, id="int-leaf"),
    ],
)
def test_non_floating_state(y0):
    with pytest.raises(TypeError, match=r"(?i)int(32|64)") as info:
        keras_node.odeint(lambda t, y: y, y0, T)
    assert re.search(r"(?i)float", str(info.value)), str(info.value)


def test_func_returning_another_shape():
    with pytest.raises(ValueError, match=r"\(3,\)|\[3\]") as info:
        keras_node.odeint(lambda t, y: tf.concat([y, y[:1]], 0), Y0, T)
    assert re.search(r"\(2,\)|\[2\]", str(info.value)), str(info.value)


@pytest.mark.parametrize(
    "func",
    [
        pytest.param(lambda t, y: (y["a"], y["b"]), id="tuple-for-dict"),
        pytest.param(lambda t, y: {"a": y["a"]}, id="missing-key"),
        pytest.param(lambda t, y: {"a": y["a"], "c": y["b"]}, id="renamed-key"),
    ],
)
def test_func_returning_another_structure(func):
    y0 = {"a": tf.constant([1.0, 2.0]), "b": tf.constant(3.0)}
    with pytest.raises(ValueError, match=r"(?i)struct|key|nest|match"):
        keras_node.odeint(func, y0, T)


@pytest.mark.parametrize(
    "tolerance",
    [
        pytest.param({"rtol": -1e-3}, id="rtol"),
        pytest.param({"atol": -1e-6}, id="atol"),
        pytest.param({"rtol": np.array([1e-3, -1e-3])}, id="rtol-component"),
        pytest.param({"atol": {"a": 1e-6, "b": -1.0}}, id="atol-leaf"),
    ],
)
def test_negative_tolerances(tolerance):
    y0 = {"a": tf.constant([1.0, 2.0]), "b": tf.constant([3.0, 4.0])}
    with pytest.raises(ValueError, match=r"(?i)tol") as info:
        keras_node.odeint(lambda t, y: y, y0, T, **tolerance)
    assert "-" in str(info.value), str(info.value)


# --- failing solves ---------------------------------------------------------------------------
#
# Each case: (func, y0, t, kwargs, cause pattern, plausible range of the time
# reached). The ranges exclude the other numbers a message may quote (t[0],
# t[-1], max_num_steps).

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
# A number right after "t" or "time" ("at t=0.5", "Time reached: t = [0.5]"); the
# message may also carry a traceback full of unrelated line numbers.
_TIME_VALUE = r"(?i)(?:\bt\b|\btime\b)[^\w.+-]{0,12}(" + _NUMBER + ")"


def _riccati(t, y):
    return y * y


def _nan_after_half(t, y):
    return tf.where(t > 0.5, tf.fill(tf.shape(y), tf.constant(np.nan, y.dtype)), -y)


FAILURES = {
    # dopri5 needs far more than 5 steps at rtol 1e-10 on [0, 100]; 5 steps of
    # h ~ 0.01-0.1 reach t well inside (0, 4.5).
    "max_num_steps": (
        decay, [1.0], [0.0, 100.0],
        dict(rtol=1e-10, atol=1e-12, max_num_steps=5),
        r"max_num_steps|maximum number of steps|too many steps", (1e-6, 4.5),
    ),
    # Reverse time: the time reached is reported as the user's (negative) time.
    "max_num_steps-reverse": (
        decay, [1.0], [0.0, -100.0],
        dict(rtol=1e-10, atol=1e-12, max_num_steps=5),
        r"max_num_steps|maximum number of steps|too many steps", (-4.5, -1e-6),
    ),
    # Euler on y' = y**2 from y(0) = 1 with h = 0.1 overflows after ~22 steps (t ~ 2.2).
    "non_finite": (
        _riccati, [1.0], [0.0, 3.0],
        dict(method="euler", step_size=0.1, max_num_steps=100),
        r"non-finite|nonfinite|not finite|nan|inf", (1.0, 3.0),
    ),
    # rk4 with a func that returns NaN for t > 0.5.
    "non_finite-func": (
        _nan_after_half, [1.0], [0.0, 1.0],
        dict(method="rk4", step_size=0.1, max_num_steps=100),
        r"non-finite|nonfinite|not finite|nan|inf", (0.35, 0.65),
    ),
    # y' = y**2, y(0) = 1 blows up at t = 1: steps shrink with 1 - t until they
    # vanish against t (~200 steps in float64).
    "step_size_underflow": (
        _riccati, [1.0], [0.0, 2.0],
        dict(max_num_steps=2000),
        r"step.?size|underflow", (0.99, 1.01),
    ),
}


def _failing_solve(case, return_stats):
    func, y0, t, kwargs, _, _ = FAILURES[case]

    def solve():
        return keras_node.odeint(
            func, tf.constant(y0, tf.float64), tf.constant(t, tf.float64),
            return_stats=return_stats, **kwargs,
        )

    return solve


@pytest.mark.parametrize("regime", ["eager", "function"])
@pytest.mark.parametrize("case", list(FAILURES))
def test_failing_solve_raises(case, regime):
    _, _, _, _, cause, (t_low, t_high) = FAILURES[case]
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        in_regime(_failing_solve(case, return_stats=False), regime)()
    message = info.value.message
    assert re.search(cause, message, re.I), message
    times = [float(x) for x in re.findall(_TIME_VALUE, message)]
    assert any(t_low <= x <= t_high for x in times), message


@pytest.mark.parametrize("regime", ["eager", "function"])
def test_failing_solve_raises_with_return_stats(regime):
    with pytest.raises(tf.errors.InvalidArgumentError, match="(?i)max_num_steps|steps"):
        in_regime(_failing_solve("max_num_steps", return_stats=True), regime)()


@pytest.mark.parametrize("case", ["max_num_steps", "non_finite", "step_size_underflow"])
def test_failing_solve_under_xla_returns_nan_and_status(case):
    ys, stats = in_regime(_failing_solve(case, return_stats=True), "xla")()
    assert np.all(np.isnan(np.asarray(ys))), np.asarray(ys)
    assert int(stats["status"]) != 0


def test_adaptive_solve_with_nan_func_fails():
    """A NaN derivative must not be mistaken for a solution (whatever the cause)."""
    with pytest.raises(tf.errors.InvalidArgumentError):
        keras_node.odeint(_nan_after_half, tf.constant([1.0], tf.float64), [0.0, 1.0],
                          max_num_steps=200)


# --- t known only at run time ------------------------------------------------------------------


@pytest.mark.parametrize("case", ["zigzag", "repeated", "repeated-decreasing"])
def test_runtime_t_not_monotonic(case):
    solve = _runtime_t_solver()
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?i)monoton|increasing|decreasing"):
        solve(tf.constant(NOT_MONOTONIC[case], tf.float64))


_RUNTIME_SOLVER = []


def _runtime_t_solver():
    """One traced function shared by the run-time-t tests."""
    if not _RUNTIME_SOLVER:
        _RUNTIME_SOLVER.append(
            tf.function(
                lambda t: keras_node.odeint(decay, Y0, t, max_num_steps=100),
                input_signature=[tf.TensorSpec([None], tf.float64)],
            )
        )
    return _RUNTIME_SOLVER[0]


def test_runtime_t_monotonic_still_works():
    ys = _runtime_t_solver()(tf.constant([0.0, 0.5, 1.0], tf.float64))
    assert tuple(ys.shape) == (3, 2)
    assert np.all(np.isfinite(np.asarray(ys)))
