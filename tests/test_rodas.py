"""rodas4: the Rosenbrock tableau, the step, and the issue-18 acceptance
criteria on stiff problems (Robertson, Van der Pol mu = 1000), in float64.

References are independent of keras_node: the literature value of
Robertson's y(40), scipy's Radau at tight tolerances, central finite
differences, exact solutions (`problems.py`). Sizes are tiny so the file
stays within the CI budget.
"""

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf
from scipy.integrate import solve_ivp

import keras_node
from keras_node.adjoint import augmented
from keras_node.solvers import registry
from keras_node.solvers.rosenbrock import rosenbrock_step
from keras_node.solvers.rosenbrock_tableau import RODAS4, RosenbrockTableau
from problems import ALL_PROBLEMS, assert_close, error_tolerance

F64 = tf.float64


# --- the tableau -------------------------------------------------------------------


def _rosenbrock_conditions(weights, alpha, gamma_matrix, gamma):
    """Residuals of the Rosenbrock order conditions up to order 4 (Hairer &
    Wanner II, Table IV.7.1), for the classical weights `weights`."""
    s = len(weights)
    beta = [[alpha[i][j] + (gamma_matrix[i][j] if j < i else 0.0) for j in range(s)]
            for i in range(s)]  # beta_ij = alpha_ij + gamma_ij, strictly lower part
    a_i = [math.fsum(row) for row in alpha]
    b_i = [math.fsum(row) for row in beta]
    dot = lambda u, v: math.fsum(x * y for x, y in zip(u, v))  # noqa: E731
    matvec = lambda m, v: [dot(row, v) for row in m]  # noqa: E731
    g = gamma
    return {
        1: [math.fsum(weights) - 1],
        2: [dot(weights, b_i) - (0.5 - g)],
        3: [dot(weights, [x * x for x in a_i]) - 1 / 3,
            dot(weights, matvec(beta, b_i)) - (1 / 6 - g + g * g)],
        4: [dot(weights, [x ** 3 for x in a_i]) - 1 / 4,
            dot(weights, [x * y for x, y in zip(a_i, matvec(alpha, b_i))]) - (1 / 8 - g / 3),
            dot(weights, matvec(beta, [x * x for x in a_i])) - (1 / 12 - g / 3),
            dot(weights, matvec(beta, matvec(beta, b_i))) - (1 / 24 - g / 2 + 1.5 * g * g - g ** 3)],
    }


def test_rodas4_satisfies_the_order_conditions_of_a_4_3_pair():
    alpha, gamma_matrix, b = RODAS4.classical()
    residuals = _rosenbrock_conditions(b, alpha, gamma_matrix, RODAS4.gamma)
    for order in (1, 2, 3, 4):
        assert max(abs(r) for r in residuals[order]) < 1e-12, (order, residuals[order])
    b_hat = RosenbrockTableau._times_gamma(
        [x - e for x, e in zip(RODAS4.b, RODAS4.b_error)], gamma_matrix)
    residuals = _rosenbrock_conditions(b_hat, alpha, gamma_matrix, RODAS4.gamma)
    for order in (1, 2, 3):
        assert max(abs(r) for r in residuals[order]) < 1e-12, (order, residuals[order])
    # The embedded solution is of order 3, not 4: the error estimate is O(h^4).
    assert max(abs(r) for r in residuals[4]) > 1e-3


def test_rodas4_derived_fields_and_registry():
    assert (RODAS4.num_stages, RODAS4.adaptive, RODAS4.fsal, RODAS4.c_mid) == (6, True, False, None)
    assert RODAS4.new_evaluations_per_step == 7
    assert registry.get_tableau("rodas4") is RODAS4
    assert "rodas4" in keras_node.METHODS and registry.STIFF_METHODS == ("rodas4",)


