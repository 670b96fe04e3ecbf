"""Keras callbacks for Neural ODE training."""

import keras

from keras_node._validate import check_bool

from keras_node.layers.ode_layer import ODELayer


class NFELogger(keras.callbacks.Callback):
    """Adds solver cost to the training logs: `nfe_forward`, `nfe_backward`.

    Both are the function-evaluation counts of the last batch, summed over
    every `ODELayer` in the model; they appear in the progress bar, in
    `History` and in TensorBoard. Growing NFE during training is the usual
    sign that the learned dynamics are getting stiff (see the README FAQ).

    Args:
        log_every_batch: also add the counts to each batch's logs (so the
            progress bar shows them live). Default True.

    Example:

    ```python
    history = model.fit(x, y, epochs=5, callbacks=[keras_node.callbacks.NFELogger()])
    history.history["nfe_forward"]
    ```
    """

    def __init__(self, log_every_batch=True):
        super().__init__()
        self.log_every_batch = check_bool(log_every_batch, "log_every_batch")

    def _ode_layers(self):
        return [layer for layer in self.model._flatten_layers(include_self=False, recursive=True)
                if isinstance(layer, ODELayer)]

    def _add_counts(self, logs):
        if logs is None:
            return
        layers = self._ode_layers()
        logs["nfe_forward"] = sum(layer.nfe_forward for layer in layers)
        logs["nfe_backward"] = sum(layer.nfe_backward for layer in layers)

    def on_train_batch_end(self, batch, logs=None):
        if self.log_every_batch:
            self._add_counts(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._add_counts(logs)
