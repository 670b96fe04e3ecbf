"""Saving and exporting models with an ODELayer (API.md, "Keras layer").

- `.keras` files: `model.save` + `keras.models.load_model(safe_mode=True)`
  give identical predictions, also with user-defined registered dynamics.
- `model.export(path)` (TensorFlow SavedModel): the `serve` endpoint and
  `keras.layers.TFSMLayer` match the model's predictions; gradients through
  the reloaded serving function (the adjoint's custom gradient is kept) match
  the original model's, for the input and for the variables (fine-tuning);
  and the SavedModel loads and serves in a fresh Python that never imports
  keras_node.
- An unknown dynamics class in a config fails with an error that names it.

Tolerances: a reloaded `.keras` model runs the same operations on the same
weights, so predictions must be identical. A SavedModel runs the traced graph
(possibly optimised differently by Grappler): 1e-5 for values, 1e-4 relative
for gradients (the backward solve has more arithmetic to reorder).
"""

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_node
from keras_node.dynamics import MLP

SERVE_TOL = 1e-5
GRAD_RTOL = 1e-4


@keras.saving.register_keras_serializable(package="keras_node_tests")
class DampedRotation(keras.layers.Layer):
    """User-defined time-dependent dynamics with a weight: dh/dt = -k h + sin(t)."""

    def build(self, input_shape):
        self.k = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="k")

    def call(self, h, t):
        return -self.k * h + keras.ops.sin(t) * keras.ops.ones_like(h)

    def compute_output_shape(self, input_shape):
        return input_shape


def _sample(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _as_json(config):
    """The config as stored in a .keras file (tuples become lists)."""
    return json.loads(json.dumps(config))


def _mlp_model():
    keras.utils.set_random_seed(0)
    layer = keras_node.ODELayer(MLP(units=(8,), final_initializer="glorot_uniform"),
                                t=(0.0, 0.5, 1.0), return_sequences=True)
    return keras.Sequential([
        keras.Input((3,)), layer, keras.layers.Flatten(), keras.layers.Dense(2),
    ])


def _custom_dynamics_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    outputs = keras_node.ODELayer(DampedRotation(), gradient="backprop", method="bosh3")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2)(outputs))


# --- .keras files ---------------------------------------------------------------


@pytest.mark.parametrize("make_model", [_mlp_model, _custom_dynamics_model], ids=["mlp", "custom_dynamics"])
def test_keras_file_round_trip(make_model, tmp_path):
    model = make_model()
    x = _sample((8, 3))
    expected = model.predict(x, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)

    ode_layers = [layer for layer in loaded.layers if isinstance(layer, keras_node.ODELayer)]
    original = [layer for layer in model.layers if isinstance(layer, keras_node.ODELayer)]
    assert len(ode_layers) == 1
    assert type(ode_layers[0].dynamics) is type(original[0].dynamics)
    assert _as_json(ode_layers[0].get_config()) == _as_json(original[0].get_config())
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)


# --- SavedModel export ----------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The MLP model (adjoint gradients), its predictions, and its SavedModel."""
    model = _mlp_model()
    x = _sample((8, 3))
    path = str(tmp_path_factory.mktemp("saved") / "model")
    model.export(path, verbose=False)
    return model, x, model.predict(x, verbose=0), path


def test_export_serve_matches_predictions(exported):
    _, x, expected, path = exported
    reloaded = tf.saved_model.load(path)
    np.testing.assert_allclose(reloaded.serve(tf.constant(x)).numpy(), expected,
                               rtol=SERVE_TOL, atol=SERVE_TOL)
    # A different batch size (the serving signature has an unknown batch).
    np.testing.assert_allclose(reloaded.serve(tf.constant(x[:3])).numpy(), expected[:3],
                               rtol=1e-3, atol=1e-3)  # adaptive steps depend on the batch


def test_tfsm_layer_matches_predictions(exported):
    _, x, expected, path = exported
    layer = keras.layers.TFSMLayer(path, call_endpoint="serve")
    np.testing.assert_allclose(np.asarray(layer(x)), expected, rtol=SERVE_TOL, atol=SERVE_TOL)


def _loss(outputs):
    return tf.reduce_sum(tf.square(outputs))


