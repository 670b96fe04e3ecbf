"""Per-sample solves (`batch_axis=0`), grids of times per sample, failures
per sample (issue 15, API.md "Per-sample solves").

References: scipy's DOP853 at rtol 1e-12, the same samples solved alone
(joint solves of a batch of one), and backprop through separate solves for
the gradients.
"""

import functools

import numpy as np
import pytest
import tensorflow as tf

import keras_node
from conftest import in_regime

scipy_integrate = pytest.importorskip("scipy.integrate")

MU = 25.0


def van_der_pol(t, y):
    x, v = y[:, 0], y[:, 1]
    return tf.stack([v, MU * (1.0 - x ** 2) * v - x], axis=1)


def van_der_pol_np(t, y):
    return [y[1], MU * (1.0 - y[0] ** 2) * y[1] - y[0]]


def limit_cycle(num_samples):
    """States spread evenly in time along Van der Pol's limit cycle, and its period."""
    solve = scipy_integrate.solve_ivp
    settled = solve(van_der_pol_np, [0, 200], [2.0, 0.0], method="DOP853", rtol=1e-12, atol=1e-12)

    def crossing(t, y):
        return y[1]

    crossing.direction = -1
    cycle = solve(van_der_pol_np, [0, 120], settled.y[:, -1], method="DOP853", rtol=1e-12,
                  atol=1e-12, events=crossing, dense_output=True)
    first, second = cycle.t_events[0][:2]
    period = second - first
    phases = first + np.linspace(0.0, period, num_samples, endpoint=False)
    return cycle.sol(phases).T, period


def test_van_der_pol_batch_steps_per_sample_not_at_the_hardest_pace():
    states, period = limit_cycle(256)
    y0, t = tf.constant(states), [0.0, period]
    kwargs = dict(rtol=1e-5, atol=1e-5, max_num_steps=100_000, return_stats=True)
    ys, stats = keras_node.odeint(van_der_pol, y0, t, batch_axis=0, **kwargs)
    _, joint = keras_node.odeint(van_der_pol, y0, t, **kwargs)
    assert stats["num_steps"].shape == (256,) and stats["status"].shape == (256,)
    assert np.all(stats["status"].numpy() == 0)
    # torchode's paper: 695 vs 4098 attempted steps; here batched func calls.
    assert int(joint["nfe"]) >= 4 * int(stats["nfe"]), (int(joint["nfe"]), int(stats["nfe"]))
    hardest = int(np.argmax(stats["num_steps"].numpy()))
    for b in (hardest, 0, 101):
        _, alone = keras_node.odeint(van_der_pol, y0[b:b + 1], t, **kwargs)
        assert abs(int(stats["num_steps"][b]) - int(alone["num_steps"])) <= 0.05 * int(alone["num_steps"])
    for b in range(0, 256, 17):
        reference = scipy_integrate.solve_ivp(van_der_pol_np, t, states[b], method="DOP853",
                                              rtol=1e-12, atol=1e-12).y[:, -1]
        error = np.linalg.norm(ys.numpy()[-1, b] - reference) / np.linalg.norm(reference)
        assert error < 1e-3, (b, error)


def stiffness_batch(n):
    """dy/dt = -k_b (y - cos t) + tanh(y) W: the rate k_b differs per sample."""
    rng = np.random.default_rng(1)
    rates = tf.constant(10.0 ** rng.uniform(-1, 2.5, size=(n, 1)))
    weights = tf.constant(rng.normal(size=(3, 3)) * 0.5)

    def func(t, y):
        return -rates * (y - tf.cos(t)[:, None]) + tf.tanh(y) @ weights

    return func, tf.constant(rng.normal(size=(n, 3))), rates, weights