def test_inconsistent_rosenbrock_tableau_is_rejected():
    with pytest.raises(AssertionError, match="c\\[1\\]"):
        RosenbrockTableau(name="bad", order=1, gamma=0.5, c=(0.0, 0.3), d=(0.5, 0.0),
                          a=((), (0.5,)), coupling=((), (0.0,)), b=(0.0, 2.0))


def _fixed_step_error(problem, num_steps, t_end=1.0):
    """Global error at t_end of `num_steps` equal rodas4 steps (Python loop:
    a test, not the solver)."""
    func = lambda t, y: (problem.func(t, y[0]),)  # noqa: E731
    step = tf.function(lambda t, y, f, dt: rosenbrock_step(func, t, y, f, dt, RODAS4)[:2])
    y = (tf.constant(problem.y0, F64),)
    t, dt = tf.constant(0.0, F64), tf.constant(t_end / num_steps, F64)
    f = func(t, y)
    for _ in range(num_steps):
        y, f = step(t, y, f, dt)
        t = t + dt
    return float(np.max(np.abs(y[0].numpy() - problem.exact([t_end])[0])))


def test_empirical_convergence_order_is_four():
    # Riccati (nonlinear: the Jacobian changes along the solution). Not cos_t:
    # on a pure quadrature rodas4 is of order 5 (its weights integrate
    # quintics exactly), which would not test the Jacobian terms.
    problem = next(p for p in ALL_PROBLEMS if p.name == "riccati")
    errors = [_fixed_step_error(problem, n) for n in (8, 16, 32)]
    slopes = [math.log2(e0 / e1) for e0, e1 in zip(errors, errors[1:])]
    assert all(abs(s - 4.0) < 0.5 for s in slopes), (errors, slopes)


# --- the solver on the exact problems -----------------------------------------------


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_exact_problems(direction):
    """Reference problems, forward and backward in time: a nested state
    (several leaves), time dependence (df/dt), a zero field (a Jacobian with
    no connection); the others add nothing rodas4-specific."""
    t = [0.0, 0.7, 1.5] if direction == "forward" else [1.5, 0.4, -0.5]
    rtol, atol = 1e-8, 1e-10
    tol = error_tolerance(F64, rtol=rtol, atol=atol, order=4, span=2.0)
    names = ("nested", "cos_t") if direction == "forward" else ("cos_t", "zero")
    for problem in [p for p in ALL_PROBLEMS if p.name in names]:
        y0 = problem.initial_value(t[0], F64)
        ys = keras_node.odeint(problem.func, y0, t, method="rodas4", rtol=rtol, atol=atol,
                               jit_compile=False)
        assert_close(ys, problem.exact(t), tol, err_msg=problem.name)


# --- stiff problems: the acceptance criteria ----------------------------------------
# Tests run without XLA (jit_compile=False) except where XLA is the subject:
# compiling a rodas4 solve takes ~3 s per function, running it milliseconds.

ROBERTSON_K = (0.04, 3e7, 1e4)
ROBERTSON_Y40 = np.array([0.7158270687, 9.185534764e-6, 0.2841637457])
ROBERTSON_OPTIONS = dict(method="rodas4", rtol=1e-6, atol=1e-10, jit_compile=False)


def robertson(k1, k2=3e7, k3=1e4):
    """Robertson's reactions as `func(t, y)`; `k1` may be a tensor."""

    def func(t, y):
        y1, y2, y3 = y[0], y[1], y[2]
        r1, r2, r3 = k1 * y1, k2 * y2 * y2, k3 * y2 * y3
        return tf.stack([-r1 + r3, r1 - r2 - r3, r2])

    return func


def vdp(mu):
    def func(t, y):
        return tf.stack([y[1], mu * (1.0 - y[0] ** 2) * y[1] - y[0]])

    return func


Y0_ROBERTSON = tf.constant([1.0, 0.0, 0.0], F64)


