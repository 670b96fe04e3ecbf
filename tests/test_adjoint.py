"""keras_node.odeint_adjoint against the contract (API.md, "Functional solvers").

Part 1: three-way gradients. For y0, every value of t and the variables,
the adjoint gradient is compared with direct backpropagation through
`keras_node.odeint` and with central finite differences of `odeint` at a
much tighter tolerance (and with the exact gradient where one is known), on
a linear system, MLP vector fields (closure, Keras layer, tf.Module), a loss
on several output times, a nested state, decreasing times and a
time-dependent field; with the seminorm on and off.
Part 2: which variables get gradients (zero, not None, for variables that do
not affect the loss). Part 3: calling conventions, tf.function, XLA,
model.fit, no retracing. Part 4: backward statistics and backward failures
(raise eagerly and in tf.function, NaN under XLA). Part 5: the adjoint_*
settings.

Tolerance policy for gradients (everything in float64)
-------------------------------------------------------
Gradients come from solves at rtol = atol = SOLVER_TOL = 1e-10. Each of the
adjoint and backprop gradients is then an approximation of the exact
gradient with an error of order C * SOLVER_TOL * |gradient| (the adjoint adds
the backward solve at the same tolerance), C ~ 10-100 on these mild problems
(Lipschitz <= ~3, spans <= 2). So adjoint, backprop and exact gradients must
agree within GRAD_TOL = 1e-7 = 1000 * SOLVER_TOL, component-wise as
|g - g_ref| <= GRAD_TOL * max|g_ref| (the scale of the gradient array). Errors
of a wrong formula (a missing term, a sign, a mis-ordered time) are O(1).

One exception: backprop's dL/dt. Backpropagation differentiates the solver's
operations, and an output time enters them only through the dense-output
interpolant, whose time derivative is accurate to O(h**4) (h the local step,
~1e-2 here), not to the solver tolerance; the adjoint uses f(t_i, y_i)
directly. So backprop's time gradient is compared with the adjoint's at
BACKPROP_T_TOL = 1e-5 only, while the adjoint's time gradient is held to
GRAD_TOL against the exact gradient and to FD_TOL against finite differences.

Finite differences are central, along one random unit direction per input
group (y0, t, variables), with step FD_STEP = 1e-5, from `odeint` solves at
rtol = atol = FD_SOLVER_TOL = 1e-12: truncation ~ FD_STEP**2 * |L'''| ~ 1e-10,
solve noise ~ FD_SOLVER_TOL * |L| / FD_STEP ~ 1e-7 at worst (the adaptive step
sequence may change between the two solves). So FD_TOL = 1e-6 relative to the
norm of the gradient.

Measured (dopri5, TF 2.21, CPU), worst case over the cases below: adjoint vs
backprop 5e-9 (y0, variables) and 2e-7 (t: backprop's interpolant error);
adjoint vs exact 4e-10; adjoint vs finite differences 6e-9 (backprop's t vs
finite differences: 2e-7, so the adjoint's time gradient is the better one).
"""

import dataclasses
from typing import Any, Callable, Optional

import keras
import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

import keras_node
from conftest import in_regime

SOLVER_TOL = 1e-10
GRAD_TOL = 1e-7
FD_SOLVER_TOL = 1e-12
FD_STEP = 1e-5
FD_TOL = 1e-6
BACKPROP_T_TOL = 1e-5

F64 = tf.float64


def _rng(seed):
    return np.random.default_rng(seed)


# =============================================================================
# Gradient cases
# =============================================================================


@dataclasses.dataclass(eq=False)
class GradCase:
    """One problem for the three-way gradient comparison.

    `weights` has the structure of `y0`, each leaf with a leading time axis
    of length len(t): the loss is sum over leaves and times of weights * ys
    (zero weights at times the loss does not use).
    `exact(case)` optionally returns the exact (grads_y0 flat list, grad_t,
    grads_vars list) as numpy.
    """

    name: str
    func: Callable
    y0: Any  # nest of float64 numpy arrays
    t: np.ndarray
    variables: tuple
    weights: Any
    exact: Optional[Callable] = None

    def __repr__(self):
        return self.name

    def loss(self, ys):
        terms = [tf.reduce_sum(tf.constant(w) * y) for w, y in
                 zip(tf.nest.flatten(self.weights), tf.nest.flatten(ys))]
        return tf.add_n(terms)


def _weights_like(y0, num_times, rng, times_used):
    """Random loss weights, non-zero only at the time indices `times_used`."""
    def one(leaf):
        w = np.zeros((num_times,) + np.shape(leaf))
        for i in times_used:
            w[i] = rng.normal(size=np.shape(leaf))
        return w

    return tf.nest.map_structure(one, y0)