@pytest.mark.auto_jit
@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "dopri8", "heun_euler", "rk4"])
def test_a_sample_alone_and_in_a_random_batch_agree(method):
    func, y0, rates, weights = stiffness_batch(12)
    # XLA (the default "auto") for dopri5; the other methods run as plain
    # graphs, which take a tenth of the compile time (the tableau is what
    # differs between them, not the compiler).
    kwargs = dict(method=method, rtol=1e-7, atol=1e-9, batch_axis=0, return_stats=True,
                  jit_compile="auto" if method == "dopri5" else False)
    if method == "rk4":
        kwargs.update(step_size=0.01)
    if method in ("heun_euler", "bosh3"):  # low order: looser tolerances
        kwargs.update(rtol=1e-4, atol=1e-6)
    t = tf.constant([0.0, 0.3, 1.0], tf.float64)
    ys, stats = keras_node.odeint(func, y0, t, **kwargs)
    for b in (0, 5, 11):
        def alone_func(t, y, b=b):
            return -rates[b:b + 1] * (y - tf.cos(t)[:, None]) + tf.tanh(y) @ weights
        ya, alone = keras_node.odeint(alone_func, y0[b:b + 1], t, **kwargs)
        np.testing.assert_allclose(ya.numpy()[:, 0], ys.numpy()[:, b], rtol=1e-12, atol=1e-14)
        assert int(alone["num_steps"][0]) == int(stats["num_steps"][b])
    if method == "dopri5":
        # The stiff samples take more steps than the easy ones: not one pace.
        steps = stats["num_steps"].numpy()
        assert steps.max() > 3 * steps.min()


GRID = np.array([[0.0, 0.5, 2.0], [0.0, 0.1, 0.3], [1.0, 1.5, 3.0], [-0.5, 0.9, 1.0]])
COTANGENT = np.random.default_rng(2).normal(size=(3, 4, 3))


@functools.lru_cache(maxsize=None)
def separate_solves():
    """Each sample of the grid test solved alone (backprop, tight tolerances):
    outputs `[n, batch, 3]` and the gradients for y0, the weights and t."""
    _, y0, rates, weights = stiffness_batch(4)
    weights_var = tf.Variable(weights)
    outputs, grads = np.zeros((3, 4, 3)), [np.zeros((4, 3)), np.zeros((3, 3)), np.zeros((4, 3))]

    @tf.function
    def solo(yb, tb, rate, cotangent):
        with tf.GradientTape() as tape:
            tape.watch([yb, tb])
            ys = keras_node.odeint(lambda t, y: -rate * (y - tf.cos(t)) + tf.tanh(y) @ weights_var,
                                   yb, tb, rtol=1e-11, atol=1e-11)
            loss = tf.reduce_sum(ys[:, 0] * cotangent)
        return ys, tape.gradient(loss, [yb, weights_var, tb])

    for b in range(4):
        ys, (g_y0, g_w, g_t) = solo(y0[b:b + 1], tf.constant(GRID[b]), rates[b],
                                    tf.constant(COTANGENT[:, b]))
        outputs[:, b] = ys.numpy()[:, 0]
        grads[0][b], grads[1], grads[2][b] = g_y0.numpy()[0], grads[1] + g_w.numpy(), g_t.numpy()
    return outputs, grads


@pytest.mark.parametrize("regime", ["eager", "function", "xla"])
@pytest.mark.parametrize("solver", ["odeint", "odeint_adjoint"])
def test_grids_per_sample_match_separate_solves_with_gradients(solver, regime):
    _, y0, rates, weights = stiffness_batch(4)
    weights_var = tf.Variable(weights)

    def func(t, y):
        return -rates * (y - tf.cos(t)[:, None]) + tf.tanh(y) @ weights_var

    def loss_and_grads(y0, grid):
        with tf.GradientTape() as tape:
            tape.watch([y0, grid])
            ys = getattr(keras_node, solver)(func, y0, grid, batch_axis=0, rtol=1e-9, atol=1e-9)
            loss = tf.reduce_sum(ys * COTANGENT)
        return ys, tape.gradient(loss, [y0, weights_var, grid])

    ys, grads = in_regime(loss_and_grads, regime)(y0, tf.constant(GRID))
    expected_ys, expected_grads = separate_solves()
    np.testing.assert_allclose(ys.numpy(), expected_ys, rtol=1e-7, atol=1e-8)
    # Backprop's time gradients hold the mesh fixed (step sizes carry no
    # gradient): right to the discretisation error only.
    t_atol = 1e-5 if solver == "odeint" else 1e-6
    for got, want, atol in zip(grads, expected_grads, (1e-6, 1e-6, t_atol)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=atol)


def blow_up_in_sample_one(t, y):
    """Sample 1 blows up at t = 0.5 (dy/dt = y^2 from 2); the others decay."""
    rate = tf.constant([[-1.0], [0.0], [-2.0]], tf.float64)
    return rate * y + tf.constant([[0.0], [1.0], [0.0]], tf.float64) * y ** 2