def test_gradients_through_reloaded_serving_function(exported):
    model, x, _, path = exported
    reloaded = tf.saved_model.load(path)
    x = tf.constant(x)

    variables = list(reloaded.trainable_variables)
    # One non-persistent tape: TensorFlow itself cannot record a reloaded
    # function with a while loop that reads variables on a persistent tape
    # ("variable without handle data"; a Keras SimpleRNN fails the same way).
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = _loss(reloaded.serve(x))
    input_grad, *variable_grads = tape.gradient(loss, [x] + variables)

    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = _loss(model(x))
    expected_input_grad, *expected_variable_grads = tape.gradient(loss, [x] + model.trainable_variables)

    assert input_grad is not None and np.all(np.isfinite(input_grad))
    np.testing.assert_allclose(input_grad.numpy(), expected_input_grad.numpy(),
                               rtol=GRAD_RTOL, atol=GRAD_RTOL * np.abs(expected_input_grad).max())

    # Fine-tuning: the reloaded variables get the original model's gradients.
    assert [v.shape for v in variables] == [v.shape for v in model.trainable_variables]
    for grad, expected in zip(variable_grads, expected_variable_grads):
        assert grad is not None and np.all(np.isfinite(grad))
        np.testing.assert_allclose(np.asarray(grad), np.asarray(expected),
                                   rtol=GRAD_RTOL, atol=GRAD_RTOL * np.abs(expected).max())


_FRESH_PYTHON = textwrap.dedent(
    """
    import json, sys
    sys.modules["keras_node"] = None  # any import of keras_node now fails
    import numpy as np
    import tensorflow as tf

    x = tf.constant(np.load(sys.argv[2]))
    reloaded = tf.saved_model.load(sys.argv[1])
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = reloaded.serve(x)
        loss = tf.reduce_sum(tf.square(outputs))
    grad = tape.gradient(loss, x)
    imported = sorted(name for name in sys.modules if name.startswith("keras_node") and sys.modules[name])
    print(json.dumps({"outputs": outputs.numpy().tolist(), "grad": grad.numpy().tolist(),
                      "imported": imported}))
    """
)


def test_saved_model_serves_without_keras_node(exported, tmp_path):
    model, x, expected, path = exported
    x_path = str(tmp_path / "x.npy")
    np.save(x_path, x)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_PYTHON, path, x_path], capture_output=True, text=True,
        cwd=str(tmp_path), env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["imported"] == []
    np.testing.assert_allclose(np.asarray(report["outputs"]), expected, rtol=SERVE_TOL, atol=SERVE_TOL)

    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = _loss(model(xt))
    expected_grad = tape.gradient(loss, xt).numpy()
    np.testing.assert_allclose(np.asarray(report["grad"]), expected_grad,
                               rtol=GRAD_RTOL, atol=GRAD_RTOL * np.abs(expected_grad).max())


# --- unknown dynamics class -----------------------------------------------------------


def _with_unknown_dynamics(config):
    dynamics = config["dynamics"]
    dynamics["class_name"] = "NoSuchDynamics"
    dynamics["registered_name"] = "keras_node_tests>NoSuchDynamics"
    dynamics["module"] = "no_such_module"
    return config


def test_unknown_dynamics_class_in_layer_config_fails_clearly():
    layer = keras_node.ODELayer(MLP(units=(4,)))
    config = _with_unknown_dynamics(layer.get_config())
    with pytest.raises(ValueError) as info:
        keras_node.ODELayer.from_config(config)
    assert "NoSuchDynamics" in str(info.value)
    assert "register_keras_serializable" in str(info.value)  # says how to fix it


def test_unknown_dynamics_class_in_keras_file_fails_clearly(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras_node.ODELayer(MLP(units=(4,)))])
    good = str(tmp_path / "good.keras")
    model.save(good)
    bad = str(tmp_path / "bad.keras")
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(bad, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            if name == "config.json":
                config = json.loads(data)
                ode = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "ODELayer")
                _with_unknown_dynamics(ode["config"])
                data = json.dumps(config)
            target.writestr(name, data)
    with pytest.raises((ValueError, TypeError)) as info:
        keras.models.load_model(bad, safe_mode=True)
    assert "NoSuchDynamics" in str(info.value)
    assert "register_keras_serializable" in str(info.value)