# --- (a) linear y' = A y, A a variable: exact gradients ----------------------
_A0 = np.array([[-0.1, -1.5, 0.2], [1.5, -0.1, 0.0], [0.0, 0.3, -0.4]])
_LINEAR_A = tf.Variable(_A0, name="linear_A")


def linear_field(t, y):
    return tf.linalg.matvec(_LINEAR_A, y)


def _linear_exact(case):
    t0, t1 = case.t
    tau = t1 - t0
    a = _LINEAR_A.numpy()
    expm = scipy.linalg.expm(a * tau)
    y0, w0, w1 = case.y0, case.weights[0], case.weights[1]
    y1 = expm @ y0
    grad_y0 = w0 + expm.T @ w1
    grad_t = np.array([-w1 @ expm @ a @ y0, w1 @ a @ y1])
    grad_a = np.zeros_like(a)
    for i in range(3):
        for j in range(3):
            e = np.zeros_like(a)
            e[i, j] = 1.0
            frechet = scipy.linalg.expm_frechet(a * tau, e * tau, compute_expm=False)
            grad_a[i, j] = w1 @ frechet @ y0
    return [grad_y0], grad_t, [grad_a]


# --- (f) time-dependent y' = k cos(t) y: exact, dL/dt0 non-trivial -----------
_TD_K = tf.Variable([0.7, -1.2, 2.0], dtype=F64, name="td_k")


def time_dependent_field(t, y):
    return _TD_K * tf.cos(t) * y


def _time_dependent_exact(case):
    t0, t1 = case.t
    k = _TD_K.numpy()
    y1 = case.y0 * np.exp(k * (np.sin(t1) - np.sin(t0)))
    w0, w1 = case.weights[0], case.weights[1]
    grad_y0 = w0 + w1 * y1 / case.y0
    grad_t = np.array([-np.sum(w1 * k * np.cos(t0) * y1), np.sum(w1 * k * np.cos(t1) * y1)])
    grad_k = w1 * y1 * (np.sin(t1) - np.sin(t0))
    return [grad_y0], grad_t, [grad_k]


# --- (b) MLP vector fields: closure over variables, Keras layer, tf.Module ---
_r = _rng(1)
_MLP_VARS = (
    tf.Variable(_r.normal(size=(3, 16)) / np.sqrt(3), name="mlp_w1"),
    tf.Variable(_r.normal(size=(16,)) * 0.3, name="mlp_b1"),
    tf.Variable(_r.normal(size=(16, 3)) / 4.0, name="mlp_w2"),
    tf.Variable(_r.normal(size=(3,)) * 0.3, name="mlp_b2"),
)
_MLP_TIME = tf.constant(_r.normal(size=(16,)))  # time enters the hidden layer


def mlp_field(t, y):
    w1, b1, w2, b2 = _MLP_VARS
    return tf.matmul(tf.tanh(tf.matmul(y, w1) + b1 + t * _MLP_TIME), w2) + b2


class MLPLayer(keras.layers.Layer):
    """A time-dependent MLP field as a Keras layer: call(t, y)."""

    def __init__(self, width=16, with_unused=False, **kwargs):
        super().__init__(dtype="float64", **kwargs)
        self.hidden = keras.layers.Dense(width, dtype="float64")
        self.out = keras.layers.Dense(3, dtype="float64")
        self.unused = keras.layers.Dense(3, dtype="float64") if with_unused else None

    def build(self, input_shape=None):
        self.hidden.build((None, 3))
        self.out.build((None, self.hidden.units))
        if self.unused is not None:
            self.unused.build((None, 3))
        self.built = True

    def call(self, t, y):
        return self.out(tf.tanh(self.hidden(y) + t))


class MLPModule(tf.Module):
    """A time-dependent MLP field as a tf.Module: __call__(t, y)."""

    def __init__(self, seed):
        super().__init__()
        r = _rng(seed)
        self.w1 = tf.Variable(r.normal(size=(3, 16)) / np.sqrt(3))
        self.b1 = tf.Variable(r.normal(size=(16,)) * 0.3)
        self.w2 = tf.Variable(r.normal(size=(16, 3)) / 4.0)

    def __call__(self, t, y):
        return tf.matmul(tf.tanh(tf.matmul(y, self.w1) + self.b1 + 0.5 * t), self.w2) - 0.1 * y


def _keras_layer():
    tf.random.set_seed(3)  # Keras initialisers draw from the global seed
    layer = MLPLayer()
    layer.build()
    return layer


_MLP_LAYER = _keras_layer()
_MLP_MODULE = MLPModule(seed=5)


# --- (d) nested state: a damped nonlinear oscillator as a dict ---------------
_NESTED_K = tf.Variable(_rng(7).normal(size=(3, 3)) * 0.5 + np.eye(3), name="nested_k")
_NESTED_C = tf.Variable([0.3, 0.1, 0.2], dtype=F64, name="nested_c")


