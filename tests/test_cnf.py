"""`keras_node.CNF` against the linear flow f(z) = z W, whose map is
x -> x expm(W T): log p(x) = log N(x expm(W T); 0, I) + T tr(W) and samples
x = z expm(-W T) have covariance M^T M, M = expm(-W T). Then training,
evaluation, saving and switching the trace."""

import itertools

import keras
import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

import keras_node
from problems import central_differences

D = 2
W = np.array([[-0.3, 0.8], [-0.7, -0.2]])
X = np.random.default_rng(0).normal(size=(6, D))
TIGHT = 1e-10


def _linear_cnf(t=(0.0, 1.0), trace="exact", gradient="adjoint", kernel=W):
    dynamics = keras.layers.Dense(D, use_bias=False, dtype="float64")
    cnf = keras_node.CNF(dynamics, t=t, trace=trace, rtol=TIGHT, atol=TIGHT, gradient=gradient,
                         dtype="float64")
    cnf.build((None, D))
    dynamics.kernel.assign(kernel)
    return cnf


def _closed_form(x, t0, t1, kernel=W):
    span = t1 - t0
    z = x @ scipy.linalg.expm(kernel * span)
    return -0.5 * np.sum(z**2, 1) - 0.5 * D * np.log(2 * np.pi) + span * np.trace(kernel)


@pytest.mark.parametrize("t", [(0.0, 1.0), (0.5, 1.7), (1.0, 0.0)], ids=str)
def test_log_prob_equals_the_closed_form(t):
    cnf = _linear_cnf(t=t)
    np.testing.assert_allclose(cnf.log_prob(X).numpy(), _closed_form(X, *t), rtol=0, atol=1e-6)


def test_hutchinson_log_prob_is_the_probe_form_and_unbiased():
    # With f = z W the estimate is constant along the solve: each sample is
    # off by T (eps^T W eps - tr W) for its probe, zero on average.
    n = 4000
    cnf = _linear_cnf(trace="hutchinson")
    x = np.random.default_rng(1).normal(size=(n, D))
    errors = cnf.log_prob(x).numpy() - _closed_form(x, 0.0, 1.0)
    offsets = np.array([np.dot(e, W @ e) - np.trace(W)
                        for e in itertools.product((-1.0, 1.0), repeat=D)])
    assert np.all(np.min(np.abs(errors[:, None] - offsets[None]), axis=1) < 1e-6)
    assert abs(errors.mean()) < 3 * offsets.std() / np.sqrt(n)


def test_sample_has_the_closed_form_covariance():
    n = 20_000
    samples = _linear_cnf().sample(n, seed=3).numpy()
    m = scipy.linalg.expm(-W)
    covariance = m.T @ m
    # Standard error of a sample covariance entry: sqrt((S_ii S_jj + S_ij^2) / n).
    standard_error = np.sqrt((np.outer(np.diag(covariance), np.diag(covariance))
                              + covariance**2) / n)
    assert samples.shape == (n, D)
    assert np.all(np.abs(np.cov(samples.T) - covariance) < 4 * standard_error)
    assert np.all(np.abs(samples.mean(0)) < 4 * np.sqrt(np.diag(covariance) / n))


def test_gradients_adjoint_backprop_and_central_differences():
    cnfs = {mode: _linear_cnf(gradient=mode) for mode in ("adjoint", "backprop")}

    def nll_and_grad(mode, kernel=W):
        cnf = cnfs[mode]
        cnf.dynamics.kernel.assign(kernel)
        with tf.GradientTape() as tape:
            nll = -tf.reduce_mean(cnf(X, training=True))
        return float(nll), tape.gradient(nll, cnf.dynamics.kernel).numpy()

    _, adjoint = nll_and_grad("adjoint")
    _, backprop = nll_and_grad("backprop")
    central = central_differences(lambda value: nll_and_grad("backprop", value)[0], W)
    np.testing.assert_allclose(backprop, central, atol=1e-7)
    np.testing.assert_allclose(adjoint, central, atol=1e-7)


