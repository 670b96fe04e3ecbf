"""keras_node.odeint against the contract (API.md, "Functional solvers").

Accuracy is judged by the tolerance policy in problems.py; nothing here uses
its own epsilon.
"""

import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

import keras_node
from conftest import in_regime
from keras_node.solvers import loop_bodies
from problems import (
    ADAPTIVE_METHODS,
    ALL_PROBLEMS,
    EXP_DECAY,
    FIXED_METHODS,
    STIFF_METHODS,
    LINEAR,
    LINEAR_A,
    NESTED,
    TIME_DEPENDENT,
    assert_close,
    error_tolerance,
    roundoff_tolerance,
    solver_settings,
    to_numpy,
)

ALL_METHODS = ADAPTIVE_METHODS + FIXED_METHODS
FLOAT_DTYPES = [pytest.param(tf.float32, id="float32"), pytest.param(tf.float64, id="float64")]

# 50 output times on [0.25, 1.75], forward and reversed.
T_FORWARD = np.linspace(0.25, 1.75, 50)
TIMES = {"forward": T_FORWARD, "reverse": T_FORWARD[::-1].copy()}
SPAN = 1.5

# Stage counts of the fixed-step tableaus (textbook definitions of the methods).
FIXED_STAGES = {"euler": 1, "midpoint": 2, "rk4": 4}


def _leaves(nest):
    return tf.nest.flatten(nest)


def _check_output_layout(ys, y0, num_times, dtype):
    """Structure kept, each leaf (len(t),) + leaf.shape in `dtype`, ys[0] == y0."""
    tf.nest.assert_same_structure(ys, y0)
    assert type(ys) is type(y0)
    for y, y0_leaf in zip(_leaves(ys), _leaves(y0)):
        assert y.dtype == dtype
        assert tuple(y.shape) == (num_times,) + tuple(y0_leaf.shape)
        np.testing.assert_array_equal(np.asarray(y[0]), np.asarray(y0_leaf))


def test_methods_lists_every_method():
    assert set(keras_node.METHODS) == set(ALL_METHODS + STIFF_METHODS)


# --- every method x dtype x direction, on all exact problems at once -----------------
#
# Compiling a solve dominates its cost, so each (method, dtype, direction)
# solves all six reference problems as ONE state vector: their states
# flattened and stacked (23 components); the right-hand side splits it, calls
# each problem's func (the nested one on its dict) and stacks the results. One
# compile per case. For fixed-step methods this is exactly six separate solves.
# For adaptive ones the error norm is the RMS over all 23 components, which can
# let one problem's error grow by up to sqrt(23 / its size) relative to solving
# it alone; test_each_problem_alone solves each alone (and keeps its structure).

PROBLEMS_BY_NAME = {p.name: p for p in ALL_PROBLEMS}
_LEAF_SHAPES = {
    name: [np.shape(leaf) for leaf in tf.nest.flatten(problem.y0)]
    for name, problem in PROBLEMS_BY_NAME.items()
}


def _slices():
    """name -> slice of the stacked state vector holding that problem."""
    slices, start = {}, 0
    for name, shapes in _LEAF_SHAPES.items():
        size = sum(int(np.prod(shape)) for shape in shapes)
        slices[name] = slice(start, start + size)
        start += size
    return slices


SLICES = _slices()


def _stack(nests):
    """Flatten and concatenate the problems' nests (tensors) into one vector."""
    leaves = [leaf for nest in nests for leaf in tf.nest.flatten(nest)]
    return tf.concat([tf.reshape(leaf, [-1]) for leaf in leaves], 0)


def all_problems_func(t, y):
    derivatives = []
    for name, problem in PROBLEMS_BY_NAME.items():
        part, leaves, start = y[SLICES[name]], [], 0
        for shape in _LEAF_SHAPES[name]:
            size = int(np.prod(shape))
            leaves.append(tf.reshape(part[start:start + size], shape))
            start += size
        derivatives.append(problem.func(t, tf.nest.pack_sequence_as(problem.y0, leaves)))
    return _stack(derivatives)


def _all_initial(t0, dtype):
    return _stack([p.initial_value(t0, dtype) for p in PROBLEMS_BY_NAME.values()])


