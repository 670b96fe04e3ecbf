"""keras_node.callbacks.NFELogger against API.md ("Keras layer", last points)
and issue 19 (any position among the callbacks; TensorBoard gets the values).

NFELogger adds `nfe_forward` and `nfe_backward`, summed over the model's ODE
layers, to every batch's and epoch's logs (so `History` records them). They
come from metrics the training step computes, so callbacks before it in the
list see them too; TensorBoard's event files are read back to check.
"""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_node
from keras_node.callbacks import NFELogger
from keras_node.dynamics import MLP

NFE_KEYS = ("nfe_forward", "nfe_backward")
# The solver loops are not XLA-compiled here: what is tested is the logging,
# and compiling each layer's loops would triple the cost of these tests.
PLAIN = {"jit_compile": False}


class _BatchLogRecorder(keras.callbacks.Callback):
    """Keeps a copy of every batch's logs."""

    def __init__(self):
        super().__init__()
        self.batch_logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.batch_logs.append(dict(logs or {}))


def _data(n=64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 2)).astype("float32")
    y = (np.sin(x[:, :1]) + 0.5 * x[:, 1:] ** 2).astype("float32")
    return x, y


def _fit(model, callbacks, epochs=2, **fit_kwargs):
    x, y = _data()
    model.compile(keras.optimizers.Adam(0.02), "mse")
    return model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=callbacks,
                     **fit_kwargs).history


def _small_model(**layer_kwargs):
    keras.utils.set_random_seed(0)
    layer = keras_node.ODELayer(MLP(units=(8,), final_initializer="glorot_uniform"),
                                **PLAIN, **layer_kwargs)
    return keras.Sequential([keras.Input((2,)), layer, keras.layers.Dense(1)]), layer


def _tensorboard_tags(log_dir):
    """`{"train/epoch_nfe_forward": [steps], ...}` from TensorBoard's event files."""
    tags = {}
    for path in glob.glob(os.path.join(log_dir, "**", "events.*"), recursive=True):
        run = os.path.relpath(path, log_dir).split(os.sep)[0]
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(f"{run}/{value.tag}", []).append(event.step)
    return tags


@pytest.mark.auto_jit
def test_logs_sum_over_two_ode_layers_including_a_nested_one():
    keras.utils.set_random_seed(0)
    first = keras_node.ODELayer(MLP(units=(8,), final_initializer="glorot_uniform"),
                                name="first_ode", **PLAIN)
    second = keras_node.ODELayer(MLP(units=(8,), final_initializer="glorot_uniform"),
                                 t=(0.0, 2.0), name="second_ode", **PLAIN)
    block = keras.Sequential([keras.layers.Dense(3), second], name="block")  # nested model
    model = keras.Sequential([keras.Input((2,)), first, block, keras.layers.Dense(1)])
    recorder = _BatchLogRecorder()
    history = _fit(model, [NFELogger(), recorder])

    for key in NFE_KEYS:
        values = history[key]
        assert len(values) == 2, (key, values)
        assert all(isinstance(v, (int, float, np.number)) and v > 0 for v in values), (key, values)
    # Epoch logs are the last batch's counts, summed over both layers.
    per_layer = {"nfe_forward": (first.nfe_forward, second.nfe_forward),
                 "nfe_backward": (first.nfe_backward, second.nfe_backward)}
    for key, (a, b) in per_layer.items():
        assert a > 0 and b > 0, (key, a, b)
        assert history[key][-1] == a + b, (key, history[key][-1], a, b)

    # Every batch's logs carry the counts.
    assert len(recorder.batch_logs) == 4
    for logs in recorder.batch_logs:
        assert logs["nfe_forward"] > 0 and logs["nfe_backward"] > 0
    assert recorder.batch_logs[-1]["nfe_forward"] == history["nfe_forward"][-1]


def test_backprop_logs_zero_backward():
    model, layer = _small_model(gradient="backprop")
    history = _fit(model, [NFELogger()])
    assert all(v > 0 for v in history["nfe_forward"]), history["nfe_forward"]
    assert history["nfe_forward"][-1] == layer.nfe_forward
    assert history["nfe_backward"] == [0, 0]


@pytest.mark.parametrize("update_freq", ["epoch", "batch"])
@pytest.mark.parametrize("nfe_first", [True, False], ids=["nfe-first", "tensorboard-first"])
def test_any_position_reaches_tensorboard_and_the_callbacks_before_it(nfe_first, update_freq, tmp_path):
    # tensorboard comes with the [examples] extra, which [test] includes.
    model, layer = _small_model()
    recorder = _BatchLogRecorder()
    board = keras.callbacks.TensorBoard(str(tmp_path), update_freq=update_freq)
    callbacks = [NFELogger(), recorder, board] if nfe_first else [recorder, board, NFELogger()]
    x, y = _data(32)
    history = _fit(model, callbacks, validation_data=(x, y))

    tags = _tensorboard_tags(str(tmp_path))
    for key in NFE_KEYS:
        assert tags.get(f"train/epoch_{key}") == [0, 1], sorted(tags)
        assert f"validation/epoch_{key}" in tags, sorted(tags)
        if update_freq == "batch":
            assert len(tags.get(f"train/batch_{key}", [])) == 4, sorted(tags)
    # A recorder placed before NFELogger sees the counts of every batch.
    assert len(recorder.batch_logs) == 4 and all(logs["nfe_forward"] > 0 and logs["nfe_backward"] > 0
                                                for logs in recorder.batch_logs)
    # Validation solves forward only: its backward count is 0, not training's.
    assert all(v > 0 for v in history["val_nfe_forward"]) and history["val_nfe_backward"] == [0, 0]
    assert layer.nfe_backward == 0  # the last call was validation's


def test_metrics_are_detached_after_fit():
    model, _ = _small_model()
    x, y = _data()
    _fit(model, [], epochs=1)
    before = model.evaluate(x, y, verbose=0)
    history = _fit(model, [NFELogger()], epochs=1)  # retraces the step with the counts
    assert history["nfe_forward"][0] > 0
    after = model.evaluate(x, y, verbose=0)
    assert np.isscalar(before) and np.isscalar(after), (before, after)  # [loss] only, as before
    assert model.metrics_names == ["loss"]
    assert "nfe_forward" not in _fit(model, [], epochs=1)  # and gone from later fits


def test_evaluate_with_the_callback_reports_forward_counts_once():
    model, _ = _small_model()
    x, y = _data()
    _fit(model, [], epochs=1)
    logs = model.evaluate(x, y, verbose=0, callbacks=[NFELogger()], return_dict=True)
    assert logs["nfe_forward"] > 0 and logs["nfe_backward"] == 0, logs
    assert np.isscalar(model.evaluate(x, y, verbose=0))


def test_log_every_batch_false_is_deprecated():
    with pytest.warns(DeprecationWarning, match="log_every_batch"):
        NFELogger(log_every_batch=False)


def test_model_without_ode_layers_logs_zero():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    history = _fit(model, [NFELogger()], epochs=1)
    assert history["nfe_forward"] == [0] and history["nfe_backward"] == [0]


def test_is_a_keras_callback_in_the_callbacks_module():
    assert keras_node.callbacks.NFELogger is NFELogger
    assert isinstance(NFELogger(), keras.callbacks.Callback)
