"""Shared test setup: quiet TensorFlow, deterministic seeds, no TF32."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# TF32 would silently lower float32 matmul precision on Ampere GPUs and make
# tolerance-based assertions flaky there.
tf.config.experimental.enable_tensor_float_32_execution(False)

REGIMES = ("eager", "function", "xla")


def in_regime(fn, regime):
    """Return `fn` wrapped for an execution regime: eager, tf.function or XLA."""
    if regime == "eager":
        return fn
    if regime == "function":
        return tf.function(fn)
    if regime == "xla":
        return tf.function(fn, jit_compile=True)
    raise ValueError(f"unknown regime {regime!r}")


@pytest.fixture(params=REGIMES)
def regime(request):
    """Parametrize a test over the three execution regimes."""
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    tf.random.set_seed(0)
    np.random.seed(0)
    yield
