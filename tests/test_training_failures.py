"""A Neural ODE that blows up mid-`fit` stops training loudly and quickly (issue 8).

The model is `Input -> ODELayer(Quadratic) -> Dense`, where the registered
dynamics `Quadratic` compute dh/dt = scale * h**2 (`scale` a trainable
weight, initialised to 1). From h0 the exact solution h0 / (1 - scale h0 t)
blows up at t* = 1 / (scale h0). The data are ordered (`shuffle=False`):
the first batches have h0 = 0.1 (t* = 10, far beyond t = 1, a handful of
steps), the later ones h0 = 5 (t* ~ 0.2 < 1), so the solve of a later batch
fails. A small `max_num_steps` bounds the work of the failing solve, so
nothing can hang.

Contract (API.md "Errors", "Keras layer"):
- eager (`run_eagerly=True`) and graph mode: `fit` raises
  `tf.errors.InvalidArgumentError` whose message names the layer
  ("ODELayer 'blowup'"), the cause (max_num_steps / step size underflow /
  non-finite) and the time reached, which must lie between t = 0 and just
  past the blow-up time t* ~ 0.2; the batches before the bad one trained.
- `model.compile(jit_compile=True)`: XLA cannot raise, so the outputs and
  hence the loss become NaN and `keras.callbacks.TerminateOnNaN` stops
  training at the bad batch.

The layers pass `jit_compile=False` (plumbing) except in the XLA case and
in "graph-xla-solver-loops", which keep the default `jit_compile="auto"`:
there the solver loops are nested XLA functions inside a non-XLA training
step, and a failure must still raise rather than turn into NaN.

Wall time: every case must finish within `TIME_LIMIT` seconds (generous: it
includes tracing and, for XLA, compiling the training step; measured about
2-6 s each on 2 CPU cores).
"""

import re
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_node

GOOD_BATCHES, BAD_BATCHES, BATCH_SIZE = 3, 2, 4
MAX_NUM_STEPS = 40
TIME_LIMIT = 60.0
BLOWUP_TIME = 1.0 / 5.0  # t* for h0 = 5, scale = 1

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
# "Time reached: t = 0.19" (eager) or "Time reached: t =] [0.19]" (graph).
_TIME_REACHED = r"(?i)time reached[^0-9+-]{0,16}(" + _NUMBER + ")"
_CAUSE = r"max_num_steps|step size underflow|non-finite"


@keras.saving.register_keras_serializable(package="keras_node_tests")
class Quadratic(keras.layers.Layer):
    """dh/dt = scale * h**2 (autonomous); blows up in finite time."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

    def call(self, h):
        return self.scale * h * h

    def compute_output_shape(self, input_shape):
        return input_shape


def _data():
    """Good batches first, then bad ones (fit with shuffle=False)."""
    h0 = np.concatenate([np.full((GOOD_BATCHES * BATCH_SIZE, 2), 0.1),
                         np.full((BAD_BATCHES * BATCH_SIZE, 2), 5.0)]).astype("float32")
    return h0, np.zeros((len(h0), 1), "float32")


def _model(layer_jit_compile=False, **compile_kwargs):
    keras.utils.set_random_seed(0)
    layer = keras_node.ODELayer(Quadratic(), max_num_steps=MAX_NUM_STEPS, jit_compile=layer_jit_compile,
                                name="blowup")
    model = keras.Sequential([keras.Input((2,)), layer, keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(1e-3), "mse", **compile_kwargs)
    return model


class _BatchCounter(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1


@pytest.mark.parametrize(
    "mode, layer_jit_compile",
    [("eager", False), ("graph", False), pytest.param("graph", "auto", marks=pytest.mark.auto_jit)],
    ids=["eager", "graph", "graph-xla-solver-loops"],
)
def test_blowup_mid_fit_raises_naming_layer_cause_and_time(mode, layer_jit_compile):
    # "graph-xla-solver-loops": the layer's default jit_compile="auto" runs the
    # solver loops as nested XLA functions inside the (non-XLA) training step;
    # the failure must still raise, not turn into NaN.
    model = _model(layer_jit_compile, run_eagerly=(mode == "eager"), jit_compile=False)
    x, y = _data()
    counter = _BatchCounter()
    start = time.perf_counter()
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        model.fit(x, y, batch_size=BATCH_SIZE, epochs=3, shuffle=False, verbose=0, callbacks=[counter])
    elapsed = time.perf_counter() - start
    assert elapsed < TIME_LIMIT, elapsed
    message = info.value.message
    # Graph-mode assertion messages print string tensors C-escaped: \'blowup\'.
    assert re.search(r"ODELayer \\?'blowup\\?'", message), message
    assert re.search(_CAUSE, message), message
    times = [float(v) for v in re.findall(_TIME_REACHED, message)]
    assert times and all(0.0 < t_ <= 1.5 * BLOWUP_TIME for t_ in times), message
    # Training ran until the first bad batch, then stopped.
    assert counter.batches == GOOD_BATCHES, counter.batches


def test_blowup_mid_fit_under_xla_gives_nan_loss_and_terminate_on_nan_stops():
    model = _model("auto", jit_compile=True)
    x, y = _data()
    counter = _BatchCounter()
    epochs = 3
    start = time.perf_counter()
    history = model.fit(x, y, batch_size=BATCH_SIZE, epochs=epochs, shuffle=False, verbose=0,
                        callbacks=[counter, keras.callbacks.TerminateOnNaN()])
    elapsed = time.perf_counter() - start
    assert elapsed < TIME_LIMIT, elapsed
    assert model.stop_training
    # Stopped at the first bad batch: the good ones ran, nothing after.
    assert counter.batches == GOOD_BATCHES + 1, counter.batches
    assert len(history.epoch) < epochs
    assert np.isnan(history.history["loss"][-1]), history.history


def test_good_batches_alone_train_without_error():
    """Control: without the bad batches the same model fits (the failure above
    is the blow-up, not the set-up)."""
    model = _model(jit_compile=False)
    x, y = _data()
    n = GOOD_BATCHES * BATCH_SIZE
    history = model.fit(x[:n], y[:n], batch_size=BATCH_SIZE, epochs=2, shuffle=False, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