def _exact_stacked(problem, t):
    """The exact solution of `problem` as (len(t), size): leaves flattened, stacked."""
    return np.concatenate(
        [np.reshape(leaf, (len(t), -1)) for leaf in tf.nest.flatten(problem.exact(t))], axis=1
    )


def _check_stats(stats, method):
    assert {"nfe", "num_steps", "num_rejected", "status"} <= set(stats)
    for name in ("nfe", "num_steps", "num_rejected", "status"):
        assert stats[name].dtype == tf.int32, name
        assert stats[name].shape == (), name
    nfe, steps, rejected = (int(stats[k]) for k in ("nfe", "num_steps", "num_rejected"))
    assert int(stats["status"]) == 0
    assert nfe > 0 and steps > 0 and rejected >= 0
    assert nfe >= steps + rejected  # every attempted step evaluates func at least once
    if method in FIXED_METHODS:
        assert rejected == 0


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("method", ALL_METHODS)
def test_exact_problems(method, dtype, direction):
    t = TIMES[direction]
    y0 = _all_initial(t[0], dtype)
    kwargs, tol = solver_settings(method, dtype, span=SPAN)
    ys, stats = keras_node.odeint(
        all_problems_func, y0, tf.constant(t, dtype), return_stats=True, **kwargs
    )
    _check_output_layout(ys, y0, len(t), dtype)
    _check_stats(stats, method)
    for name, problem in PROBLEMS_BY_NAME.items():
        actual = np.asarray(ys)[:, SLICES[name]]
        assert_close(actual, _exact_stacked(problem, t), tol, err_msg=name)


@pytest.mark.parametrize("problem", ALL_PROBLEMS, ids=lambda p: p.name)
def test_each_problem_alone(problem):
    """Each problem under its own error norm (both directions are covered above)."""
    t = T_FORWARD
    y0 = problem.initial_value(t[0], tf.float64)
    kwargs, tol = solver_settings("dopri5", tf.float64, span=SPAN)
    ys = keras_node.odeint(problem.func, y0, t, **kwargs)
    _check_output_layout(ys, y0, len(t), tf.float64)
    assert_close(to_numpy(ys), problem.exact(t), tol)


def test_return_stats_leaves_the_solution_unchanged():
    t = T_FORWARD
    y0 = LINEAR.initial_value(t[0], tf.float64)
    kwargs, _ = solver_settings("dopri5", tf.float64)
    ys_plain = keras_node.odeint(LINEAR.func, y0, t, **kwargs)
    ys, stats = keras_node.odeint(LINEAR.func, y0, t, return_stats=True, **kwargs)
    np.testing.assert_array_equal(np.asarray(ys), np.asarray(ys_plain))
    assert isinstance(stats, dict)
    _check_stats(stats, "dopri5")


# --- structures, shapes ---------------------------------------------------------


def _nested_as(container):
    """NESTED with its state held as a tuple or list instead of a dict."""

    def to_dict(y):
        return {"decay": y[0], "rot": y[1]}

    def func(t, y):
        dy = NESTED.func(t, to_dict(y))
        return container((dy["decay"], dy["rot"]))

    return func


@pytest.mark.parametrize("container", [tuple, list], ids=["tuple", "list"])
def test_sequence_structures_are_kept(container):
    t = T_FORWARD
    y0_dict = NESTED.initial_value(t[0], tf.float64)
    y0 = container((y0_dict["decay"], y0_dict["rot"]))
    kwargs, tol = solver_settings("dopri5", tf.float64, span=SPAN)
    ys = keras_node.odeint(_nested_as(container), y0, t, **kwargs)
    _check_output_layout(ys, y0, len(t), tf.float64)
    exact = NESTED.exact(t)
    assert_close(to_numpy(ys), container((exact["decay"], exact["rot"])), tol)


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_scalar_state(method):
    t = T_FORWARD
    y0 = tf.constant(np.exp(-t[0]), tf.float64)
    kwargs, tol = solver_settings(method, tf.float64, span=SPAN)
    ys = keras_node.odeint(lambda t, y: -y, y0, t, **kwargs)
    _check_output_layout(ys, y0, len(t), tf.float64)
    assert_close(np.asarray(ys), np.exp(-t), tol)


