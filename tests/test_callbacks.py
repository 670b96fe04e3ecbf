"""keras_node.callbacks.NFELogger against API.md ("Keras layer", last points).

NFELogger adds `nfe_forward` and `nfe_backward`, summed over the model's ODE
layers, to the epoch logs (so `History` records them) and, by default, to
each batch's logs.
"""

import keras
import numpy as np
import pytest

import keras_node
from keras_node.callbacks import NFELogger
from keras_node.dynamics import MLP

NFE_KEYS = ("nfe_forward", "nfe_backward")
# The solver loops are not XLA-compiled here: what is tested is the logging,
# and compiling each layer's loops would triple the cost of these tests.
PLAIN = {"jit_compile": False}


class _BatchLogRecorder(keras.callbacks.Callback):
    """Keeps a copy of every batch's logs (runs after NFELogger in the list)."""

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


def _fit(model, callbacks, epochs=2):
    x, y = _data()
    model.compile(keras.optimizers.Adam(0.02), "mse")
    return model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=callbacks).history


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

    # log_every_batch (default): every batch's logs carry the counts.
    assert len(recorder.batch_logs) == 4
    for logs in recorder.batch_logs:
        assert logs["nfe_forward"] > 0 and logs["nfe_backward"] > 0
    assert recorder.batch_logs[-1]["nfe_forward"] == history["nfe_forward"][-1]


def test_backprop_logs_zero_backward_and_epoch_only_logging():
    keras.utils.set_random_seed(0)
    layer = keras_node.ODELayer(MLP(units=(8,)), gradient="backprop", **PLAIN)
    model = keras.Sequential([keras.Input((2,)), layer, keras.layers.Dense(1)])
    recorder = _BatchLogRecorder()
    history = _fit(model, [NFELogger(log_every_batch=False), recorder])
    assert all(v > 0 for v in history["nfe_forward"]), history["nfe_forward"]
    assert history["nfe_forward"][-1] == layer.nfe_forward
    assert history["nfe_backward"] == [0, 0]
    assert recorder.batch_logs and all(key not in logs for logs in recorder.batch_logs for key in NFE_KEYS)


def test_model_without_ode_layers_logs_zero():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    history = _fit(model, [NFELogger()], epochs=1)
    assert history["nfe_forward"] == [0] and history["nfe_backward"] == [0]


def test_is_a_keras_callback_in_the_callbacks_module():
    assert keras_node.callbacks.NFELogger is NFELogger
    assert isinstance(NFELogger(), keras.callbacks.Callback)
