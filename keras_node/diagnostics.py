"""`check_gradients`: can I trust my adjoint gradients at these settings?"""

import numpy as np
import tensorflow as tf

from keras_node.layers.ode_layer import ODELayer


def check_gradients(layer, inputs, *, loss=None, num_directions=3, epsilon=1e-3, seed=0, verbose=True):
    """Compare an `ODELayer`'s adjoint gradients with backprop and finite differences.

    Computes the gradient of `loss(layer(inputs))` with respect to the input
    and the layer's trainable variables twice (with `gradient="adjoint"` and
    `"backprop"`, the layer's other settings unchanged), and checks both
    against central finite differences along `num_directions` random unit
    directions. Use it on your own layer and a real batch: if the adjoint
    disagrees with backprop by much more than backprop disagrees with finite
    differences, tighten `rtol`/`atol` or raise `adjoint_checkpoints`.

    Args:
        layer: a built or unbuilt `ODELayer`.
        inputs: a batch of inputs (converted to a tensor).
        loss: `loss(outputs) -> scalar`; default `sum(outputs ** 2)`.
        num_directions: random directions for the finite-difference check.
        epsilon: finite-difference step (relative to the direction's unit
            norm); float32 layers need ~1e-3, float64 ~1e-6.
        seed: seed of the random directions.
        verbose: print a small table.

    Returns:
        A dict of floats: `adjoint_vs_backprop` (relative L2 difference of
        the full gradients), `adjoint_vs_fd` and `backprop_vs_fd` (maximum
        relative error of the directional derivatives), plus the NFE of the
        adjoint's forward and backward solves.
    """
    if not isinstance(layer, ODELayer):
        raise TypeError(f"check_gradients expects a keras_node.ODELayer. Received: {type(layer).__name__}")
    x = tf.convert_to_tensor(inputs)
    if not layer.built:
        layer(x)
    loss = loss or (lambda y: tf.reduce_sum(tf.square(y)))
    variables = list(layer.trainable_variables)
    grad_adjoint = _gradients(layer, x, loss, variables, "adjoint")
    nfe = (layer.nfe_forward, layer.nfe_backward)
    grad_backprop = _gradients(layer, x, loss, variables, "backprop")
    rng = np.random.default_rng(seed)
    worst_adjoint, worst_backprop = 0.0, 0.0
    for _ in range(num_directions):
        direction = [rng.standard_normal(g.shape) for g in grad_backprop]
        norm = np.sqrt(sum(float(np.sum(d * d)) for d in direction))
        direction = [d / norm for d in direction]
        fd = _directional_fd(layer, x, loss, variables, direction, epsilon)
        exact_adjoint = sum(float(np.sum(g * d)) for g, d in zip(grad_adjoint, direction))
        exact_backprop = sum(float(np.sum(g * d)) for g, d in zip(grad_backprop, direction))
        scale = max(abs(fd), 1e-12)
        worst_adjoint = max(worst_adjoint, abs(exact_adjoint - fd) / scale)
        worst_backprop = max(worst_backprop, abs(exact_backprop - fd) / scale)
    diff = np.sqrt(sum(float(np.sum((a - b) ** 2)) for a, b in zip(grad_adjoint, grad_backprop)))
    size = np.sqrt(sum(float(np.sum(b ** 2)) for b in grad_backprop))
    report = {
        "adjoint_vs_backprop": diff / max(size, 1e-30),
        "adjoint_vs_fd": worst_adjoint,
        "backprop_vs_fd": worst_backprop,
        "nfe_forward": nfe[0],
        "nfe_backward": nfe[1],
    }
    if verbose:
        print(f"{'comparison':<24}{'relative error':>16}")
        for key in ("adjoint_vs_backprop", "adjoint_vs_fd", "backprop_vs_fd"):
            print(f"{key:<24}{report[key]:>16.3e}")
        print(f"adjoint NFE forward/backward: {nfe[0]}/{nfe[1]}")
    return report


def _gradients(layer, x, loss, variables, mode):
    saved = layer.gradient
    layer.gradient = mode
    try:
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = loss(layer(x))
        grads = tape.gradient(value, [x] + variables,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
    finally:
        layer.gradient = saved
    return [np.asarray(tf.convert_to_tensor(g), dtype=np.float64) for g in grads]


def _directional_fd(layer, x, loss, variables, direction, epsilon):
    """Central difference of the loss along `direction` over (x, variables)."""
    originals = [v.numpy() for v in variables]

    def value_at(sign):
        for v, original, d in zip(variables, originals, direction[1:]):
            v.assign((original + sign * epsilon * d).astype(original.dtype))
        shifted = x + tf.cast(sign * epsilon * direction[0], x.dtype)
        return float(loss(layer(shifted)))

    try:
        return (value_at(1.0) - value_at(-1.0)) / (2.0 * epsilon)
    finally:
        for v, original in zip(variables, originals):
            v.assign(original)