def test_t_as_list_numpy_or_tensor_give_the_same_result():
    t = T_FORWARD
    y0 = LINEAR.initial_value(t[0], tf.float64)
    kwargs, _ = solver_settings("dopri5", tf.float64)
    results = [
        keras_node.odeint(LINEAR.func, y0, t_in, **kwargs)
        for t_in in (list(t), t, tf.constant(t, tf.float64))
    ]
    for ys in results[1:]:
        np.testing.assert_array_equal(np.asarray(ys), np.asarray(results[0]))


def test_float32_state_with_float64_numpy_times():
    """np.linspace gives float64; func still sees t in y's dtype (float32)."""
    t = T_FORWARD  # float64 numpy
    y0 = TIME_DEPENDENT.initial_value(t[0], tf.float32)
    seen = []

    def func(t, y):
        seen.append((t.dtype, tuple(t.shape), y.dtype))
        return TIME_DEPENDENT.func(t, y)

    kwargs, tol = solver_settings("dopri5", tf.float32, span=SPAN)
    ys = keras_node.odeint(func, y0, t, **kwargs)
    assert ys.dtype == tf.float32
    assert seen and set(seen) == {(tf.float32, (), tf.float32)}
    assert_close(np.asarray(ys), TIME_DEPENDENT.exact(t), tol)


# --- low precision states ---------------------------------------------------------


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
@pytest.mark.parametrize(
    "dtype", [pytest.param(tf.float16, id="float16"), pytest.param(tf.bfloat16, id="bfloat16")]
)
def test_low_precision_state_integrates_in_float32(dtype, method):
    t = T_FORWARD
    y0 = LINEAR.initial_value(t[0], dtype)
    seen = []

    def func(t, y):
        seen.append((t.dtype, y.dtype))
        return LINEAR.func(t, y)

    kwargs, tol = solver_settings(method, dtype, span=SPAN)
    ys = keras_node.odeint(func, y0, t, **kwargs)
    _check_output_layout(ys, y0, len(t), dtype)
    assert seen and set(seen) == {(tf.float32, tf.float32)}
    assert_close(np.asarray(tf.cast(ys, tf.float64)), LINEAR.exact(t), tol)


# --- per-component tolerances ------------------------------------------------------


def _solve_stats(problem, y0, t, **kwargs):
    ys, stats = keras_node.odeint(problem.func, y0, t, return_stats=True, **kwargs)
    return ys, {k: int(v) for k, v in stats.items()}


def test_uniform_tolerance_tensors_match_scalars():
    t = T_FORWARD
    y0 = EXP_DECAY.initial_value(t[0], tf.float64)
    rtol, atol = 1e-6, 1e-8
    ys_ref, stats_ref = _solve_stats(EXP_DECAY, y0, t, rtol=rtol, atol=atol)
    variants = [
        dict(rtol=np.full((3,), rtol), atol=np.full((3,), atol)),
        dict(rtol=tf.constant([rtol], tf.float64), atol=tf.constant([atol] * 3, tf.float64)),
    ]
    for kwargs in variants:
        ys, stats = _solve_stats(EXP_DECAY, y0, t, **kwargs)
        assert stats["num_steps"] == stats_ref["num_steps"], kwargs
        assert_close(np.asarray(ys), np.asarray(ys_ref), roundoff_tolerance(tf.float64))


def test_uniform_tolerance_structures_match_scalars():
    t = T_FORWARD
    y0 = NESTED.initial_value(t[0], tf.float64)
    rtol, atol = 1e-6, 1e-8
    ys_ref, stats_ref = _solve_stats(NESTED, y0, t, rtol=rtol, atol=atol)
    # Leaves may be scalars or tensors broadcastable to the leaf: (2,) -> (2, 2).
    ys, stats = _solve_stats(
        NESTED, y0, t,
        rtol={"decay": rtol, "rot": np.full((2,), rtol)},
        atol={"decay": np.full((3,), atol), "rot": atol},
    )
    assert stats["num_steps"] == stats_ref["num_steps"]
    assert_close(to_numpy(ys), to_numpy(ys_ref), roundoff_tolerance(tf.float64))


