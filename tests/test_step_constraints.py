"""Step constraints of adaptive solves: `max_step`, `step_times`, `jump_times`
(issue 15, API.md "Per-sample solves").

References: scipy's DOP853 at rtol 1e-12 solved piece by piece between the
kinks (smooth on each piece), closed forms, and backprop for gradients.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras_node
from conftest import in_regime

scipy_integrate = pytest.importorskip("scipy.integrate")

# |sin 2 pi t| on [0, 5]: kinks every half unit, the end included (a step
# that crossed it would interpolate the output at 5 across the kink).
KINKS = [0.5 * k for k in range(1, 11)]


def rectified(t, y):
    """dy/dt = |sin 2 pi t| - y: a kink in the dynamics every half unit."""
    return tf.abs(tf.sin(2.0 * np.pi * t)) - y


def rectified_reference(times):
    """y(times) from y(0) = 1, by DOP853 between the kinks."""
    edges = [0.0] + KINKS
    y, values = np.array([1.0]), {}
    for start, end in zip(edges[:-1], edges[1:]):
        inside = [s for s in times if start <= s <= end]
        piece = scipy_integrate.solve_ivp(lambda t, y: np.abs(np.sin(2 * np.pi * t)) - y, (start, end), y,
                                          method="DOP853", rtol=1e-13, atol=1e-14, dense_output=True)
        values.update({s: float(piece.sol(s)[0]) for s in inside})
        y = piece.y[:, -1]
    return np.array([values[s] for s in times])


@pytest.mark.parametrize("regime", ["eager", "function", "xla"])
def test_jump_times_at_the_kinks_save_evaluations_and_stay_accurate(regime):
    times = tf.constant(np.linspace(0.0, 5.0, 11))
    y0 = tf.constant([1.0], tf.float64)
    kwargs = dict(rtol=1e-6, atol=1e-9, return_stats=True)

    def solve(y0):
        plain = keras_node.odeint(rectified, y0, times, **kwargs)
        jumps = keras_node.odeint(rectified, y0, times, jump_times=KINKS, **kwargs)
        return plain, jumps

    (ys_plain, plain), (ys, jumps) = in_regime(solve, regime)(y0)
    assert int(jumps["nfe"]) <= 0.7 * int(plain["nfe"]), (int(jumps["nfe"]), int(plain["nfe"]))
    reference = rectified_reference(times.numpy().tolist())
    np.testing.assert_allclose(ys.numpy()[:, 0], reference, rtol=0, atol=1e-6)
    # Without them the dense output interpolates across kinks (~1e-4 off).
    assert np.max(np.abs(ys_plain.numpy()[:, 0] - reference)) > 10 * np.max(np.abs(ys.numpy()[:, 0] - reference))


def test_step_times_are_landed_on_and_jump_times_restart_the_stages():
    """A step function switching at t = 0.3: landing there makes the solve
    exact for a linear right-hand side; a jump also re-evaluates func just
    past it (one more evaluation, and the right-hand slope from then on)."""

    def switch(t, y):
        return tf.where(t > 0.3, tf.constant(-1.0, tf.float64), tf.constant(1.0, tf.float64)) + 0 * y

    y0 = tf.constant([0.0], tf.float64)
    exact = 0.3 - 0.7  # up to 0.3, then down to t = 1
    kwargs = dict(rtol=1e-10, atol=1e-10, return_stats=True, method="bosh3")
    ys, jumps = keras_node.odeint(switch, y0, [0.0, 1.0], jump_times=[0.3], **kwargs)
    np.testing.assert_allclose(ys.numpy()[-1, 0], exact, atol=1e-12)
    _, plain = keras_node.odeint(switch, y0, [0.0, 1.0], **kwargs)
    assert int(jumps["num_rejected"]) < int(plain["num_rejected"])
    # At t = 0.3 exactly the step function still says +1: a step time lands
    # there but reuses that slope, so the first step after it is rejected
    # or off, whereas the jump re-evaluates just past 0.3.
    ys_step, stepped = keras_node.odeint(switch, y0, [0.0, 1.0], step_times=[0.3], **kwargs)
    np.testing.assert_allclose(ys_step.numpy()[-1, 0], exact, atol=1e-8)
    assert int(jumps["nfe"]) != int(stepped["nfe"])


def test_max_step_catches_a_narrow_pulse_the_controller_would_step_over():
    width = 0.01

    def pulse(t, y):
        return tf.exp(-(((t - 5.0) / width) ** 2)) + 0 * y

    y0 = tf.constant([0.0], tf.float64)
    area = width * np.sqrt(np.pi)
    free = keras_node.odeint(pulse, y0, [0.0, 10.0], rtol=1e-6, atol=1e-9)
    capped, stats = keras_node.odeint(pulse, y0, [0.0, 10.0], rtol=1e-6, atol=1e-9, max_step=0.005,
                                      return_stats=True)
    assert abs(free.numpy()[-1, 0] - area) > 0.5 * area  # stepped over it
    np.testing.assert_allclose(capped.numpy()[-1, 0], area, rtol=1e-5)
    assert int(stats["num_steps"]) >= 10.0 / 0.005


def test_per_sample_solves_keep_to_the_constraints():
    y0 = tf.constant([[1.0], [0.5], [2.0]], tf.float64)
    times = np.linspace(0.0, 5.0, 6)
    ys, stats = keras_node.odeint(lambda t, y: tf.abs(tf.sin(2.0 * np.pi * t))[:, None] - y, y0,
                                  times, batch_axis=0, jump_times=KINKS, rtol=1e-6, atol=1e-9,
                                  return_stats=True)
    for b, start in enumerate([1.0, 0.5, 2.0]):
        shifted = rectified_reference(times.tolist()) + (start - 1.0) * np.exp(-times)
        np.testing.assert_allclose(ys.numpy()[:, b, 0], shifted, atol=1e-6)


@pytest.mark.parametrize("regime", ["eager", "xla"])
def test_adjoint_gradients_with_jump_times_match_backprop(regime):
    rate = tf.Variable(1.3, dtype=tf.float64)

    def func(t, y):
        return tf.abs(tf.sin(2.0 * np.pi * t)) - rate * y

    def gradients(solver):
        def run(y0):
            with tf.GradientTape() as tape:
                tape.watch(y0)
                ys = solver(func, y0, [0.0, 1.7, 3.0], jump_times=KINKS[:5], rtol=1e-9, atol=1e-11)
                loss = tf.reduce_sum(ys ** 2)
            return tape.gradient(loss, [y0, rate])
        return [g.numpy() for g in in_regime(run, regime)(tf.constant([1.0], tf.float64))]

    for adjoint, backprop in zip(gradients(keras_node.odeint_adjoint), gradients(keras_node.odeint)):
        np.testing.assert_allclose(adjoint, backprop, rtol=1e-6)


def test_layer_round_trips_its_constraints():
    layer = keras_node.ODELayer(keras_node.dynamics.MLP(units=(4,)), max_step=0.1,
                                step_times=[0.25, 0.5], jump_times=[0.75])
    config = layer.get_config()
    assert config["max_step"] == 0.1 and config["step_times"] == [0.25, 0.5]
    rebuilt = keras_node.ODELayer.from_config(config)
    assert rebuilt.options.to_config() == layer.options.to_config()
    x = tf.random.normal((3, 2))
    plain = keras_node.ODELayer(layer.dynamics, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(layer(x).numpy(), plain(x).numpy(), rtol=1e-3, atol=1e-4)