def nested_field(t, y):
    return {"x": y["v"], "v": -tf.tanh(tf.matmul(y["x"], _NESTED_K)) - _NESTED_C * y["v"]}


def _cases():
    r = _rng(11)
    y_mlp = r.normal(size=(2, 3))
    cases = []

    def add(name, func, y0, t, variables, times_used=None, exact=None):
        t = np.asarray(t, dtype=np.float64)
        used = times_used if times_used is not None else (0, len(t) - 1)
        weights = _weights_like(y0, len(t), r, used)
        cases.append(GradCase(name, func, y0, t, tuple(variables), weights, exact))

    add("linear", linear_field, np.array([1.0, -0.5, 0.5]), [0.2, 1.7], [_LINEAR_A],
        exact=_linear_exact)
    add("time_dependent", time_dependent_field, np.array([0.5, 1.0, -0.8]), [0.4, 1.9], [_TD_K],
        exact=_time_dependent_exact)
    add("mlp_function", mlp_field, y_mlp, [0.0, 1.0], _MLP_VARS)
    add("mlp_keras_layer", _MLP_LAYER, y_mlp, [0.0, 1.0], _MLP_LAYER.trainable_variables)
    add("mlp_tf_module", _MLP_MODULE, y_mlp, [0.0, 1.0], _MLP_MODULE.trainable_variables)
    add("several_output_times", mlp_field, y_mlp, [0.0, 0.3, 0.9, 1.4, 2.0], _MLP_VARS,
        times_used=range(5))
    add("nested_dict_state", nested_field,
        {"x": r.normal(size=(2, 3)), "v": r.normal(size=(2, 3))}, [0.0, 0.6, 1.5],
        [_NESTED_K, _NESTED_C], times_used=(0, 1, 2))
    add("decreasing_t", mlp_field, y_mlp, [1.5, 0.8, 0.3, -0.2], _MLP_VARS, times_used=(0, 1, 2, 3))
    return cases


CASES = _cases()


# =============================================================================
# Helpers
# =============================================================================


def _to_numpy(x):
    return None if x is None else np.asarray(x)


def _gradients(solve, case, **options):
    """(grads_y0 flat list, grad_t, grads_vars list) of case.loss, as numpy."""
    y0 = tf.nest.map_structure(tf.constant, case.y0)
    t = tf.constant(case.t)
    with tf.GradientTape() as tape:
        tape.watch(tf.nest.flatten(y0) + [t])
        ys = solve(case.func, y0, t, rtol=SOLVER_TOL, atol=SOLVER_TOL, **options)
        loss = case.loss(ys)
    g_y0, g_t, g_vars = tape.gradient(loss, [tf.nest.flatten(y0), t, list(case.variables)])
    return [_to_numpy(g) for g in g_y0], _to_numpy(g_t), [_to_numpy(g) for g in g_vars]


def _fd_loss(case, d_y0, d_t, d_vars, eps):
    """case.loss of an odeint solve with every input moved by eps * direction."""
    base = [np.array(v) for v in case.variables]
    try:
        for v, b, d in zip(case.variables, base, d_vars):
            v.assign(b + eps * d)
        y0 = tf.nest.map_structure(lambda y, d: tf.constant(y + eps * d), case.y0, d_y0)
        ys = keras_node.odeint(case.func, y0, tf.constant(case.t + eps * d_t),
                               rtol=FD_SOLVER_TOL, atol=FD_SOLVER_TOL)
        return float(case.loss(ys))
    finally:
        for v, b in zip(case.variables, base):
            v.assign(b)


def _unit_directions(case, seed):
    r = _rng(seed)

    def unit(shape):
        d = r.normal(size=shape)
        return d / np.linalg.norm(d)

    return (tf.nest.map_structure(lambda y: unit(np.shape(y)), case.y0), unit(case.t.shape),
            [unit(tuple(v.shape)) for v in case.variables])


def _finite_differences(case):
    """Central directional derivatives, one per input group, with the directions."""
    d_y0, d_t, d_vars = _unit_directions(case, seed=123)
    zero_y0 = tf.nest.map_structure(np.zeros_like, d_y0)
    zero_vars = [np.zeros_like(d) for d in d_vars]
    groups = {
        "y0": (d_y0, np.zeros_like(d_t), zero_vars),
        "t": (zero_y0, d_t, zero_vars),
        "variables": (zero_y0, np.zeros_like(d_t), d_vars),
    }
    derivatives = {}
    for name, directions in groups.items():
        plus = _fd_loss(case, *directions, FD_STEP)
        minus = _fd_loss(case, *directions, -FD_STEP)
        derivatives[name] = (plus - minus) / (2 * FD_STEP)
    return derivatives, (tf.nest.flatten(d_y0), d_t, d_vars)


_REFERENCES = {}