@pytest.mark.parametrize("component", [0, 1, 2])
def test_each_rtol_component_is_used(component):
    """A tight rtol on any one component of a decoupled system forces more steps."""
    t = T_FORWARD
    y0 = EXP_DECAY.initial_value(t[0], tf.float64)
    loose = np.full((3,), 1e-3)
    tight = loose.copy()
    tight[component] = 1e-9
    _, stats_loose = _solve_stats(EXP_DECAY, y0, t, rtol=loose, atol=1e-12)
    ys, stats_tight = _solve_stats(EXP_DECAY, y0, t, rtol=tight, atol=1e-12)
    assert stats_tight["num_steps"] > stats_loose["num_steps"]
    # The tight component meets its own tolerance.
    exact = EXP_DECAY.exact(t)[:, component]
    tol = error_tolerance(tf.float64, rtol=1e-9, atol=1e-12, span=SPAN)
    assert_close(np.asarray(ys)[:, component], exact, tol)


def test_each_atol_component_is_used():
    t = T_FORWARD
    y0 = EXP_DECAY.initial_value(t[0], tf.float64)
    _, stats_loose = _solve_stats(EXP_DECAY, y0, t, rtol=1e-3, atol=np.ones(3))
    _, stats_tight = _solve_stats(EXP_DECAY, y0, t, rtol=1e-3, atol=np.array([1.0, 1.0, 1e-12]))
    assert stats_tight["num_steps"] > stats_loose["num_steps"]


@pytest.mark.parametrize("tight_leaf", ["decay", "rot"])
def test_each_tolerance_leaf_is_used(tight_leaf):
    t = T_FORWARD
    y0 = NESTED.initial_value(t[0], tf.float64)
    loose = {"decay": 1e-3, "rot": 1e-3}
    tight = dict(loose, **{tight_leaf: 1e-9})
    _, stats_loose = _solve_stats(NESTED, y0, t, rtol=loose, atol=1e-12)
    _, stats_tight = _solve_stats(NESTED, y0, t, rtol=tight, atol=1e-12)
    assert stats_tight["num_steps"] > stats_loose["num_steps"]


# --- fixed-step specifics -------------------------------------------------------------


def _nonautonomous_np(t, y):
    return np.cos(3.0 * t) * y - 0.5 * y * y


def _nonautonomous_tf(t, y):
    return tf.cos(3.0 * t) * y - 0.5 * y * y


def _rk4_step_np(t0, y0, dt):
    f = _nonautonomous_np
    k1 = f(t0, y0)
    k2 = f(t0 + dt / 2, y0 + dt / 2 * k1)
    k3 = f(t0 + dt / 2, y0 + dt / 2 * k2)
    k4 = f(t0 + dt, y0 + dt * k3)
    return y0 + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


@pytest.mark.parametrize(
    "t", [[0.0, 0.3, 0.45, 1.0], [1.0, 0.6, 0.55, -0.2]], ids=["forward", "reverse"]
)
def test_rk4_without_step_size_takes_one_step_per_interval(t):
    y0 = np.array([0.8, -0.3])
    ys, stats = keras_node.odeint(
        _nonautonomous_tf, tf.constant(y0), t, method="rk4", return_stats=True
    )
    expected = [y0]
    for t0, t1 in zip(t[:-1], t[1:]):
        expected.append(_rk4_step_np(t0, expected[-1], t1 - t0))
    assert_close(np.asarray(ys), np.stack(expected), roundoff_tolerance(tf.float64))
    assert int(stats["num_steps"]) == len(t) - 1
    assert int(stats["num_rejected"]) == 0


@pytest.mark.parametrize("method", FIXED_METHODS)
def test_fixed_step_nfe_grows_by_stages_per_interval(method):
    """step_size=None: one step per interval, so each extra interval costs exactly
    the tableau's stage count in evaluations (any per-solve overhead cancels)."""
    y0 = tf.constant([0.8, -0.3], tf.float64)
    counts = {}
    for n in (4, 7):
        t = np.linspace(0.0, 1.0, n)
        _, stats = keras_node.odeint(_nonautonomous_tf, y0, t, method=method, return_stats=True)
        assert int(stats["num_steps"]) == n - 1
        counts[n] = int(stats["nfe"])
    assert counts[7] - counts[4] == FIXED_STAGES[method] * 3


def _euler_reference(y0, t, step_size):
    """Euler with `step_size`, the last step of each interval shortened."""
    ys, y, steps = [y0], y0, 0
    for t0, t1 in zip(t[:-1], t[1:]):
        direction = np.sign(t1 - t0)
        s = t0
        while s != t1:
            dt = direction * min(step_size, abs(t1 - s))
            y = y + dt * _nonautonomous_np(s, y)
            s = t1 if abs(t1 - (s + dt)) < 1e-12 else s + dt
            steps += 1
        ys.append(y)
    return np.stack(ys), steps


