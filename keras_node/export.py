"""Exporting models with ODE solves to model converters (ONNX)."""

from keras_node import _execution


def for_converters():
    """Context manager: trace ODE solves for a model converter such as tf2onnx.

    When a solve's loop runs under XLA (`jit_compile=True`, or the default
    `"auto"` for dynamics such as `MLP`), a graph holds it as a nested
    XLA-compiled function, which TensorFlow runs fast but tf2onnx cannot
    convert ("Unsupported ops: StatefulPartitionedCall").
    Graphs traced inside this block hold every solve as plain operations
    instead, whatever the layers' `jit_compile`; the layers keep their
    settings, and graphs traced outside (`predict`, `fit`) keep XLA. Eager
    calls are unchanged.

    Only tracing inside the block counts: export inside it (Keras traces
    anew for every `model.export`). A SavedModel exported inside it
    converts with tf2onnx, and runs without XLA when TensorFlow serves it.
    TFLite needs no block: its converter inlines the nested function.

    Example:

    ```python
    with keras_node.export.for_converters():
        model.export("model.onnx", format="onnx")
    ```
    """
    return _execution.inline_in_graphs()


__all__ = ["for_converters"]