def _references(case):
    """Backprop gradients and finite differences, computed once per case."""
    if case.name not in _REFERENCES:
        _REFERENCES[case.name] = (_gradients(keras_node.odeint, case), _finite_differences(case))
    return _REFERENCES[case.name]


def _assert_grads_close(actual, expected, tol, what):
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a is not None, f"{what}[{i}]: gradient is None"
        scale = max(float(np.max(np.abs(e))), 1e-300)
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol * scale, err_msg=f"{what}[{i}]")


def _directional(grads, directions):
    return sum(float(np.sum(g * d)) for g, d in zip(grads, directions))


# =============================================================================
# Part 1: three-way gradients
# =============================================================================


# The seminorm only changes the backward error norm: every case with it,
# and the full norm on the cases whose state or times differ in kind.
_FULL_NORM_CASES = ("linear", "nested_dict_state", "decreasing_t")
_GRADIENT_RUNS = [pytest.param(c, True, id=f"{c.name}-seminorm") for c in CASES] + [
    pytest.param(c, False, id=f"{c.name}-fullnorm") for c in CASES if c.name in _FULL_NORM_CASES]


@pytest.mark.parametrize("case, seminorm", _GRADIENT_RUNS)
def test_adjoint_matches_backprop_finite_differences_and_exact(case, seminorm):
    adj_y0, adj_t, adj_vars = _gradients(keras_node.odeint_adjoint, case, adjoint_seminorm=seminorm)
    (bp_y0, bp_t, bp_vars), (fd, (d_y0, d_t, d_vars)) = _references(case)

    _assert_grads_close(adj_y0, bp_y0, GRAD_TOL, "dL/dy0 adjoint vs backprop")
    _assert_grads_close([adj_t], [bp_t], BACKPROP_T_TOL, "dL/dt adjoint vs backprop")
    _assert_grads_close(adj_vars, bp_vars, GRAD_TOL, "dL/dvariables adjoint vs backprop")

    for name, grads, directions in (("y0", adj_y0, d_y0), ("t", [adj_t], [d_t]),
                                    ("variables", adj_vars, d_vars)):
        norm = np.sqrt(sum(float(np.sum(g * g)) for g in grads))
        assert abs(_directional(grads, directions) - fd[name]) <= FD_TOL * max(norm, 1e-12), (
            f"{name}: adjoint directional derivative {_directional(grads, directions)!r} "
            f"vs finite differences {fd[name]!r}"
        )

    if case.exact is not None:
        ex_y0, ex_t, ex_vars = case.exact(case)
        _assert_grads_close(adj_y0, ex_y0, GRAD_TOL, "dL/dy0 adjoint vs exact")
        _assert_grads_close([adj_t], [ex_t], GRAD_TOL, "dL/dt adjoint vs exact")
        _assert_grads_close(adj_vars, ex_vars, GRAD_TOL, "dL/dvariables adjoint vs exact")


def test_exact_gradients_are_non_trivial():
    # Guards the test above against vacuous cases: dL/dt0 and every variable
    # gradient of the exact problems are far from zero.
    for case in CASES:
        if case.exact is None:
            continue
        _, grad_t, grads_vars = case.exact(case)
        assert abs(grad_t[0]) > 0.05, case.name
        assert all(np.max(np.abs(g)) > 0.05 for g in grads_vars), case.name


# =============================================================================
# Part 2: which variables get gradients
# =============================================================================

_READ_BUT_UNUSED = tf.Variable([1.0, 2.0], dtype=F64, name="read_but_unused")
_DECAY_W = tf.Variable([0.5, 1.5], dtype=F64, name="decay_w")


def decay_field(t, y):
    # Shared by the tests of this part (one compiled solve for all of them).
    _ = _READ_BUT_UNUSED.read_value()  # read, but the output does not depend on it
    return -_DECAY_W * y


_DECAY_W_GRAD = -np.array([1.0, -2.0]) * np.exp(-np.array([0.5, 1.5]))  # d/dw sum(y0 exp(-w))


def _loss_and_grads(func, wrt, **options):
    y0 = tf.constant([1.0, -2.0], F64)
    with tf.GradientTape() as tape:
        ys = keras_node.odeint_adjoint(func, y0, [0.0, 1.0], rtol=1e-8, atol=1e-8, **options)
        loss = tf.reduce_sum(ys[-1])
    return tape.gradient(loss, wrt)


def test_variable_read_without_effect_gets_zero_gradient():
    g_unused, g_w = _loss_and_grads(decay_field, [_READ_BUT_UNUSED, _DECAY_W])
    assert g_unused is not None, "a variable func reads must get a gradient (zero), not None"
    np.testing.assert_array_equal(np.asarray(g_unused), [0.0, 0.0])
    np.testing.assert_allclose(g_w, _DECAY_W_GRAD, rtol=1e-6)