def test_a_failing_sample_raises_naming_itself_eagerly_and_in_graphs():
    y0 = tf.constant([[1.0], [2.0], [1.0]], tf.float64)
    for regime in ("eager", "function"):
        solve = in_regime(lambda y: keras_node.odeint(blow_up_in_sample_one, y0, [0.0, 1.0],
                                                      batch_axis=0), regime)
        with pytest.raises(tf.errors.InvalidArgumentError) as info:
            solve(y0)
        message = str(info.value)
        assert "sample" in message and "1" in message, message
        assert "underflow" in message or "non-finite" in message, message
        assert "0.49" in message or "0.5" in message, message  # time reached


def test_under_xla_only_the_failing_sample_is_nan():
    y0 = tf.constant([[1.0], [2.0], [1.0]], tf.float64)

    @tf.function(jit_compile=True)
    def solve(y0):
        return keras_node.odeint(blow_up_in_sample_one, y0, [0.0, 1.0], batch_axis=0,
                                 rtol=1e-8, atol=1e-10, return_stats=True)

    ys, stats = solve(y0)
    status = stats["status"].numpy()
    assert status[1] != 0 and status[0] == 0 and status[2] == 0
    assert np.all(np.isnan(ys.numpy()[:, 1]))
    np.testing.assert_allclose(ys.numpy()[-1, [0, 2], 0], np.exp([-1.0, -2.0]), rtol=1e-5)


def test_bad_per_sample_inputs_get_clear_errors():
    y0 = tf.ones((3, 2))
    grid = tf.constant([[0.0, 1.0]] * 3)
    with pytest.raises(ValueError, match="batch_axis=0"):
        keras_node.odeint(lambda t, y: -y, y0, grid)
    with pytest.raises(ValueError, match="same direction"):
        keras_node.odeint(lambda t, y: -y, y0, [[0.0, 1.0], [1.0, 0.0], [0.0, 2.0]], batch_axis=0)
    with pytest.raises(ValueError, match="batch size"):
        keras_node.odeint(lambda t, y: -y, y0, [[0.0, 1.0]] * 2, batch_axis=0)
    with pytest.raises(ValueError, match="leading batch axis"):
        keras_node.odeint(lambda t, y: -y, tf.constant(1.0), [0.0, 1.0], batch_axis=0)
    with pytest.raises(ValueError, match=r"row 1"):
        keras_node.odeint(lambda t, y: -y, y0, [[0.0, 1.0, 2.0], [0.0, 2.0, 1.0], [0.0, 1.0, 2.0]],
                          batch_axis=0)
    layer = keras_node.ODELayer(keras_node.dynamics.MLP(units=(4,)))
    with pytest.raises(ValueError, match="per_sample_steps=True"):
        layer(y0, t=grid)


def test_layer_with_per_sample_steps_matches_each_sample_alone_on_its_own_times():
    layer = keras_node.ODELayer(keras_node.dynamics.MLP(units=(8,)), per_sample_steps=True,
                                return_sequences=True, rtol=1e-6, atol=1e-8)
    x = tf.random.normal((4, 3))
    grid = tf.constant([[0.0, 0.5, 1.0], [0.0, 0.2, 0.4], [0.0, 1.0, 2.0], [0.3, 0.9, 1.0]])
    ys = layer(x, t=grid)
    assert ys.shape == (4, 3, 3)
    joint = keras_node.ODELayer(layer.dynamics, return_sequences=True, rtol=1e-6, atol=1e-8)
    for b in range(4):
        np.testing.assert_allclose(joint(x[b:b + 1], t=grid[b]).numpy()[0], ys.numpy()[b],
                                   rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("gradient", ["adjoint", "backprop"])
def test_layer_with_per_sample_steps_trains_saves_and_loads(gradient, tmp_path):
    import keras

    model = keras.Sequential([
        keras.Input((3,)),
        keras_node.ODELayer(keras_node.dynamics.MLP(units=(8,)), per_sample_steps=True,
                            gradient=gradient),
        keras.layers.Dense(1),
    ])
    model.compile("adam", "mse")
    x, y = np.random.randn(32, 3).astype("float32"), np.random.randn(32, 1).astype("float32")
    before = [w.numpy().copy() for w in model.layers[0].trainable_weights]
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert any(not np.allclose(a, w.numpy()) for a, w in zip(before, model.layers[0].trainable_weights))
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.layers[0].per_sample_steps and loaded.layers[0].get_config()["per_sample_steps"]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