def test_robertson_to_40_matches_the_literature_in_at_most_300_steps():
    ys, stats = keras_node.odeint(robertson(0.04), Y0_ROBERTSON, [0.0, 40.0], return_stats=True,
                                  **ROBERTSON_OPTIONS)
    relative = np.abs(ys[-1].numpy() / ROBERTSON_Y40 - 1.0)
    assert relative.max() < 1e-4, relative
    assert int(stats["status"]) == 0 and int(stats["num_steps"]) <= 300, stats


def test_robertson_to_1e5_finishes_and_conserves_mass():
    ys, stats = keras_node.odeint(robertson(0.04), Y0_ROBERTSON, [0.0, 1.0, 1e3, 1e5],
                                  return_stats=True, **ROBERTSON_OPTIONS)
    assert int(stats["status"]) == 0
    np.testing.assert_allclose(np.sum(ys.numpy(), axis=1), 1.0, rtol=0.0, atol=1e-6)
    assert np.all(ys.numpy() > -1e-10)


def _vdp_reference(t):
    mu = 1000.0
    sol = solve_ivp(lambda _, y: [y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]], (t[0], t[-1]),
                    [2.0, 0.0], method="Radau", rtol=1e-10, atol=1e-10, t_eval=t,
                    jac=lambda _, y: [[0.0, 1.0], [-2 * mu * y[0] * y[1] - 1, mu * (1 - y[0] ** 2)]])
    return sol.y.T


def test_van_der_pol_mu_1000_against_radau():
    t = np.linspace(0.0, 3000.0, 7)
    ys, stats = keras_node.odeint(vdp(1000.0), tf.constant([2.0, 0.0], F64), t, method="rodas4",
                                  rtol=1e-6, atol=1e-6, return_stats=True, jit_compile=False)
    assert int(stats["status"]) == 0 and int(stats["num_steps"]) <= 2800, stats
    np.testing.assert_allclose(ys.numpy(), _vdp_reference(t), rtol=0.0, atol=1e-3)


def test_dopri5_fails_cleanly_at_max_num_steps_on_van_der_pol():
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_num_steps=2000"):
        keras_node.odeint(vdp(1000.0), tf.constant([2.0, 0.0], F64), [0.0, 3000.0],
                          method="dopri5", rtol=1e-6, atol=1e-6, max_num_steps=2000,
                          jit_compile=False)


# --- gradients ------------------------------------------------------------------------

# Central differences of scipy's Radau at rtol 1e-12 (computed once, here, so
# the test does not pay for two tight stiff solves).
def _radau_y2_at_40(k1):
    def f(_, y):
        return [-k1 * y[0] + 1e4 * y[1] * y[2], k1 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2,
                3e7 * y[1] ** 2]

    return solve_ivp(f, (0.0, 40.0), [1.0, 0.0, 0.0], method="Radau", rtol=1e-12, atol=1e-20).y[1, -1]


@pytest.fixture(scope="module")
def dy2_dk1_reference():
    step = 1e-6 * 0.04
    return (_radau_y2_at_40(0.04 + step) - _radau_y2_at_40(0.04 - step)) / (2 * step)


# Gradients are checked at rtol 1e-7, atol 1e-11: at the forward criterion's
# 1e-6 / 1e-10 backprop is 1.8e-4 off (the adjoint 1.0e-5), the truncation
# error of the sensitivity, not a bug (it falls to 1.4e-9 at 1e-7).
GRADIENT_OPTIONS = dict(method="rodas4", rtol=1e-7, atol=1e-11)


def _dy2_dk1(gradient, jit_compile=False):
    """(y(40), d y2(40) / d k1) by `gradient`, optionally all under XLA."""
    k1 = tf.Variable(0.04, dtype=F64)
    solver = keras_node.odeint if gradient == "backprop" else keras_node.odeint_adjoint

    def run():
        extra = {} if gradient == "backprop" else {"variables": [k1]}
        with tf.GradientTape() as tape:
            ys = solver(robertson(k1), Y0_ROBERTSON, [0.0, 40.0], jit_compile=False,
                        **extra, **GRADIENT_OPTIONS)
            y2 = ys[-1, 1]
        return ys[-1], tape.gradient(y2, k1)

    return tf.function(run, jit_compile=True)() if jit_compile else run()