_NOT_READ = tf.Variable([3.0], dtype=F64, name="not_read")


def test_variable_passed_but_not_read_gets_zero_gradient():
    # API.md: the variables are `variables=` when given. One that func never
    # reads has no effect on the loss, so its gradient is zero (as in
    # torchdiffeq's adjoint_params), not None.
    g_not_read, g_w = _loss_and_grads(decay_field, [_NOT_READ, _DECAY_W],
                                      variables=[_NOT_READ, _DECAY_W, _READ_BUT_UNUSED])
    np.testing.assert_allclose(g_w, _DECAY_W_GRAD, rtol=1e-6)
    assert g_not_read is not None, (
        "a variable passed in variables= but not read by func got a None gradient (expected zeros)"
    )
    np.testing.assert_array_equal(np.asarray(g_not_read), [0.0])


def test_unused_sublayer_of_keras_layer_gets_zero_gradient():
    # API.md: for a Keras layer the variables are func.trainable_variables,
    # which include a sublayer that call() never uses (torchdiffeq
    # TestCompareAdjointGradient): its gradient is zero, the others are not.
    tf.random.set_seed(4)
    layer = MLPLayer(width=8, with_unused=True)
    layer.build()
    y0 = tf.constant(_rng(2).normal(size=(2, 3)))
    with tf.GradientTape() as tape:
        ys = keras_node.odeint_adjoint(layer, y0, [0.0, 1.0], rtol=1e-7, atol=1e-7)
        loss = tf.reduce_sum(ys[-1] ** 2)
    grads = tape.gradient(loss, layer.trainable_variables)
    names = [v.path for v in layer.trainable_variables]
    unused = {v.path for v in layer.unused.trainable_variables}
    for name, g in zip(names, grads):
        assert g is not None, f"gradient of {name} is None"
        if name in unused:
            np.testing.assert_array_equal(np.asarray(g), 0.0, err_msg=name)
        else:
            assert np.any(np.asarray(g) != 0.0), name


# =============================================================================
# Part 3: calling conventions, regimes, model.fit, compile cache
# =============================================================================

_KW_A = tf.constant([[-0.5, 1.0], [-1.0, -0.5]], F64)


def _kw_field(t, y):
    return tf.linalg.matvec(_KW_A, y)


def test_keyword_arguments_and_return_stats():
    y0 = tf.constant([1.0, 0.5], F64)
    t = tf.constant([0.0, 0.5, 1.0], F64)
    options = dict(method="dopri5", rtol=1e-9, atol=1e-9, first_step=0.01, max_num_steps=500,
                   adjoint_method="dopri5", adjoint_rtol=1e-9, adjoint_atol=1e-9,
                   adjoint_seminorm=True, adjoint_checkpoints=2)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([y0, t])
        ys_kw, stats = keras_node.odeint_adjoint(func=_kw_field, y0=y0, t=t, return_stats=True,
                                                 **options)
        ys_pos = keras_node.odeint_adjoint(_kw_field, y0, t, **options)
        loss_kw = tf.reduce_sum(ys_kw[-1])
        loss_pos = tf.reduce_sum(ys_pos[-1])
    np.testing.assert_array_equal(ys_kw, ys_pos)
    assert set(stats) == {"nfe", "num_steps", "num_rejected", "status"}
    assert int(stats["status"]) == 0 and int(stats["nfe"]) > 0 and int(stats["num_steps"]) > 0
    for g_kw, g_pos in zip(tape.gradient(loss_kw, [y0, t]), tape.gradient(loss_pos, [y0, t])):
        np.testing.assert_array_equal(g_kw, g_pos)
    exact = scipy.linalg.expm(_KW_A.numpy() * 1.0).T @ np.ones(2)
    np.testing.assert_allclose(tape.gradient(loss_kw, y0), exact, rtol=1e-7)


def test_settings_are_keyword_only():
    with pytest.raises(TypeError):
        keras_node.odeint_adjoint(_kw_field, tf.constant([1.0, 0.5], F64), [0.0, 1.0], None)


# The regime test: a time-dependent MLP closing over variables, with y0 and
# t as arguments of the (possibly compiled) function, so under tf.function
# the direction of t is only known at run time.
_REGIME_VARS = (
    tf.Variable(_rng(21).normal(size=(3, 8)) / np.sqrt(3)),
    tf.Variable(_rng(22).normal(size=(8, 3)) / np.sqrt(8)),
)


def regime_field(t, y):
    w1, w2 = _REGIME_VARS
    return tf.matmul(tf.tanh(tf.matmul(y, w1) + t), w2)


def _regime_gradients(solve):
    def grads(y0, t):
        with tf.GradientTape() as tape:
            tape.watch([y0, t])
            ys = solve(regime_field, y0, t, rtol=1e-9, atol=1e-9)
            loss = tf.reduce_sum(ys[-1] ** 2) + tf.reduce_sum(ys[1])
        return tape.gradient(loss, [y0, t] + list(_REGIME_VARS))

    return grads


