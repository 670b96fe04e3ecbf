"""`keras_node.divergence`: the trace of a vector field's Jacobian, per sample.

A continuous normalizing flow (FFJORD, Grathwohl et al. 2019) integrates
`tr(df/dh)` along its solve, and the Jacobian-Frobenius regulariser (RNODE,
Finlay et al. 2020) integrates `|eps^T df/dh|^2`. Both come from one
`tf.GradientTape` over `f`:

- exact: the D rows of the per-sample Jacobian as D vector-Jacobian
  products, vectorised by `tape.batch_jacobian` (one `pfor`, not a Python
  loop over D), then the diagonal. Cost O(D) backward passes, memory
  O(batch * D^2): meant for small events (the CNF's "auto" trace uses it
  up to D = 64).
- Hutchinson (Hutchinson 1990): `eps^T (df/dh) eps` for a probe `eps` with
  E[eps eps^T] = I (Rademacher by default): one vector-Jacobian product, an
  unbiased estimate. The product `eps^T df/dh` is returned too, so the
  Frobenius regulariser reuses it.

The dynamics must not mix samples (each sample's `f` depends on its own `h`
only), as everywhere per-sample quantities are computed from a batch.
"""

import keras
import tensorflow as tf

from keras_node._validate import check_choice

ESTIMATORS = ("exact", "hutchinson")


def rademacher(like, seed=None):
    """A Rademacher probe shaped and typed like `like`: +1 or -1, each with
    probability 1/2, independently per component. `seed`: an optional
    `keras.random.SeedGenerator` (Keras-managed, reproducible in `fit`)."""
    bits = keras.random.randint(tf.shape(like), 0, 2, seed=seed)
    return tf.cast(2 * bits - 1, like.dtype)


def _event_sum(x):
    """Sum over every axis but the first (the batch)."""
    return tf.reduce_sum(tf.reshape(x, [tf.shape(x)[0], -1]), axis=1)


def exact_trace(tape, f, y):
    """`tr(df/dy)` per sample, from a tape that watched `y` and recorded `f`."""
    jacobian = tape.batch_jacobian(f, y, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    size = tf.reduce_prod(tf.shape(y)[1:])
    square = tf.reshape(jacobian, tf.stack([tf.shape(y)[0], size, size]))
    return tf.linalg.trace(square)


def probe_product(tape, f, y, probe):
    """`probe^T df/dy` (shaped like `y`), from a tape that recorded `f`."""
    product = tape.gradient(f, y, output_gradients=probe,
                            unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return tf.cast(product, y.dtype)


def hutchinson_trace(product, probe):
    """The Hutchinson estimate `probe^T (df/dy) probe` per sample, from
    `product = probe^T df/dy`."""
    return _event_sum(product * probe)


def divergence(func, t, y, estimator="exact", probe=None):
    """`func(t, y)` and its divergence `tr(d func / d y)` per sample.

    Args:
        func: `func(t, y) -> dy/dt` with the shape of `y`; samples must not
            interact (no batch statistics).
        t: time, passed to `func` as given.
        y: floating tensor `(batch, ...)`; the event is every non-batch axis.
        estimator: `"exact"` (the trace of the per-sample Jacobian, from D
            vectorised vector-Jacobian products, D the event size) or
            `"hutchinson"` (one vector-Jacobian product: the unbiased
            estimate `probe^T J probe`).
        probe: for `"hutchinson"`, a tensor shaped like `y` with
            `E[probe probe^T] = I`; `None` draws a Rademacher probe.
            Ignored by `"exact"`.

    Returns:
        `(dy, div)`: `func(t, y)` and the divergence, shape `(batch,)`.

    Raises:
        TypeError, ValueError: an unknown `estimator`, a non-floating `y`,
            or a probe whose shape differs from y's.

    Example:

    >>> a = tf.constant([[1.0, 2.0], [0.0, -3.0]])
    >>> dy, div = keras_node.divergence(lambda t, y: y @ tf.transpose(a), 0.0,
    ...                                 tf.ones((4, 2)))
    >>> div.numpy()  # tr(A) = -2 for every sample
    array([-2., -2., -2., -2.], dtype=float32)
    """
    check_choice(estimator, "estimator", ESTIMATORS)
    y = tf.convert_to_tensor(y)
    if not y.dtype.is_floating or y.shape.rank is None or y.shape.rank < 2:
        raise ValueError("y must be a floating tensor (batch, ...) with at least one event axis. "
                         f"Received: y with dtype {y.dtype.name} and shape {y.shape}")
    if estimator == "hutchinson":
        probe = rademacher(y) if probe is None else tf.cast(probe, y.dtype)
        if not probe.shape.is_compatible_with(y.shape):
            raise ValueError(f"probe must have y's shape {y.shape}. Received: probe with shape "
                             f"{probe.shape}")
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(y)
        dy = func(t, y)
    if estimator == "exact":
        return dy, exact_trace(tape, dy, y)
    return dy, hutchinson_trace(probe_product(tape, dy, y, probe), probe)
