"""Keras callbacks for Neural ODE training."""

import warnings

import keras
import tensorflow as tf

from keras_node._validate import check_bool
from keras_node.layers.cnf import CNF
from keras_node.layers.ode_layer import ODELayer

NFE_KEYS = ("nfe_forward", "nfe_backward")


class NFELogger(keras.callbacks.Callback):
    """Adds solver cost to the training logs: `nfe_forward`, `nfe_backward`.

    Both are the function-evaluation counts of the last batch, summed over
    every `ODELayer` (and `CNF`) in the model. While `fit` runs, the callback attaches
    two metrics to the model that read the layers' counters inside the
    training step, so the counts are in every batch's and epoch's logs
    before any callback sees them: the progress bar, `History`, `CSVLogger`,
    `EarlyStopping` and TensorBoard get them wherever this callback stands
    in `callbacks=`. With validation data the logs also hold
    `val_nfe_forward` (the validation batches' solves; `val_nfe_backward`
    is 0). Growing NFE during training is the usual sign that the learned
    dynamics are getting stiff (see the README FAQ).

    The metrics are detached when `fit` ends, so a later `evaluate`
    returns what it did before. Attaching or detaching them changes what
    the compiled training step returns, so the first `fit` with this
    callback on a model already trained without it (and the first call
    after it) traces the step again.

    Args:
        log_every_batch: deprecated, ignored. The counts are now computed
            by the training step and so appear in every batch's logs.

    Example:

    ```python
    history = model.fit(x, y, epochs=5, callbacks=[keras_node.callbacks.NFELogger()])
    history.history["nfe_forward"]
    ```
    """

    def __init__(self, log_every_batch=True):
        super().__init__()
        self.log_every_batch = check_bool(log_every_batch, "log_every_batch")
        if not log_every_batch:
            warnings.warn(
                "NFELogger(log_every_batch=False) is deprecated and has no effect: the counts "
                "are computed by the training step, so every batch's logs hold them.",
                DeprecationWarning, stacklevel=2)
        self._metrics = ()
        self._in_fit = False

    def set_model(self, model):
        super().set_model(model)
        # Keras calls this as `fit` (or `evaluate`) starts, before it builds
        # the step function: the place to attach the metrics.
        self._attach()

    def on_train_begin(self, logs=None):
        self._in_fit = True

    def on_train_end(self, logs=None):
        self._in_fit = False
        self._detach()

    def on_test_end(self, logs=None):
        if not self._in_fit:  # a standalone `evaluate`, not `fit`'s validation
            self._detach()

    def _attach(self):
        model_metrics = getattr(self.model, "_metrics", None)
        if model_metrics is None or any(isinstance(m, _CounterSum) for m in model_metrics):
            return
        layers = [layer for layer in self.model._flatten_layers(include_self=True, recursive=True)
                  if isinstance(layer, (ODELayer, CNF))]
        self._metrics = tuple(_CounterSum(key, layers) for key in NFE_KEYS)
        model_metrics.extend(self._metrics)
        _retrace(self.model)

    def _detach(self):
        if not self._metrics:
            return
        for metric in self._metrics:
            if metric in self.model._metrics:
                self.model._metrics.remove(metric)
        self._metrics = ()
        _retrace(self.model)


def _retrace(model):
    """Make Keras build the step functions again: what they return (the
    logs' keys) was fixed when they were traced."""
    for name in ("train_function", "test_function"):
        if getattr(model, name, None) is not None:
            setattr(model, name, None)


class _CounterSum(keras.metrics.Metric):
    """A metric whose result is one solver counter summed over `layers`
    (read when the step function returns its logs); nothing to update."""

    def __init__(self, counter, layers):
        super().__init__(name=counter, dtype="int32")
        self._counter = counter
        self._layers = list(layers)

    def update_state(self, *args, **kwargs):
        pass

    def reset_state(self):
        pass

    def result(self):
        # The layers' counters exist once they are built: read them at
        # trace time, after the step's forward pass has built every layer.
        counts = [tf.convert_to_tensor(getattr(layer._counters, self._counter))
                  for layer in self._layers if layer._counters is not None]
        return tf.add_n(counts) if counts else tf.constant(0, tf.int32)