_REGIME_Y0 = tf.constant(_rng(23).normal(size=(4, 3)))
_REGIME_T = tf.constant([0.0, 0.6, 1.2], F64)


_REGIME_REFERENCE = []


def test_gradients_in_each_regime(regime):
    actual = in_regime(_regime_gradients(keras_node.odeint_adjoint), regime)(_REGIME_Y0, _REGIME_T)
    if not _REGIME_REFERENCE:  # eager backprop, once
        _REGIME_REFERENCE.extend(_regime_gradients(keras_node.odeint)(_REGIME_Y0, _REGIME_T))
    expected = _REGIME_REFERENCE
    names = ["y0", "t", "w1", "w2"]
    for name, a, e in zip(names, actual, expected):
        assert a is not None, f"{regime}: gradient of {name} is None"
        # 1e-9 solves: the same policy as GRAD_TOL, scaled by the looser tolerance.
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(e))),
                                   err_msg=f"{regime}: {name}")


class AdjointRegressor(keras.Model):
    """h(1) of a tiny ODE with a Dense field (called through odeint_adjoint), then a head."""

    def __init__(self):
        super().__init__()
        self.field = keras.layers.Dense(4, activation="tanh")
        self.head = keras.layers.Dense(1)

    def build(self, input_shape):
        self.field.build(input_shape)
        self.head.build(input_shape)
        self.built = True

    def _dynamics(self, t, h):
        return self.field(h)

    def call(self, x):
        ys = keras_node.odeint_adjoint(self._dynamics, x, [0.0, 1.0], rtol=1e-4, atol=1e-6,
                                       variables=self.field.trainable_variables)
        return self.head(ys[-1])


@pytest.mark.auto_jit
def test_model_fit_trains_the_vector_field():
    tf.random.set_seed(0)
    x = _rng(31).normal(size=(64, 4)).astype("float32")
    y = np.sum(np.sin(x), axis=1, keepdims=True).astype("float32")
    model = AdjointRegressor()
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    model.build((None, 4))
    before = [np.array(v) for v in model.field.trainable_variables]
    history = model.fit(x, y, batch_size=16, epochs=4, verbose=0)
    after = [np.array(v) for v in model.field.trainable_variables]
    losses = history.history["loss"]
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    for b, a in zip(before, after):
        assert np.all(np.isfinite(a))
        assert np.max(np.abs(a - b)) > 1e-3, "the ODE field's weights did not change during fit"


_TRACE_COUNT = [0]
_TRACE_W = tf.Variable(_rng(41).normal(size=(3, 3)) * 0.3, name="trace_w")


def counting_field(t, y):
    _TRACE_COUNT[0] += 1  # runs only while TensorFlow traces
    return tf.matmul(tf.tanh(y), _TRACE_W)


def _counting_grads(y0):
    with tf.GradientTape() as tape:
        tape.watch(y0)
        ys = keras_node.odeint_adjoint(counting_field, y0, [0.0, 1.0], rtol=1e-6, atol=1e-6)
        loss = tf.reduce_sum(ys[-1] ** 2)
    return tape.gradient(loss, [y0, _TRACE_W])


def test_second_eager_call_does_not_retrace():
    r = _rng(42)
    _counting_grads(tf.constant(r.normal(size=(2, 3))))
    traces_after_first = _TRACE_COUNT[0]
    assert traces_after_first > 0
    _counting_grads(tf.constant(r.normal(size=(2, 3))))  # same shapes, new values
    assert _TRACE_COUNT[0] == traces_after_first, (
        f"func was traced again on the second call: {traces_after_first} -> "
        f"{_TRACE_COUNT[0]} traces"
    )


@pytest.mark.auto_jit
def test_repeated_eager_calls_keep_variable_gradients():
    # The eager path runs through a cached compiled function; every call must
    # still report the variables func reads (regression: only the first,
    # tracing call did).
    for call in range(3):
        (g_w,) = _loss_and_grads(decay_field, [_DECAY_W])
        assert g_w is not None, f"call {call}: gradient of the variable is None"
        np.testing.assert_allclose(g_w, _DECAY_W_GRAD, rtol=1e-6, err_msg=f"call {call}")


# =============================================================================
# Part 4: backward statistics and failures
# =============================================================================

_STATS_VARS = (
    tf.Variable(_rng(51).normal(size=(16, 64)) / 4.0),
    tf.Variable(_rng(52).normal(size=(64,)) * 0.25),
    tf.Variable(_rng(53).normal(size=(64, 16)) / 8.0),
    tf.Variable(_rng(54).normal(size=(16,)) * 0.125),
)
_STATS_Y0 = tf.constant(_rng(55).normal(size=(8, 16)))


