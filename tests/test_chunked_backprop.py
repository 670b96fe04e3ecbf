"""Backprop under a whole-step XLA compile runs the per-sample solver loop
and `odeint_event`'s search in chunks whose gradient is recomputed
(keras_node/solvers/recompute.py, issue 20 item 1), so XLA no longer stacks
`max_num_steps` copies of every stage. (Joint `odeint` solves replay their
attempts instead: tests/test_replay_backprop.py.)

Checked: the chunked gradient equals the plain graph's backprop gradient
(float64, so both take the same steps), across several chunks with output
times in different chunks; the chunked path is the one taken.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras_node
from backprop_fields import built_field
from keras_node.solvers import recompute

pytestmark = pytest.mark.auto_jit  # real XLA where a test asks for it


Y0 = tf.constant(np.random.default_rng(0).normal(size=(4, 3)))
TIMES = tf.constant([0.0, 0.7, 1.9, 3.0], tf.float64)
SOLVERS = {"dopri5": dict(method="dopri5", rtol=1e-7, atol=1e-9, max_num_steps=100),
           "rk4": dict(method="rk4", step_size=0.05, max_num_steps=100)}


def _gradient(func, variables, solver, jit):
    """(loss, dL/dy0, dL/dvariables) of a weighted sum over all output times."""

    def step():
        with tf.GradientTape() as tape:
            tape.watch(Y0)
            ys = keras_node.odeint(func, Y0, TIMES, jit_compile=jit, **solver)
            weights = tf.reshape(tf.range(1, 5, dtype=tf.float64), [4, 1, 1])
            loss = tf.reduce_sum(weights * tf.sin(ys))
        return [loss] + tape.gradient(loss, [Y0] + list(variables))

    return [x.numpy() for x in tf.function(step, jit_compile=jit)()]


@pytest.fixture
def chunk_calls(monkeypatch):
    calls = []
    original = recompute.checkpointed_loop

    def spy(*args):
        calls.append(args[3])  # max_num_steps
        return original(*args)

    monkeypatch.setattr(recompute, "checkpointed_loop", spy)
    return calls


def _check_chunked_equals_plain(solver, chunk_calls):
    """The gradient under XLA (chunked loop) equals the plain graph's
    (plain loop) to round-off; returns the spy's calls for the XLA run."""
    field = built_field()
    expected = _gradient(field, field.trainable_variables, solver, jit=False)
    assert not chunk_calls  # a plain graph keeps the plain loop
    got = _gradient(field, field.trainable_variables, solver, jit=True)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    return chunk_calls


def test_per_sample_chunked_gradient_equals_plain_backprop(chunk_calls):
    # batch_axis=0: every sample steps on its own; the per-sample loop is
    # chunked the same way (outputs spread over several chunks of 5).
    solver = dict(SOLVERS["dopri5"], batch_axis=0)
    assert _check_chunked_equals_plain(solver, chunk_calls) == [100]


def test_event_search_is_chunked_too(chunk_calls):
    # odeint_event(gradient="backprop") differentiates its search loop: under
    # a whole-step XLA compile it is chunked like odeint's, with the same
    # gradient as in a plain graph.
    field = built_field()

    def run(jit):
        def step():
            with tf.GradientTape() as tape:
                tape.watch(Y0)
                t_event, y_event = keras_node.odeint_event(
                    field, Y0, tf.constant(0.0, tf.float64),
                    lambda t, y: tf.reduce_mean(y ** 2) - 1.5, gradient="backprop",
                    t_max=3.0, jit_compile=jit, **SOLVERS["dopri5"])
                loss = t_event + tf.reduce_sum(tf.sin(y_event))
            return [t_event, loss] + tape.gradient(loss, [Y0] + field.trainable_variables)
        return [x.numpy() for x in tf.function(step, jit_compile=jit)()]

    expected = run(False)
    assert not chunk_calls
    assert 1.4 < expected[0] < 1.5  # the event fires at step 12: three chunks of 5
    got = run(True)
    assert chunk_calls == [100]
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_chunk_size_balances_chunks_and_attempts():
    assert recompute.chunk_size(10_000) == 50
    assert recompute.chunk_size(100) == 5
    assert recompute.chunk_size(101) == 6
    assert recompute.chunk_size(1) == 1
    for steps in (1, 2, 37, 10_000, 12_345):
        size = recompute.chunk_size(steps)
        assert size * -(-steps // size) >= steps  # the chunks cover every attempt