@pytest.mark.parametrize(
    "t", [[0.0, 0.25, 0.6, 0.7], [0.7, 0.6, 0.25, 0.0]], ids=["forward", "reverse"]
)
def test_fixed_step_not_dividing_interval_lands_on_each_time(t):
    y0 = np.array([0.8, -0.3])
    ys, stats = keras_node.odeint(
        _nonautonomous_tf, tf.constant(y0), t, method="euler", step_size=0.1, return_stats=True
    )
    expected, steps = _euler_reference(y0, t, 0.1)
    assert steps == 8  # 0.1+0.1+0.05 | 0.1+0.1+0.1+0.05 | 0.1
    assert int(stats["num_steps"]) == steps
    assert_close(np.asarray(ys), expected, roundoff_tolerance(tf.float64))


# --- max_num_steps -----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dopri5", "euler"])
def test_max_num_steps_bounds_attempted_steps(method):
    """A solve needing exactly m attempts succeeds with max_num_steps=m and fails
    with m - 1 (attempts = accepted + rejected)."""
    t = np.array([0.0, 0.5, 1.0])
    y0 = LINEAR.initial_value(0.0, tf.float64)
    kwargs = {"method": method}
    kwargs.update({"step_size": 0.125} if method == "euler" else {"rtol": 1e-6, "atol": 1e-9})
    ys, stats = keras_node.odeint(LINEAR.func, y0, t, return_stats=True, **kwargs)
    attempts = int(stats["num_steps"]) + int(stats["num_rejected"])
    if method == "euler":
        assert attempts == 8
    ys_m, stats_m = keras_node.odeint(
        LINEAR.func, y0, t, return_stats=True, max_num_steps=attempts, **kwargs
    )
    assert int(stats_m["status"]) == 0
    np.testing.assert_array_equal(np.asarray(ys_m), np.asarray(ys))
    with pytest.raises(tf.errors.InvalidArgumentError):
        keras_node.odeint(LINEAR.func, y0, t, max_num_steps=attempts - 1, **kwargs)


# --- adaptive dense output -------------------------------------------------------------------


