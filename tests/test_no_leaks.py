"""No retracing per batch size, no growth over long training, no stale caches (issue 8).

How retracing is counted: `Counted`, the dynamics layer of these models,
increments a class counter in the Python body of `call`, which runs only
while TensorFlow traces (or Keras builds) the model, never when a compiled
function executes. A solve's trace runs it a fixed number of times (once
per Runge-Kutta stage and step-size probe), so "calls during one new
trace" is measured, not assumed. Concrete functions are also counted
directly as the functions registered with TensorFlow's eager context
(`context.context().list_function_names()`, an internal but stable API).

Memory: process RSS (VmRSS in /proc/self/status, after gc.collect()).
Measured for the 2000-step test on 2 CPU cores (TF 2.21, Keras 3.15):
1099.2 MB after 200 steps, 1099.6 MB after 1000, 1099.7 MB after 2000
(+0.5 MB); registered functions 87 -> 87 and the dynamics trace counter
39 -> 39 over the same steps. The 50 MB bound leaves room for allocator
noise while catching a leak of 28 KB per step.

Plumbing tests pass `jit_compile=False`; the 2000-step test keeps the
layer's default `jit_compile="auto"` (XLA-compiled solver loops), the path
most users train with.
"""

import gc
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.eager import context

import keras_node

STEPS_WARM, STEPS_TOTAL = 200, 2000
RSS_GROWTH_LIMIT_MB = 50.0


def rss_mb():
    if not os.path.exists("/proc/self/status"):
        pytest.skip("RSS is read from /proc/self/status (Linux)")
    gc.collect()  # count leaks, not garbage awaiting the cycle collector
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    pytest.skip("no VmRSS line in /proc/self/status")


def registered_functions():
    gc.collect()
    return len(context.context().list_function_names())


class Counted(keras.layers.Layer):
    """dh/dt = tanh(h W); counts executions of its Python `call` body."""

    calls = 0

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], input_shape[-1]), initializer="glorot_uniform",
                                 name="w")

    def call(self, h):
        Counted.calls += 1
        return keras.ops.tanh(h @ self.w)

    def compute_output_shape(self, input_shape):
        return input_shape


def _model(features=3, **layer_kwargs):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((features,)), keras_node.ODELayer(Counted(), **layer_kwargs),
                             keras.layers.Dense(1)])


# ---------------------------------------------------------------------------- batch sizes


@pytest.mark.parametrize("how", ["model_call", "predict"])
def test_batch_sizes_1_to_8_do_not_retrace_per_size(how):
    model = _model(jit_compile=False)
    rng = np.random.default_rng(0)

    def run(batch_size):
        x = rng.normal(size=(batch_size, 3)).astype("float32")
        before = Counted.calls
        if how == "model_call":
            y = model(x)
        else:
            y = model.predict(x, batch_size=batch_size, verbose=0)
        assert y.shape == (batch_size, 1)
        return Counted.calls - before

    per_trace = run(1)  # the first call traces once
    assert per_trace > 0
    later = [run(batch_size) for batch_size in range(2, 9)]
    # Allowed: one more trace when the batch dimension is relaxed to None
    # (what Keras' own `reduce_retracing=True` functions do), then none.
    assert sum(later) <= per_trace, f"{how}: calls per batch size 2..8 = {later}, one trace = {per_trace}"


# ---------------------------------------------------------------------------- long training


def test_2000_training_steps_keep_traces_and_memory_flat():
    model = _model(features=4)  # default jit_compile="auto"
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype("float32")
    y = rng.normal(size=(16, 1)).astype("float32")
    for _ in range(STEPS_WARM):
        model.train_on_batch(x, y)
    warm = (Counted.calls, registered_functions(), rss_mb())
    for _ in range(STEPS_TOTAL - STEPS_WARM):
        loss = model.train_on_batch(x, y)
    done = (Counted.calls, registered_functions(), rss_mb())
    assert np.isfinite(loss)
    assert done[0] == warm[0], f"dynamics retraced during training: {warm[0]} -> {done[0]}"
    assert done[1] == warm[1], f"registered functions grew: {warm[1]} -> {done[1]}"
    assert done[2] - warm[2] < RSS_GROWTH_LIMIT_MB, f"RSS {warm[2]:.1f} MB -> {done[2]:.1f} MB"


def test_eager_training_steps_do_not_retrace():
    """`run_eagerly=True`: the eager compile cache is reused step after step."""
    model = _model(features=4, jit_compile=False)
    model.compile(keras.optimizers.Adam(1e-3), "mse", run_eagerly=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype("float32")
    y = rng.normal(size=(16, 1)).astype("float32")
    for _ in range(3):
        model.train_on_batch(x, y)
    warm = (Counted.calls, registered_functions())
    for _ in range(50):
        model.train_on_batch(x, y)
    assert (Counted.calls, registered_functions()) == warm


# ---------------------------------------------------------------------------- eager compile cache


class Rate(keras.layers.Layer):
    """dh/dt = -rate * h with `rate` a plain Python attribute."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rate = 1.0

    def call(self, h):
        return -self.rate * h

    def compute_output_shape(self, input_shape):
        return input_shape


def test_eager_layer_call_sees_changed_python_attribute_of_its_dynamics():
    """Eager Keras semantics: a layer reads its Python attributes on every
    call, so an eager ODELayer call must not serve a solve traced with the
    old value (nothing cached may give a stale answer)."""
    dynamics = Rate()
    layer = keras_node.ODELayer(dynamics, rtol=1e-6, atol=1e-8, jit_compile=False)
    x = tf.ones((1, 1))
    np.testing.assert_allclose(float(layer(x)[0, 0]), np.exp(-1.0), rtol=1e-4)
    dynamics.rate = 2.0
    np.testing.assert_allclose(float(layer(x)[0, 0]), np.exp(-2.0), rtol=1e-4)


SCALE = 1.0  # a Python global that `scaled_decay` reads


def scaled_decay(t, y):
    return -SCALE * y


def test_func_reading_a_changing_python_global_keeps_memory_bounded():
    """A func reading Python state that changes on every call (a schedule, a
    step counter) needs a new trace each call to stay correct; the cache of
    those traces must not grow without bound (measured before the fix: +1
    registered function set and ~4.7 MB per call, forever)."""
    global SCALE
    y0 = tf.constant([1.0], tf.float64)

    def solve(i):
        global SCALE
        SCALE = 1.0 + 0.01 * i
        y1 = keras_node.odeint(scaled_decay, y0, [0.0, 1.0], rtol=1e-8, atol=1e-10, jit_compile=False)[-1, 0]
        np.testing.assert_allclose(float(y1), np.exp(-SCALE), rtol=1e-6)  # correct, never stale
        if i % 5 == 0:
            # Dropped traces are reference cycles: collect them as we go, so
            # that RSS (which never shrinks) measures what stays reachable.
            gc.collect()

    try:
        for i in range(10):
            solve(i)
        functions_warm, rss_warm = registered_functions(), rss_mb()
        for i in range(10, 30):
            solve(i)
        functions_done, rss_done = registered_functions(), rss_mb()
    finally:
        SCALE = 1.0
    # A bounded cache (say the latest 8 traces per function) keeps both flat.
    assert functions_done - functions_warm <= 10, f"registered functions {functions_warm} -> {functions_done}"
    assert rss_done - rss_warm < RSS_GROWTH_LIMIT_MB, f"RSS {rss_warm:.1f} MB -> {rss_done:.1f} MB"