def stats_field(t, y):
    w1, b1, w2, b2 = _STATS_VARS
    return tf.matmul(tf.tanh(tf.matmul(y, w1) + b1), w2) + b2


def _backward_stats(**options):
    stats = keras_node.AdjointStats()
    with tf.GradientTape() as tape:
        tape.watch(_STATS_Y0)
        ys = keras_node.odeint_adjoint(stats_field, _STATS_Y0, [0.0, 2.0], backward_stats=stats,
                                       **options)
        loss = tf.reduce_sum(ys[-1] ** 2)
    grads = tape.gradient(loss, [_STATS_Y0] + list(_STATS_VARS))
    return {k: int(v) for k, v in stats.as_dict().items()}, grads


def test_backward_stats_are_recorded():
    stats, grads = _backward_stats(rtol=1e-6, atol=1e-8)
    assert stats["status"] == 0
    assert stats["nfe"] > 0 and stats["num_steps"] > 0
    # dopri5 spends 6 evaluations per attempted step (FSAL), plus one VJP
    # per anchor; never fewer than the steps need.
    assert stats["nfe"] >= 6 * (stats["num_steps"] + stats["num_rejected"])
    assert all(g is not None for g in grads)


def test_seminorm_needs_fewer_backward_evaluations():
    # ~2200 parameters: without the seminorm their gradient integral joins the
    # error norm (Kidger, Chen & Lyons 2021), which usually costs steps.
    with_seminorm, g_semi = _backward_stats(rtol=1e-6, atol=1e-8, adjoint_seminorm=True)
    without, g_full = _backward_stats(rtol=1e-6, atol=1e-8, adjoint_seminorm=False)
    assert with_seminorm["status"] == 0 and without["status"] == 0
    # Measured: 69 vs 81 evaluations (10 vs 12 accepted steps; the full norm
    # is the RMS over [z, a, g], in which g's ~2200 components weigh in by
    # their number). Strictly fewer: with this many parameters a seminorm
    # that changed nothing would be a bug.
    assert with_seminorm["nfe"] < without["nfe"], (with_seminorm, without)
    # Both are gradients of the same loss at tolerance 1e-6.
    for a, b in zip(g_semi, g_full):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * float(np.max(np.abs(b))))


def test_backward_stats_inside_tf_function():
    stats = keras_node.AdjointStats()

    @tf.function
    def step(y0):
        with tf.GradientTape() as tape:
            tape.watch(y0)
            ys = keras_node.odeint_adjoint(_kw_field, y0, [0.0, 1.0], backward_stats=stats)
            loss = tf.reduce_sum(ys[-1])
        return tape.gradient(loss, y0)

    step(tf.constant([1.0, 0.5], F64))
    assert int(stats.nfe) > 0 and int(stats.num_steps) > 0 and int(stats.status) == 0


def nan_vjp_field(t, y):
    # Forward: sqrt(0) = 0, so f = -y, a fine solve. Backward: d sqrt(u)/du
    # at u = 0 is inf, times du/dy = 0 gives NaN in every VJP.
    return -y + tf.sqrt(0.0 * y)


_SLOW_BACKWARD_W = tf.constant([[-0.2, 2.0], [-2.0, -0.2]], F64)


def oscillator_field(t, y):
    return tf.linalg.matvec(_SLOW_BACKWARD_W, y)


def _forward_with_tape(func, y0, **options):
    """(tape, loss, forward stats) of an odeint_adjoint solve; no gradient yet."""
    with tf.GradientTape() as tape:
        tape.watch(y0)
        ys, stats = keras_node.odeint_adjoint(func, y0, [0.0, 3.0], return_stats=True, **options)
        loss = tf.reduce_sum(ys[-1])
    return tape, loss, stats