def test_fit_evaluate_save_load_and_switch_trace(tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(128, D)) * [1.0, 0.3] + [1.0, -0.5]).astype("float32")
    cnf = keras_node.CNF(keras_node.dynamics.MLP(units=(8,)), rtol=1e-4, atol=1e-4,
                         regularizers={"kinetic": 0.01})
    cnf.compile(keras.optimizers.Adam(0.02))
    logs = cnf.fit(x, epochs=3, batch_size=64, verbose=0).history
    assert logs["loss"][-1] < logs["loss"][0] and logs["reg_kinetic"][-1] > 0
    nll = cnf.evaluate(x, verbose=0, return_dict=True)["loss"]
    np.testing.assert_allclose(nll, -cnf.log_prob(x).numpy().mean(), rtol=1e-5)

    path = str(tmp_path / "cnf.keras")
    cnf.save(path)
    loaded = keras.models.load_model(path)
    original, rebuilt = cnf.get_config(), loaded.get_config()
    assert rebuilt.pop("dynamics")["config"]["units"] == original.pop("dynamics")["config"]["units"]
    assert rebuilt == original
    exact = cnf.log_prob(x[:8]).numpy()
    np.testing.assert_array_equal(loaded.log_prob(x[:8]).numpy(), exact)
    loaded.trace = "hutchinson"
    assert not np.allclose(loaded.log_prob(x[:8]).numpy(), exact, atol=1e-3)
    loaded.trace = "exact"
    np.testing.assert_array_equal(loaded.log_prob(x[:8]).numpy(), exact)
    assert loaded.sample(5, seed=0).shape == (5, D)
    assert tuple(loaded(keras.Input((D,))).shape) == (None,)  # symbolic: shape only


def test_export_serves_log_prob(tmp_path):
    x = np.random.default_rng(3).normal(size=(8, D)).astype("float32")
    cnf = keras_node.CNF(keras_node.dynamics.MLP(units=(8,), final_initializer="glorot_uniform"))
    cnf(x)  # Keras exports models that have been called
    cnf.export(str(tmp_path / "exported"), verbose=False)
    restored = tf.saved_model.load(str(tmp_path / "exported"))  # kept: it owns the weights
    served = restored.serve(tf.constant(x))
    np.testing.assert_allclose(served.numpy(), cnf.log_prob(x).numpy(), rtol=0, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="trace"):
        keras_node.CNF(keras_node.dynamics.MLP(), trace="stochastic")
    with pytest.raises(TypeError, match="trace"):
        keras_node.CNF(keras_node.dynamics.MLP(), trace=None)
    with pytest.raises(TypeError, match="dynamics"):
        keras_node.CNF(lambda h: h)
    with pytest.raises(ValueError, match="regularizers"):
        keras_node.CNF(keras_node.dynamics.MLP(), regularizers={"speed": 1.0})
    with pytest.raises(ValueError, match="event shape"):
        keras_node.CNF(keras_node.dynamics.MLP()).sample(3)


def test_hutchinson_trace_and_frobenius_share_one_probe():
    # One sample, f = z W: the log-density is off by T (e^T W e - tr W) and
    # the Frobenius term is T mean((W e)^2) for the *same* probe e.
    dynamics = keras.layers.Dense(D, use_bias=False, dtype="float64")
    cnf = keras_node.CNF(dynamics, trace="hutchinson", rtol=TIGHT, atol=TIGHT, dtype="float64",
                         regularizers={"jacobian_frobenius": 1.0})
    cnf.build((None, D))
    dynamics.kernel.assign(W)
    for _ in range(4):
        log_prob = cnf(X[:1], training=True).numpy()
        frobenius = float(cnf.losses[0])  # the regulariser first, then the NLL
        error = log_prob[0] - _closed_form(X[:1], 0.0, 1.0)[0]
        matches = [e for e in itertools.product((-1.0, 1.0), repeat=D)
                   if abs(np.dot(e, W @ e) - np.trace(W) - error) < 1e-6
                   and abs(np.mean((W @ np.array(e)) ** 2) - frobenius) < 1e-6]
        assert matches, (error, frobenius)
