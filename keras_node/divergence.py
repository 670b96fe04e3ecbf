"""`keras_node.divergence`: the trace of a vector field's Jacobian, per sample.

A continuous normalizing flow (FFJORD, Grathwohl et al. 2019) integrates
`tr(df/dh)` along its solve, and the Jacobian-Frobenius regulariser (RNODE,
Finlay et al. 2020) integrates `|eps^T df/dh|^2`. Both are vector-Jacobian
products (`with_vjp`):

- exact: D vector-Jacobian products computed as one: every sample is
  replicated D times along the batch, `func` evaluated once on the
  replicated batch, and the i-th copy's cotangent is the i-th unit vector,
  so copy i's product is row i of that sample's Jacobian and the trace is
  the sum of their diagonal entries. No Python loop over D and no `pfor`;
  cost and memory O(D) times one evaluation: meant for small events (the
  CNF's "auto" trace uses it up to D = 64).
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


def _zeros_for_none(grads, targets):
    return [tf.zeros_like(x) if g is None else tf.cast(tf.convert_to_tensor(g), x.dtype)
            for g, x in zip(grads, targets)]


def with_vjp(func, t, y):
    """`(f, vjp)`: `f = func(t, y)` and `vjp(cotangent, targets)`, the
    cotangent's vector-Jacobian products with `f` for each target (zeros
    where unconnected).

    In graphs (every solver runs as one) the products are `tf.gradients`:
    symbolic, so they work where tapes are paused (the adjoint's forward
    solve stops all recording) and stay differentiable by an enclosing
    tape (backprop through the solver, the adjoint's backward pass).
    Eagerly, a persistent `tf.GradientTape` watching `y` and `t`.
    """
    if not tf.executing_eagerly():
        f = func(t, y)

        def vjp(cotangent, targets):
            return _zeros_for_none(tf.gradients(f, targets, grad_ys=cotangent), targets)

        return f, vjp
    with tf.GradientTape(watch_accessed_variables=False, persistent=True) as tape:
        tape.watch([y, t])
        f = func(t, y)

    def vjp(cotangent, targets):
        return _zeros_for_none(tape.gradient(f, targets, output_gradients=cotangent), targets)

    return f, vjp


def replicate(x, copies):
    """Each sample of `x` (and of a per-sample `t`) `copies` times in a row:
    row `b * copies + r` is sample b."""
    if copies == 1 or x.shape.rank == 0:
        return x
    # A reshape of a broadcast rather than tf.repeat: its gradient needs no
    # run-time shapes, which XLA could not compile.
    shape = tf.shape(x)
    tiled = tf.broadcast_to(x[:, None], tf.concat([shape[:1], [copies], shape[1:]], 0))
    return tf.reshape(tiled, tf.concat([[shape[0] * copies], shape[1:]], 0))


def first_copy(x, copies):
    """The rows of copy 0 of `replicate(., copies)`: the original batch."""
    return x if copies == 1 else x[::copies]


def one_hot_cotangents(y):
    """The cotangents of the exact trace on `replicate(y, D)`: copy i of
    sample b is the i-th unit vector of the event (D = event size)."""
    size = tf.reduce_prod(tf.shape(y)[1:])
    eye = tf.eye(size, dtype=y.dtype)
    tiled = tf.tile(eye, tf.stack([tf.shape(y)[0], 1]))
    return tf.reshape(tiled, tf.concat([[-1], tf.shape(y)[1:]], 0))


def exact_trace(vjp, y_copies, copies):
    """`tr(df/dy)` per sample: D vector-Jacobian products in one, on `y`
    replicated D times (`y_copies`, with `vjp` from `with_vjp` on it), the
    i-th copy's cotangent the i-th unit vector; the sum over copies of
    `e_i . (e_i^T J)` is the trace."""
    cotangent = one_hot_cotangents(y_copies[::copies])
    rows = vjp(cotangent, [y_copies])[0]
    return tf.reduce_sum(tf.reshape(_event_sum(rows * cotangent), [-1, copies]), axis=1)


def event_size(y):
    """The number of components per sample (static)."""
    size = y.shape[1:].num_elements()
    if size is None:
        raise ValueError(f"The exact divergence needs a static event shape. Received: y with shape "
                         f"{y.shape}")
    return size


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
    t = tf.convert_to_tensor(t, y.dtype) if not isinstance(t, tf.Tensor) else t
    if estimator == "exact":
        copies = event_size(y)
        y_copies = replicate(y, copies)
        dy, vjp = with_vjp(func, replicate(t, copies), y_copies)
        return first_copy(dy, copies), exact_trace(vjp, y_copies, copies)
    dy, vjp = with_vjp(func, t, y)
    return dy, hutchinson_trace(vjp(probe, [y])[0], probe)
