"""`odeint_event` (issue 15, API.md "Events").

References: closed forms (free fall and the bouncing ball), scipy's
`solve_ivp` events at tight tolerances, central finite differences of the
event time and state, and separate solves for per-sample events.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras_node
from conftest import in_regime

scipy_integrate = pytest.importorskip("scipy.integrate")

# Plain graphs for most tests (XLA compiles take seconds per new function);
# the bouncing ball runs the default (XLA where it can), and the regime
# tests compare eager, tf.function and XLA.
TIGHT = dict(rtol=1e-8, atol=1e-8, jit_compile=False)


def _f64(x):
    return tf.constant(x, tf.float64)


# -- the bouncing ball (issue 15 acceptance) ---------------------------------

@pytest.mark.parametrize("gradient", ["adjoint", "backprop"])
def test_bouncing_ball_impact_times_and_gradients(gradient):
    g, a, h0 = tf.Variable(9.8, dtype=tf.float64), tf.Variable(0.2, dtype=tf.float64), \
        tf.Variable(10.0, dtype=tf.float64)
    radius = 0.2

    def fall(t, y):
        return tf.stack([y[1], -g + 0.0 * y[0]])

    def ground(t, y):
        return y[0] - radius

    with tf.GradientTape() as tape:
        y0 = tf.stack([h0, _f64(0.0)])
        t1, y1 = keras_node.odeint_event(fall, y0, _f64(0.0), ground, direction=-1,
                                         gradient=gradient, variables=[g], rtol=1e-8, atol=1e-8)
        bounced = tf.stack([y1[0], -(1.0 - a) * y1[1]])
        t2, _ = keras_node.odeint_event(fall, bounced, t1, ground, direction=-1,
                                        gradient=gradient, variables=[g], rtol=1e-8, atol=1e-8)
    assert abs(float(t1) - np.sqrt(2.0)) < 1e-7
    exact_t2 = np.sqrt(2.0) * (1.0 + 2.0 * 0.8)
    assert abs(float(t2) - exact_t2) < 1e-6
    grads = [float(v) for v in tape.gradient(t2, [h0, g, a])]
    # t2 = 2.6 sqrt(2 (h0 - r) / g): closed-form derivatives.
    expected = [2.6 / (9.8 * np.sqrt(2.0)), -2.6 / (9.8 * np.sqrt(2.0)), -2.0 * np.sqrt(2.0)]
    np.testing.assert_allclose(grads, expected, rtol=1e-5)


# -- against scipy -------------------------------------------------------------

def _pendulum(t, y):
    return tf.stack([y[1], -tf.sin(y[0]) - 0.1 * y[1]])


def _pendulum_np(t, y):
    return [y[1], -np.sin(y[0]) - 0.1 * y[1]]


def _scipy_event(y0, event, t_max=50.0, direction=0.0):
    event.terminal, event.direction = True, direction
    sol = scipy_integrate.solve_ivp(_pendulum_np, [0.0, t_max], y0, method="DOP853",
                                    rtol=1e-12, atol=1e-12, events=event)
    return sol.t_events[0][0], sol.y_events[0][0]


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "dopri8", "tsit5"])
def test_event_time_and_state_match_scipy(method):
    y0 = [1.5, 0.0]
    t_ref, y_ref = _scipy_event(y0, lambda t, y: y[0] - 0.3, direction=-1.0)
    t_event, y_event = keras_node.odeint_event(_pendulum, _f64(y0), 0.0, lambda t, y: y[0] - 0.3,
                                               direction=-1, method=method, rtol=1e-10, atol=1e-10,
                                               jit_compile=False)
    assert abs(float(t_event) - t_ref) < 1e-6
    np.testing.assert_allclose(y_event.numpy(), y_ref, atol=1e-6)


def test_root_costs_no_evaluations_beyond_the_bracketing_step():
    t_event, _, stats = keras_node.odeint_event(
        _pendulum, _f64([1.5, 0.0]), 0.0, lambda t, y: y[1], direction=1, return_stats=True, **TIGHT)
    # A plain solve to the event time takes the same steps: its last step is
    # the one that brackets the root.
    _, plain = keras_node.odeint(_pendulum, _f64([1.5, 0.0]), tf.stack([_f64(0.0), t_event]),
                                 return_stats=True, **TIGHT)
    assert int(stats["nfe"]) == int(plain["nfe"])
    assert int(stats["num_steps"]) == int(plain["num_steps"])


def test_direction_selects_crossings():
    y0 = _f64([1.5, 0.0])  # swings down: y[1] falls through 0 first at t=0, then rises
    falling, _ = keras_node.odeint_event(_pendulum, y0, 0.0, lambda t, y: y[0], direction=-1, **TIGHT)
    rising, _ = keras_node.odeint_event(_pendulum, y0, 0.0, lambda t, y: y[0], direction=1, **TIGHT)
    either, _ = keras_node.odeint_event(_pendulum, y0, 0.0, lambda t, y: y[0], direction=0, **TIGHT)
    t_fall, _ = _scipy_event([1.5, 0.0], lambda t, y: y[0], direction=-1.0)
    t_rise, _ = _scipy_event([1.5, 0.0], lambda t, y: y[0], direction=1.0)
    assert abs(float(falling) - t_fall) < 1e-6 and abs(float(rising) - t_rise) < 1e-6
    assert t_fall < t_rise and float(either) == float(falling)


def test_several_event_functions_first_root_wins():
    def events(t, y):
        return tf.stack([y[0] - 0.3, y[0] - 1.0, y[0] + 0.5])

    t_event, _, stats = keras_node.odeint_event(_pendulum, _f64([1.5, 0.0]), 0.0, events,
                                                direction=-1, return_stats=True, **TIGHT)
    t_ref, _ = _scipy_event([1.5, 0.0], lambda t, y: y[0] - 1.0, direction=-1.0)
    assert int(stats["event_index"]) == 1
    assert abs(float(t_event) - t_ref) < 1e-6


def test_no_event_before_t_max_returns_t_max():
    y0 = _f64([1.5, 0.0])
    t_event, y_event, stats = keras_node.odeint_event(
        _pendulum, y0, 0.0, lambda t, y: y[0] - 5.0, t_max=2.0, return_stats=True, **TIGHT)
    sol = scipy_integrate.solve_ivp(_pendulum_np, [0.0, 2.0], [1.5, 0.0], method="DOP853",
                                    rtol=1e-12, atol=1e-12)
    assert int(stats["event_index"]) == -1 and float(t_event) == 2.0
    np.testing.assert_allclose(y_event.numpy(), sol.y[:, -1], atol=1e-6)


def test_no_event_without_t_max_is_a_failed_solve():
    with pytest.raises(tf.errors.InvalidArgumentError, match="odeint_event"):
        keras_node.odeint_event(lambda t, y: -y, _f64([1.0]), 0.0, lambda t, y: y[0] + 1.0,
                                max_num_steps=50)


def test_backward_in_time():
    # dy/dt = y from y(0) = 1: going back, y = e^t reaches 0.5 at t = -ln 2.
    t_event, y_event = keras_node.odeint_event(lambda t, y: y, _f64([1.0]), 0.0,
                                               lambda t, y: y[0] - 0.5, t_max=-5.0, **TIGHT)
    assert abs(float(t_event) + np.log(2.0)) < 1e-7
    assert abs(float(y_event[0]) - 0.5) < 1e-7


# -- gradients against finite differences ------------------------------------

@pytest.mark.parametrize("gradient", ["adjoint", "backprop"])
def test_without_an_event_the_gradient_flows_to_t_max(gradient):
    t_max, t0 = tf.Variable(2.0, dtype=tf.float64), tf.Variable(0.5, dtype=tf.float64)
    with tf.GradientTape(persistent=True) as tape:
        t_event, y_event = keras_node.odeint_event(lambda t, y: -y, _f64([1.0]), t0,
                                                   lambda t, y: y[0] - 0.01, t_max=t_max,
                                                   gradient=gradient, **TIGHT)
        y_end = y_event[0]
    # y = exp(-(t - t0)) at t = t_max.
    assert float(t_event) == 2.0
    np.testing.assert_allclose([float(g) for g in tape.gradient(t_event, [t_max, t0])], [1.0, 0.0])
    np.testing.assert_allclose([float(g) for g in tape.gradient(y_end, [t_max, t0])],
                               [-np.exp(-1.5), np.exp(-1.5)], rtol=1e-7)


def test_gradient_flows_to_t0_and_event_fn_variables():
    level = tf.Variable(0.5, dtype=tf.float64)
    t0 = tf.Variable(0.3, dtype=tf.float64)
    with tf.GradientTape() as tape:
        t_event, _ = keras_node.odeint_event(lambda t, y: -y, _f64([1.0]), t0,
                                             lambda t, y: y[0] - level, **TIGHT)
    d_level, d_t0 = tape.gradient(t_event, [level, t0])
    # y = exp(-(t - t0)) = level at t = t0 - ln(level).
    assert abs(float(t_event) - (0.3 - np.log(0.5))) < 1e-7
    np.testing.assert_allclose([float(d_level), float(d_t0)], [-1.0 / 0.5, 1.0], rtol=1e-6)


@pytest.mark.parametrize("gradient", ["adjoint", "backprop"])
def test_gradients_agree_across_regimes(gradient, regime):
    y0, theta = tf.Variable([1.2, 0.3], dtype=tf.float64), tf.Variable(1.7, dtype=tf.float64)

    def loss_and_grads():
        with tf.GradientTape() as tape:
            def func(t, y):
                return tf.stack([y[1], -theta * tf.sin(y[0])])
            t_event, y_event = keras_node.odeint_event(
                func, y0, _f64(0.0), lambda t, y: y[0] - 0.25 * y[1] - 0.2, direction=-1,
                gradient=gradient, variables=[theta], rtol=1e-10, atol=1e-10)
            loss = t_event + tf.reduce_sum(_f64([0.7, -1.3]) * y_event)
        return loss, tape.gradient(loss, [y0, theta])

    # Against scipy's event and central differences of it.
    loss, grads = in_regime(loss_and_grads, regime)()
    reference_loss, reference_grads = _reference_event_loss_and_grads()
    assert abs(float(loss) - reference_loss) < 1e-9
    np.testing.assert_allclose(np.concatenate([grads[0].numpy(), [float(grads[1])]]),
                               reference_grads, rtol=1e-5)


def _reference_event_loss_and_grads():
    """The same loss from scipy at tight tolerances, gradients by central
    differences."""
    def loss_at(y0, theta):
        def event(t, y):
            return y[0] - 0.25 * y[1] - 0.2
        event.terminal, event.direction = True, -1
        sol = scipy_integrate.solve_ivp(lambda t, y: [y[1], -theta * np.sin(y[0])], (0.0, 50.0),
                                        y0, method="DOP853", rtol=1e-13, atol=1e-13,
                                        events=event)
        return sol.t_events[0][0] + 0.7 * sol.y_events[0][0][0] - 1.3 * sol.y_events[0][0][1]

    start, eps = np.array([1.2, 0.3]), 1e-5
    grads = [(loss_at(start + eps * e, 1.7) - loss_at(start - eps * e, 1.7)) / (2 * eps)
             for e in np.eye(2)]
    grads.append((loss_at(start, 1.7 + eps) - loss_at(start, 1.7 - eps)) / (2 * eps))
    return loss_at(start, 1.7), np.array(grads)


# -- one solve ------------------------------------------------------------------

@pytest.mark.parametrize("gradient", ["adjoint", "backprop"])
def test_the_state_comes_from_the_search_itself(gradient):
    # Every batched evaluation of func is one of the search's (its nfe),
    # plus one at the event for the time's gradient: no second solve.
    calls = tf.Variable(0, dtype=tf.int64)

    def counted(t, y):
        calls.assign_add(1)
        return _pendulum(t, y)

    _, _, stats = keras_node.odeint_event(counted, _f64([1.5, 0.0]), 0.0, lambda t, y: y[0],
                                          direction=-1, gradient=gradient, return_stats=True,
                                          **TIGHT)
    assert int(stats["nfe"]) > 50
    assert int(calls) == int(stats["nfe"]) + 1


def test_adjoint_reanchors_at_the_searchs_records(monkeypatch):
    # The contractive MLP of test_adjoint_checkpoints, stopped by a time
    # event at its horizon: the adjoint re-anchors at the states the search
    # recorded, and is as accurate as the checkpointed odeint_adjoint
    # (within 2x backprop's error); without records (K = 0) the backsolve
    # is wrong by orders of magnitude.
    from test_adjoint_checkpoints import (_H0, _T, _TOLS, _reference, _relative_error,
                                          contractive_mlp)

    def grad():
        h0 = tf.identity(_H0)
        with tf.GradientTape() as tape:
            tape.watch(h0)
            t_event, y_event = keras_node.odeint_event(
                contractive_mlp, h0, _f64(0.0), lambda t, y: t - _T, direction=1,
                jit_compile=False, **_TOLS)
            loss = tf.reduce_sum(y_event ** 2)
        assert abs(float(t_event) - _T) < 1e-12
        return tape.gradient(loss, h0)

    g_ref, bp_error = _reference()
    recorded = _relative_error(grad(), g_ref)
    default_options = keras_node.events.AdjointOptions
    monkeypatch.setattr(keras_node.events, "AdjointOptions",
                        lambda: default_options.of(adjoint_checkpoints=0))
    unanchored = _relative_error(grad(), g_ref)
    summary = f"backprop {bp_error:.2e}, records {recorded:.2e}, none {unanchored:.2e}"
    assert recorded <= 2 * bp_error, summary
    assert unanchored > 10 * recorded, summary


# -- per-sample events ---------------------------------------------------------

def test_per_sample_events_match_separate_solves(regime):
    heights = _f64([10.0, 2.0, 5.0, 0.7])
    y0 = tf.stack([heights, tf.zeros_like(heights)], axis=1)

    def fall(t, y):
        return tf.stack([y[:, 1], -9.8 + 0.0 * y[:, 0]], axis=1)

    def run(y0):
        return keras_node.odeint_event(fall, y0, 0.0, lambda t, y: y[:, 0], direction=-1,
                                       batch_axis=0, return_stats=True, **TIGHT)

    t_event, y_event, stats = in_regime(run, regime)(y0)
    np.testing.assert_allclose(t_event.numpy(), np.sqrt(2.0 * heights.numpy() / 9.8), rtol=1e-9)
    np.testing.assert_allclose(y_event.numpy()[:, 1], -np.sqrt(2.0 * 9.8 * heights.numpy()), rtol=1e-8)
    assert stats["event_index"].numpy().tolist() == [0, 0, 0, 0]
    alone, _ = keras_node.odeint_event(lambda t, y: tf.stack([y[1], -9.8 + 0.0 * y[0]]), y0[1], 0.0,
                                       lambda t, y: y[0], direction=-1, **TIGHT)
    assert abs(float(alone) - float(t_event[1])) < 1e-12 * 2


def test_per_sample_gradients_match_separate_solves():
    # Each sample's event and state, and their gradients, as if solved alone.
    theta = tf.Variable(1.3, dtype=tf.float64)
    starts = _f64([[1.2, 0.3], [0.9, -0.2], [1.5, 0.0]])

    def func(t, y):
        return tf.stack([y[..., 1], -theta * tf.sin(y[..., 0])], axis=-1)

    def event(t, y):
        return y[..., 0] - 0.2

    def loss_and_grads(y0, batch_axis):
        with tf.GradientTape() as tape:
            tape.watch(y0)
            t_event, y_event = keras_node.odeint_event(
                func, y0, _f64(0.0), event, direction=-1, variables=[theta],
                batch_axis=batch_axis, rtol=1e-10, atol=1e-10, jit_compile=False)
            loss = tf.reduce_sum(t_event) + tf.reduce_sum(y_event * _f64([0.7, -1.3]))
        return loss, tape.gradient(loss, [y0, theta])

    loss, (d_y0, d_theta) = loss_and_grads(starts, 0)
    alone = [loss_and_grads(starts[b], None) for b in range(3)]
    np.testing.assert_allclose(float(loss), sum(float(a[0]) for a in alone), rtol=1e-12)
    np.testing.assert_allclose(d_y0.numpy(), np.stack([a[1][0].numpy() for a in alone]),
                               rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(float(d_theta), sum(float(a[1][1]) for a in alone), rtol=1e-6)


def test_per_sample_t_max_and_event_index():
    y0 = _f64([[1.0], [3.0]])
    t_event, y_event, stats = keras_node.odeint_event(
        lambda t, y: -y, y0, 0.0, lambda t, y: y[:, 0] - 2.0, t_max=_f64([4.0, 4.0]), batch_axis=0,
        return_stats=True, **TIGHT)
    assert stats["event_index"].numpy().tolist() == [-1, 0]
    np.testing.assert_allclose(t_event.numpy(), [4.0, np.log(1.5)], rtol=1e-7)
    np.testing.assert_allclose(y_event.numpy()[:, 0], [np.exp(-4.0), 2.0], rtol=1e-6)


# -- execution regimes and bad input -------------------------------------------

def test_regimes_agree(regime):
    def run():
        return keras_node.odeint_event(_pendulum, _f64([1.5, 0.0]), 0.0, lambda t, y: y[0],
                                       direction=-1, **TIGHT)

    t_event, y_event = in_regime(run, regime)()
    t_ref, y_ref = run()
    assert abs(float(t_event) - float(t_ref)) < 1e-12
    np.testing.assert_allclose(y_event.numpy(), y_ref.numpy(), atol=1e-12)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(direction=2), ValueError, "direction must be -1, 0 or 1"),
    (dict(direction=True), TypeError, "direction must be -1, 0 or 1"),
    (dict(gradient="exact"), ValueError, "gradient must be one of"),
    (dict(method="rk4"), ValueError, "adaptive method"),
    (dict(event_fn=lambda t, y: tf.stack([y, y])), ValueError, r"event_fn\(t, y\) must return"),
    (dict(event_fn=3.0), TypeError, "event_fn must be callable"),
    (dict(t0=[[0.0]]), ValueError, "t0 must be a scalar"),
    (dict(return_stats=1), TypeError, "return_stats"),
])
def test_bad_input(kwargs, error, match):
    arguments = dict(func=lambda t, y: -y, y0=_f64([1.0, 2.0]), t0=0.0,
                     event_fn=lambda t, y: y[0] - 0.5)
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        keras_node.odeint_event(**arguments)


def test_per_sample_event_shape_must_match_the_batch():
    with pytest.raises(ValueError, match=r"\(batch,\) or \(batch, k\) with batch = 2"):
        keras_node.odeint_event(lambda t, y: -y, _f64([[1.0], [2.0]]), 0.0,
                                lambda t, y: tf.zeros([3], tf.float64), batch_axis=0)