# Two backward failures, each with a forward solve that succeeds:
# - "non-finite": nan_vjp_field, whose VJP is NaN;
# - "max_num_steps": the forward at rtol 1e-3 takes < 20 steps, within
#   max_num_steps=40; the backward at adjoint_rtol=1e-12 needs hundreds.
FAILURES = {
    "non-finite": (nan_vjp_field, {}),
    "max_num_steps": (oscillator_field, dict(rtol=1e-3, atol=1e-6, max_num_steps=40,
                                             adjoint_rtol=1e-12, adjoint_atol=1e-12,
                                             adjoint_checkpoints=0)),
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_backward_failure_raises_at_gradient_time_eagerly(failure):
    func, options = FAILURES[failure]
    y0 = tf.constant([1.0, 2.0], F64)
    tape, loss, stats = _forward_with_tape(func, y0, **options)
    assert int(stats["status"]) == 0 and int(stats["num_steps"]) < 20  # the forward succeeded
    with pytest.raises(tf.errors.InvalidArgumentError, match=failure):
        tape.gradient(loss, y0)


def _failing_gradient(failure, backward_stats):
    func, options = FAILURES[failure]

    def grad(y0):
        tape, loss, _ = _forward_with_tape(func, y0, backward_stats=backward_stats, **options)
        return loss, tape.gradient(loss, y0)

    return grad


@pytest.mark.parametrize("regime", ["function", "xla"])
@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_backward_failure_in_compiled_regimes(failure, regime):
    stats = keras_node.AdjointStats()
    grad = in_regime(_failing_gradient(failure, stats), regime)
    y0 = tf.constant([1.0, 2.0], F64)
    if regime == "function":
        with pytest.raises(tf.errors.InvalidArgumentError, match=failure):
            grad(y0)
    else:  # XLA cannot raise: NaN gradients and a non-zero backward status
        loss, g = grad(y0)
        assert np.isfinite(float(loss)), "the forward solve itself succeeds"
        assert np.all(np.isnan(g)), f"expected NaN gradients under XLA, got {g}"
        assert int(stats.status) != 0


# =============================================================================
# Part 5: adjoint_method, adjoint_rtol, adjoint_atol
# =============================================================================


def _oscillator_backward(**options):
    stats = keras_node.AdjointStats()
    y0 = tf.constant([1.0, 0.0], F64)
    with tf.GradientTape() as tape:
        tape.watch(y0)
        ys = keras_node.odeint_adjoint(oscillator_field, y0, [0.0, 3.0], backward_stats=stats,
                                       adjoint_checkpoints=0, **options)
        loss = tf.reduce_sum(ys[-1])
    grad = tape.gradient(loss, y0).numpy()
    exact = scipy.linalg.expm(_SLOW_BACKWARD_W.numpy() * 3.0).T @ np.ones(2)
    return {k: int(v) for k, v in stats.as_dict().items()}, grad, exact


def test_adjoint_rtol_is_honoured():
    loose, g_loose, exact = _oscillator_backward(rtol=1e-10, atol=1e-10, adjoint_rtol=1e-4)
    tight, g_tight, _ = _oscillator_backward(rtol=1e-10, atol=1e-10, adjoint_rtol=1e-10)
    assert loose["nfe"] < tight["nfe"] / 2, (loose, tight)
    np.testing.assert_allclose(g_tight, exact, rtol=1e-7)
    np.testing.assert_allclose(g_loose, exact, rtol=1e-2)


def test_adjoint_atol_is_honoured():
    # rtol tiny, so the absolute tolerance sets the error scale.
    common = dict(rtol=1e-10, atol=1e-10, adjoint_rtol=1e-14)
    loose, _, _ = _oscillator_backward(adjoint_atol=1e-3, **common)
    tight, _, _ = _oscillator_backward(adjoint_atol=1e-10, **common)
    assert loose["nfe"] < tight["nfe"] / 2, (loose, tight)


def test_adjoint_method_rk4_with_step_size():
    step_size = 0.05
    stats, grad, exact = _oscillator_backward(rtol=1e-10, atol=1e-10, adjoint_method="rk4",
                                              step_size=step_size)
    # One interval of length 3: 60 steps of 0.05 (the last may be shortened
    # to land on t = 0 after rounding), 4 evaluations each.
    assert stats["status"] == 0
    assert stats["num_steps"] in (60, 61), stats
    assert stats["num_rejected"] == 0
    assert 4 * stats["num_steps"] <= stats["nfe"] <= 4 * stats["num_steps"] + 8, stats
    # RK4 global error ~ T * h^4 * |W|^5 / 5!: ~1e-5 relative here.
    np.testing.assert_allclose(grad, exact, rtol=1e-4)
    assert np.max(np.abs(grad - exact) / np.abs(exact)) > 1e-10, "the backward solve was not RK4"


def test_adjoint_method_fixed_step_without_step_size_takes_one_step_per_interval():
    """Bug c: raised; API.md says a fixed-step method with step_size=None
    takes one step per interval, as in odeint."""
    stats = keras_node.AdjointStats()
    y0 = tf.constant([1.0], F64)
    with tf.GradientTape() as tape:
        tape.watch(y0)
        ys = keras_node.odeint_adjoint(lambda t, y: -y, y0, [0.0, 0.5, 1.0], adjoint_method="rk4",
                                       backward_stats=stats)
        loss = tf.reduce_sum(ys[-1])
    grad = tape.gradient(loss, y0)
    assert int(stats.num_steps) == 2  # one rk4 step per interval between outputs
    np.testing.assert_allclose(grad, [np.exp(-1.0)], rtol=1e-3)


def test_unknown_adjoint_method_lists_methods():
    with pytest.raises(ValueError, match="dopri5"):
        keras_node.odeint_adjoint(oscillator_field, tf.constant([1.0, 0.0], F64), [0.0, 1.0],
                                  adjoint_method="not_a_method")