@pytest.fixture(scope="module")
def plain_gradients():
    """Without XLA, computed once for both tests below."""
    return {gradient: _dy2_dk1(gradient) for gradient in ("backprop", "adjoint")}


@pytest.mark.parametrize("gradient", ["backprop", "adjoint"])
def test_robertson_parameter_gradient_matches_central_differences(gradient, plain_gradients,
                                                                  dy2_dk1_reference):
    grad = float(plain_gradients[gradient][1])
    assert abs(grad / dy2_dk1_reference - 1.0) < 1e-4, (grad, dy2_dk1_reference)


@pytest.mark.parametrize("gradient", ["backprop", "adjoint"])
def test_xla_gives_the_same_answers(gradient, plain_gradients):
    y_plain, grad_plain = plain_gradients[gradient]
    y_xla, grad_xla = _dy2_dk1(gradient, jit_compile=True)
    np.testing.assert_allclose(y_xla.numpy(), y_plain.numpy(), rtol=1e-10, atol=0.0)
    np.testing.assert_allclose(float(grad_xla), float(grad_plain), rtol=1e-10, atol=0.0)


def test_adjoint_block_jacobian_equals_the_full_one():
    """The adjoint's step skips the Jacobian columns of dL/dtheta; the
    exact block solve must give the full Jacobian's step to round-off."""

    k = [tf.Variable(0.04, dtype=F64), tf.Variable(3e7, dtype=F64)]
    func = lambda t, y: (robertson(k[0], k[1])(t, y[0]) * (1.0 + 0.1 * tf.sin(t)),)  # noqa: E731
    aug = augmented.augmented_dynamics(func, 1, k, F64)
    x = (tf.constant([0.7, 9e-6, 0.28], F64), tf.constant([0.3, 1.0, -0.2], F64),
         tf.constant([0.1, 0.2], F64))
    t0, dt = tf.constant(-39.0, F64), tf.constant(1e-3, F64)
    f0 = aug(t0, x)
    full = rosenbrock_step(aug, t0, x, f0, dt, RODAS4)
    block = rosenbrock_step(aug, t0, x, f0, dt, dataclasses.replace(RODAS4, jacobian_leaves=2))
    for a, b in zip(full[0] + full[2], block[0] + block[2]):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-10, atol=1e-12 * np.abs(a).max())


# --- per sample, layers, events, bad input -------------------------------------------


def _per_sample_vdp(t, y):
    """Van der Pol with its own mu per sample (column 2, constant)."""
    mu = y[:, 2]
    return tf.stack([y[:, 1], mu * (1.0 - y[:, 0] ** 2) * y[:, 1] - y[:, 0], tf.zeros_like(mu)],
                    axis=1)


def test_per_sample_batch_mixing_stiff_and_non_stiff_equals_solving_each_alone():
    y0 = tf.constant([[2.0, 0.0, 1000.0], [2.0, 0.0, 1.0], [1.0, 0.5, 0.5]], F64)
    t = [0.0, 1.0, 5.0]
    options = dict(method="rodas4", rtol=1e-6, atol=1e-8, return_stats=True, jit_compile=False)
    ys, stats = keras_node.odeint(_per_sample_vdp, y0, t, batch_axis=0, **options)
    assert stats["num_steps"].shape == (3,) and np.all(stats["status"].numpy() == 0)
    def one_sample(t, y):  # one function for the three solves: traced once
        return _per_sample_vdp(t, y[None])[0]

    for b in range(3):
        alone, alone_stats = keras_node.odeint(one_sample, y0[b], t, **options)
        np.testing.assert_allclose(ys[:, b].numpy(), alone.numpy(), rtol=1e-12, atol=1e-14)
        assert int(alone_stats["num_steps"]) == int(stats["num_steps"][b])


