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


@pytest.mark.auto_jit
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
    assert done[1] <= warm[1], f"registered functions grew: {warm[1]} -> {done[1]}"
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
    assert Counted.calls == warm[0] and registered_functions() <= warm[1]


# ---------------------------------------------------------------------------- eager compile cache


@pytest.mark.auto_jit  # XLA-compiled functions per call are what could leak
@pytest.mark.parametrize("solver", ["odeint", "odeint_adjoint"])
def test_a_new_function_per_call_keeps_memory_bounded(solver):
    """Eager calls compile once per function object and hold it weakly: a
    func made anew for every call (a closure over a changing value) is traced
    each time, and each trace is freed with its function. Measured by what is
    deterministic: TensorFlow's registered functions and Python's live
    objects (a leaked trace keeps its graph: thousands of objects, and ~5 MB
    of RSS, per call). RSS itself swings by +-100 MB in a large test process,
    so it is checked by the 2000-step test above, not here."""
    y0 = tf.constant([1.0], tf.float64)

    def solve(i):
        scale = 1.0 + 0.01 * i

        def scaled_decay(t, y):
            return -scale * y

        with tf.GradientTape() as tape:
            tape.watch(y0)
            y1 = getattr(keras_node, solver)(scaled_decay, y0, [0.0, 1.0], rtol=1e-8, atol=1e-10,
                                             jit_compile=False)[-1, 0]
        np.testing.assert_allclose(float(y1), np.exp(-scale), rtol=1e-6)
        np.testing.assert_allclose(float(tape.gradient(y1, y0)[0]), np.exp(-scale), rtol=1e-6)

    def live():
        return registered_functions(), len(gc.get_objects())

    # A leak would grow both counts with every call: 5 calls tell it apart.
    for i in range(2):
        solve(i)
    functions_warm, objects_warm = live()
    for i in range(2, 7):
        solve(i)
    functions_done, objects_done = live()
    assert functions_done - functions_warm <= 4, f"registered functions {functions_warm} -> {functions_done}"
    assert objects_done - objects_warm < 3000, f"live objects {objects_warm} -> {objects_done}"
