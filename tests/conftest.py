"""Shared test setup: quiet TensorFlow, deterministic seeds, no TF32, and
`jit_compile="auto"` as a plain graph outside tests marked `auto_jit`."""

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


def pytest_collection_finish(session):
    """Start the selected tests' declared subprocess runs (`_background.py`)."""
    import _background

    _background.start({f"{item.module.__name__}::{item.name}" for item in session.items
                       if getattr(item, "module", None) is not None})


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



@pytest.fixture(autouse=True)
def _auto_jit_as_graph(request, monkeypatch):
    """Run `jit_compile="auto"` as a plain graph, except in tests marked `auto_jit`.

    Why: most of the suite's time was XLA compiling a new solver loop for
    nearly every test (about 1 s per forward solve, 2 s per adjoint, more for
    a Keras training step), while what those tests check (values, errors,
    plumbing) does not depend on the compiler. XLA stays tested where it is
    the point: the tests parametrized over regimes or passing
    `jit_compile=True`, the tests marked `auto_jit` (the real default:
    leak checks, Keras training and export, failure reporting, the "auto"
    decision itself), module-scoped fixtures (pytest builds them before this
    function-scoped patch, so the trained and exported models they share keep
    the real default), and every example and subprocess test, which run in
    their own processes.
    """
    if request.node.get_closest_marker("auto_jit"):
        yield
        return
    from keras_node import _xla

    real_resolve = _xla.resolve

    def resolve(jit_compile, *args, **kwargs):
        if jit_compile == "auto":
            return False
        return real_resolve(jit_compile, *args, **kwargs)

    monkeypatch.setattr(_xla, "resolve", resolve)
    yield