def test_ode_layer_adjoint_gradients_match_backprop():
    """A Keras layer's many parameters go through the adjoint's block solve
    (dL/dtheta outside the Jacobian) and the interpolated backward pass."""
    import keras

    x = tf.constant([[0.5, -1.0, 0.2], [1.0, 0.3, -0.4]], F64)
    grads = {}
    for gradient in ("adjoint", "backprop"):
        keras.utils.set_random_seed(0)
        layer = keras_node.ODELayer(keras.layers.Dense(3, activation="tanh", dtype="float64"),
                                    method="rodas4", rtol=1e-8, atol=1e-10, gradient=gradient,
                                    jit_compile=False, dtype="float64")
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x) ** 2)
        grads[gradient] = tape.gradient(loss, layer.trainable_variables)
    for a, b in zip(grads["adjoint"], grads["backprop"]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-8)


def test_event_on_the_dense_output():
    t_event, _ = keras_node.odeint_event(lambda t, y: -y, tf.constant([1.0], F64), 0.0,
                                         lambda t, y: y[0] - 0.5, method="rodas4",
                                         jit_compile=False)
    assert abs(float(t_event) - math.log(2.0)) < 1e-4


def test_bad_input_raises_clear_errors():
    with pytest.raises(TypeError, match="floating.*int32"):
        keras_node.odeint(lambda t, y: -y, tf.constant([1, 2]), [0.0, 1.0], method="rodas4")
    with pytest.raises(ValueError, match="rodas4.*Received: method='rodas5'"):
        keras_node.odeint(lambda t, y: -y, tf.constant([1.0], F64), [0.0, 1.0], method="rodas5")
    with pytest.raises(ValueError, match="rodas4") as info:
        keras_node.odeint_adjoint(lambda t, y: -y, tf.constant([1.0], F64), [0.0, 1.0],
                                  adjoint_method="radau")
    assert "adjoint_method" in str(info.value)


def test_singular_iteration_matrix_rejects_the_step_instead_of_raising():
    """y' = 4y with a first step of 1: I - gamma h J = 1 - 0.25 * 4 = 0
    exactly, where TF's MatrixSolve would raise outside XLA."""
    ys = keras_node.odeint(lambda t, y: 4.0 * y, tf.constant([1.0], F64), [0.0, 1.0],
                           method="rodas4", first_step=1.0, jit_compile=False)
    assert abs(float(ys[-1, 0]) / math.exp(4.0) - 1.0) < 1e-2


def test_adjoint_with_time_grids_per_sample_on_a_stiff_problem(dy2_dk1_reference):
    """Grids of times per sample take the per-sample backward pass, whose
    stiff interval also interpolates z (it underflowed when it re-solved z
    backward). Sample 0 is the Robertson problem of the gradient test, on
    its own grid; sample 1 (another grid) does not enter the loss."""
    k = tf.Variable([0.04, 3e7, 1e4], dtype=F64)

    def batch_robertson(t, y):
        y1, y2, y3 = y[:, 0], y[:, 1], y[:, 2]
        return tf.stack([-k[0] * y1 + k[2] * y2 * y3, k[0] * y1 - k[2] * y2 * y3 - k[1] * y2 ** 2,
                         k[1] * y2 ** 2], axis=1)

    y0 = tf.constant([[1.0, 0.0, 0.0], [0.9, 0.0, 0.1]], F64)
    t = tf.constant([[0.0, 40.0], [0.0, 10.0]], F64)
    with tf.GradientTape() as tape:
        ys = keras_node.odeint_adjoint(batch_robertson, y0, t, batch_axis=0, jit_compile=False,
                                       **GRADIENT_OPTIONS)
        y2 = ys[-1, 0, 1]
    grad = float(tape.gradient(y2, k)[0])
    assert abs(grad / dy2_dk1_reference - 1.0) < 1e-4, (grad, dy2_dk1_reference)
