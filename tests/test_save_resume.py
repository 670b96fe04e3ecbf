"""Train, save, load, resume: nothing is lost (issue 8).

- `.keras` round trip mid-training: train 2 epochs -> `model.save` ->
  `keras.models.load_model(safe_mode=True)` -> train 2 more epochs gives
  exactly the weights (and optimizer state) of 4 uninterrupted epochs. The
  `.keras` file carries the optimizer's variables; data are not shuffled and
  both models start from the same seeded initial weights. The model holds
  two ODELayers, one with `dynamics.MLP` and one with a user-defined
  registered dynamics layer, so safe-mode loading covers both.
- The resumed model exported as a TensorFlow SavedModel serves the model's
  outputs after reloading.
- `keras.callbacks.ModelCheckpoint` with `save_weights_only=False` (`.keras`
  files, loaded back in safe mode) and `True` (`.weights.h5`) saves models
  with an ODELayer that reproduce the trained model.
- `keras.callbacks.BackupAndRestore`: a run interrupted by an exception at
  the start of epoch 2 and restarted with the same backup directory (on a
  freshly built model with *different* initial weights) resumes at epoch 2
  and ends with exactly the weights of an uninterrupted run.

Tolerances: none. The same operations on the same weights and data on CPU
are bitwise reproducible, so weights, optimizer state and predictions must
be identical; so are the SavedModel's outputs (measured: max difference 0.0;
test_saving.py allows 1e-5 for Grappler rewrites in general, but this graph
is served bit for bit, and anything else here would be a change in the
computation worth knowing about).

The layers use `jit_compile=False`: this file tests Keras plumbing, not the
XLA path (covered by test_ode_layer.py and test_saving.py).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_node
from keras_node.dynamics import MLP

EPOCHS, SPLIT_EPOCH, BATCH_SIZE = 4, 2, 8


@keras.saving.register_keras_serializable(package="keras_node_tests")
class DampedDrive(keras.layers.Layer):
    """User-defined time-dependent dynamics: dh/dt = -k * h + tanh(h W) sin(t)."""

    def build(self, input_shape):
        features = input_shape[-1]
        self.k = self.add_weight(shape=(features,), initializer="ones", name="k")
        self.w = self.add_weight(shape=(features, features), initializer="glorot_uniform", name="w")

    def call(self, h, t):
        return -self.k * h + keras.ops.tanh(h @ self.w) * keras.ops.sin(t)

    def compute_output_shape(self, input_shape):
        return input_shape


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype("float32")
    y = (np.sin(x[:, :1]) - 0.5 * x[:, 1:2]).astype("float32")
    return x, y


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((3,)),
        keras_node.ODELayer(MLP(units=(8,), final_initializer="glorot_uniform"), t=(0.0, 0.5, 1.0),
                            jit_compile=False, name="ode_mlp"),
        keras_node.ODELayer(DampedDrive(), jit_compile=False, name="ode_custom"),
        keras.layers.Dense(1),
    ])
    model.compile(keras.optimizers.Adam(0.01), "mse")
    return model


def _fit(model, epochs, **kwargs):
    x, y = _data()
    return model.fit(x, y, batch_size=BATCH_SIZE, epochs=epochs, shuffle=False, verbose=0, **kwargs)


def _state(model):
    """Every number that determines how training continues."""
    return ([np.array(v) for v in model.trainable_variables]
            + [np.array(v) for v in model.optimizer.variables])


def _assert_same_state(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_array_equal(a, e)


@pytest.fixture(scope="module")
def reference():
    """A model trained for EPOCHS epochs without interruption."""
    model = _model()
    _fit(model, EPOCHS)
    return model


@pytest.fixture(scope="module")
def resumed(reference, tmp_path_factory):
    """(uninterrupted model, model trained / saved / loaded / trained on)."""
    first = _model()
    _fit(first, SPLIT_EPOCH)
    path = str(tmp_path_factory.mktemp("resume") / "half.keras")
    first.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert isinstance(loaded.get_layer("ode_mlp").dynamics, MLP)
    assert isinstance(loaded.get_layer("ode_custom").dynamics, DampedDrive)
    _assert_same_state(_state(loaded), _state(first))  # the save lost nothing
    _fit(loaded, EPOCHS - SPLIT_EPOCH)
    return reference, loaded


def test_keras_file_resume_equals_uninterrupted_training(resumed):
    reference, loaded = resumed
    assert int(loaded.optimizer.iterations) == int(reference.optimizer.iterations) == EPOCHS * 4
    _assert_same_state(_state(loaded), _state(reference))


def test_saved_model_of_resumed_model_serves_its_outputs(resumed, tmp_path):
    _, loaded = resumed
    x, _ = _data()
    path = str(tmp_path / "exported")
    loaded.export(path, verbose=False)
    reloaded = tf.saved_model.load(path)  # keep a reference: it owns the variables
    served = reloaded.serve(tf.constant(x)).numpy()
    # Same weights and solver; the exported graph and Keras' predict may fuse
    # float32 ops differently, so they agree to round-off, not bit for bit
    # (measured: 4.8e-7 at most).
    np.testing.assert_allclose(served, loaded.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- ModelCheckpoint


def test_model_checkpoint_full_model(tmp_path):
    model = _model()
    pattern = str(tmp_path / "epoch-{epoch:02d}.keras")
    _fit(model, 3, callbacks=[keras.callbacks.ModelCheckpoint(pattern, save_weights_only=False)])
    x, _ = _data()
    last = keras.models.load_model(pattern.format(epoch=3), safe_mode=True)
    first = keras.models.load_model(pattern.format(epoch=1), safe_mode=True)
    np.testing.assert_array_equal(last.predict(x, verbose=0), model.predict(x, verbose=0))
    _assert_same_state(_state(last), _state(model))  # optimizer state included
    assert not np.array_equal(np.array(first.trainable_variables[0]), np.array(model.trainable_variables[0]))


def test_model_checkpoint_weights_only(tmp_path):
    model = _model()
    pattern = str(tmp_path / "epoch-{epoch:02d}.weights.h5")
    _fit(model, 2, callbacks=[keras.callbacks.ModelCheckpoint(pattern, save_weights_only=True)])
    restored = _model(seed=1)  # different initial weights
    # Build the optimizer's slots first, or Keras skips its saved state (as
    # BackupAndRestore does before loading).
    restored.optimizer.build(restored.trainable_variables)
    restored.load_weights(pattern.format(epoch=2))
    for a, e in zip(restored.weights, model.weights):  # incl. the layers' NFE counters
        np.testing.assert_array_equal(np.array(a), np.array(e), err_msg=a.path)
    _assert_same_state(_state(restored), _state(model))
    x, _ = _data()
    np.testing.assert_array_equal(restored.predict(x, verbose=0), model.predict(x, verbose=0))


# ---------------------------------------------------------------------------- BackupAndRestore


class Interrupt(Exception):
    pass


class InterruptAtEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Interrupt(f"simulated interruption at epoch {epoch}")


def test_backup_and_restore_resumes_at_the_right_epoch(reference, tmp_path):
    backup_dir = str(tmp_path / "backup")
    interrupted = _model()
    with pytest.raises(Interrupt):
        _fit(interrupted, EPOCHS, callbacks=[keras.callbacks.BackupAndRestore(backup_dir),
                                            InterruptAtEpoch(SPLIT_EPOCH)])
    restarted = _model(seed=1)  # a new process would build the model afresh
    history = _fit(restarted, EPOCHS, callbacks=[keras.callbacks.BackupAndRestore(backup_dir)])
    assert history.epoch == list(range(SPLIT_EPOCH, EPOCHS))
    assert int(restarted.optimizer.iterations) == EPOCHS * 4
    _assert_same_state(_state(restarted), _state(reference))