# dopri5 (FSAL), bosh3 (low order), dopri8 (high order, not FSAL): one per
# tableau family; every adaptive method runs through the same loop.
@pytest.mark.parametrize("method", ["dopri5", "bosh3", "dopri8"])
def test_output_times_do_not_shorten_adaptive_steps(method):
    """The contract: adaptive control hits every t by interpolation, without
    shortening steps for it. The step sequence is then a function of (func, y0,
    t[0], t[-1], tolerances) only, so 200 output times must leave num_steps and
    num_rejected exactly as with the endpoints alone (and far fewer steps than
    intervals: a solver that stopped at each output would need >= 199)."""
    t_dense = np.linspace(0.0, 3.0, 200)
    y0 = LINEAR.initial_value(0.0, tf.float64)
    kwargs, tol = solver_settings(method, tf.float64, span=3.0)
    ys_ends, stats_ends = keras_node.odeint(
        LINEAR.func, y0, t_dense[[0, -1]], return_stats=True, **kwargs
    )
    ys_dense, stats_dense = keras_node.odeint(
        LINEAR.func, y0, t_dense, return_stats=True, **kwargs
    )
    assert int(stats_dense["num_steps"]) == int(stats_ends["num_steps"])
    assert int(stats_dense["num_rejected"]) == int(stats_ends["num_rejected"])
    assert int(stats_dense["num_steps"]) < len(t_dense) - 1
    assert_close(np.asarray(ys_dense), LINEAR.exact(t_dense), tol)
    assert_close(
        np.asarray(ys_dense)[-1], np.asarray(ys_ends)[-1], roundoff_tolerance(tf.float64)
    )


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_xla_loop_layouts_take_the_same_steps(method, monkeypatch):
    """Under XLA the solver attempts steps in an inner loop between output
    times, except while a tape records (the solve is then replayed, one
    attempt per iteration). Both layouts, and the plain graph, must take the same
    steps and write the same outputs; the times mix many outputs per step
    with several steps per output."""
    layouts = []
    choose = loop_bodies.attempts_in_inner_loop

    def spy(y0):
        layouts.append(choose(y0))
        return layouts[-1]

    monkeypatch.setattr(loop_bodies, "attempts_in_inner_loop", spy)
    t = np.concatenate([np.linspace(0.0, 0.5, 120), [0.75, 1.25, 2.0, 3.0]])
    y0 = LINEAR.initial_value(0.0, tf.float64)
    kwargs, tol = solver_settings(method, tf.float64, span=3.0)

    def solve(y0):
        return keras_node.odeint(LINEAR.func, y0, t, return_stats=True, **kwargs)

    def solve_recorded(y0):
        with tf.GradientTape() as tape:
            tape.watch(y0)
            ys, stats = solve(y0)
            loss = tf.reduce_sum(ys[-1])
        return ys, stats, tape.gradient(loss, y0)

    ys_graph, stats_graph = tf.function(solve, jit_compile=False)(y0)
    ys_inner, stats_inner = tf.function(solve, jit_compile=True)(y0)
    _, _, grad_graph = tf.function(solve_recorded, jit_compile=False)(y0)
    ys_flat, stats_flat, grad_flat = tf.function(solve_recorded, jit_compile=True)(y0)
    # Asked by the plain graph, the XLA solve and the recorded plain graph;
    # the recorded XLA solve replays its attempts, one per iteration,
    # without asking (keras_node/solvers/replay.py).
    assert layouts == [True, True, True]
    for stats in (stats_inner, stats_flat):
        for key in ("nfe", "num_steps", "num_rejected", "status"):
            assert int(stats[key]) == int(stats_graph[key])
    # Fewer steps than the 120 outputs in [0, 0.5] (some step covers several),
    # many more than the 4 intervals after it (some take several steps).
    assert 12 < int(stats_graph["num_steps"]) < 120
    for ys in (ys_inner, ys_flat):
        assert_close(np.asarray(ys), np.asarray(ys_graph), roundoff_tolerance(tf.float64))
    assert_close(np.asarray(ys_graph), LINEAR.exact(t), tol)
    # Gradients through both layouts: d sum(y(3)) / dy0 = expm(3 A)^T 1.
    exact_grad = scipy.linalg.expm(3.0 * LINEAR_A).T @ np.ones(3)
    for grad in (grad_graph, grad_flat):
        assert_close(np.asarray(grad), exact_grad, tol)
    assert_close(np.asarray(grad_flat), np.asarray(grad_graph), roundoff_tolerance(tf.float64))


# --- execution regimes -------------------------------------------------------------------------

REGIME_CASES = {
    # name: (method, problem, dtype, direction)
    "dopri5-linear-float64-forward": ("dopri5", LINEAR, tf.float64, "forward"),
    "rk4-nested-float32-reverse": ("rk4", NESTED, tf.float32, "reverse"),
}


@pytest.mark.parametrize("case", list(REGIME_CASES))
def test_regimes(case, regime):
    method, problem, dtype, direction = REGIME_CASES[case]
    t = TIMES[direction]
    y0 = problem.initial_value(t[0], dtype)
    kwargs, tol = solver_settings(method, dtype, span=SPAN)

    def solve(y0, t):
        return keras_node.odeint(problem.func, y0, t, return_stats=True, **kwargs)

    ys, stats = in_regime(solve, regime)(y0, tf.constant(t, dtype))
    _check_output_layout(ys, y0, len(t), dtype)
    assert int(stats["status"]) == 0
    assert int(stats["num_steps"]) > 0
    assert_close(to_numpy(ys), problem.exact(t), tol)


def test_times_known_only_at_run_time():
    """t with a [None] input signature; both directions through one trace."""
    kwargs, tol = solver_settings("dopri5", tf.float64, span=SPAN)

    signature = [tf.TensorSpec([3], tf.float64), tf.TensorSpec([None], tf.float64)]

    @tf.function(input_signature=signature)
    def solve(y0, t):
        return keras_node.odeint(LINEAR.func, y0, t, **kwargs)

    for t in (T_FORWARD, TIMES["reverse"][:20]):
        y0 = LINEAR.initial_value(t[0], tf.float64)
        ys = solve(y0, tf.constant(t))
        assert tuple(ys.shape) == (len(t), 3)
        np.testing.assert_array_equal(np.asarray(ys[0]), np.asarray(y0))
        assert_close(np.asarray(ys), LINEAR.exact(t), tol)
