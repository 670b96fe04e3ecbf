"""`keras_node.CubicSpline`: natural cubic spline through a batch of series.

The spline is a time-varying input for dynamics (the control path X of a
Neural CDE): built once from the observations, then `evaluate(t)` and
`derivative(t)` are cheap, pure TF (graphs, XLA, gradients).

Layout: the work happens on "paths", one per sample and channel, shape
`(batch, channels, n)`. Each path keeps only its usable knots, moved to the
front (`_compact`); the knot derivatives of the natural spline solve one
tridiagonal system per path (`_knot_derivatives`); the knots past a path's
last usable one are decoupled rows of the identity, so paths with different
numbers of knots share one batched solve.
"""

import tensorflow as tf

from keras_node import _times


class CubicSpline:
    """Natural cubic spline through each sample's and channel's observations.

    Between knots the spline is a cubic; its second derivative is continuous
    and zero at the first and last knot (the "natural" end condition), as
    `scipy.interpolate.CubicSpline(bc_type="natural")`.

    Missing values (NaN) are handled as torchcde's `natural_cubic_coeffs`
    does, per sample and channel: leading NaNs take the first observed value
    and trailing NaNs the last one (so the path is flat before its first and
    after its last observation); interior NaNs are not knots at all, the
    spline through the observed values passes over them; a channel with no
    observation at all is the constant 0. The outputs are then finite, and
    gradients with respect to the observed values are too (zero for the
    NaN entries).

    Args:
        times: observation times, `(n,)` shared by the batch or `(batch, n)`
            per sample, strictly increasing along the last axis, n >= 2.
        values: `(batch, n, channels)` floating observations; NaN = missing.
            `times` are cast to the dtype of `values`.

    Evaluating outside `[times[0], times[-1]]` extends the first or last
    cubic piece (as scipy's `extrapolate=True`).

    Example:

    >>> times = tf.constant([0.0, 1.0, 2.5, 3.0])
    >>> values = tf.random.normal((8, 4, 2))          # 8 series, 2 channels
    >>> X = keras_node.CubicSpline(times, values)
    >>> X.evaluate(1.0).shape, X.derivative(tf.fill((8,), 0.5)).shape
    (TensorShape([8, 2]), TensorShape([8, 2]))
    """

    def __init__(self, times, values):
        values = _check_values(values)
        times = _check_spline_times(times, values)
        self.dtype = values.dtype
        self.times = times
        # Paths: (batch, channels, n).
        y = tf.transpose(values, [0, 2, 1])
        t = tf.broadcast_to(times[:, None, :] if times.shape.rank == 2 else times,
                            tf.shape(y))
        t, y, num_knots = _compact(t, y)
        k = _knot_derivatives(t, y, num_knots)
        self._t, self._num_knots = t, num_knots
        self._coefficients = _piece_coefficients(t, y, k)

    def evaluate(self, t):
        """X(t): `(batch, channels)`. `t` is a scalar, or `(batch,)` (a time
        per sample)."""
        (a, b, c, d), s = self._piece(t)
        return a + s * (b + s * (c + s * d))

    def derivative(self, t):
        """dX/dt at `t`: `(batch, channels)`; `t` as for `evaluate`."""
        (_, b, c, d), s = self._piece(t)
        return b + s * (2.0 * c + s * (3.0 * d))

    def _piece(self, t):
        """The coefficients of the piece holding `t`, and `t` minus its left
        knot, each `(batch, channels)`."""
        t = tf.cast(_times.convert_times(t, "t"), self.dtype)
        if t.shape.rank not in (0, 1):
            raise ValueError("CubicSpline: t must be a scalar or a time per sample, shape "
                             f"(batch,). Received: t with shape {t.shape}")
        t = tf.reshape(t, [-1, 1, 1])  # (1 or batch, 1, 1)
        # Index of the piece: how many interior knots lie at or before t
        # (O(n) per query, but XLA-friendly, unlike a binary search).
        inside = tf.cast(self._t[..., 1:-1] <= t, tf.int32)
        index = tf.minimum(tf.reduce_sum(inside, axis=-1), self._num_knots - 2)[..., None]
        pieces = [tf.gather(p, index, batch_dims=2)[..., 0] for p in self._coefficients]
        left = tf.gather(self._t, index, batch_dims=2)[..., 0]
        return pieces, t[..., 0] - left


def _check_values(values):
    """`values` as a floating tensor of rank 3, `(batch, n, channels)`."""
    try:
        values = tf.convert_to_tensor(values)
    except (TypeError, ValueError):
        raise TypeError("CubicSpline: values must be a tensor or array of shape (batch, n, "
                        f"channels). Received: values of type {type(values).__name__}") from None
    if not values.dtype.is_floating:
        raise TypeError("CubicSpline: values must be floating (NaN marks missing values). "
                        f"Received: values with dtype {values.dtype.name}")
    if values.shape.rank != 3:
        raise ValueError("CubicSpline: values must have shape (batch, n, channels). "
                         f"Received: values with shape {values.shape}")
    return values


def _check_spline_times(times, values):
    """`times` as a tensor of `values`' dtype, `(n,)` or `(batch, n)` matching
    `values`; known values are checked finite and strictly increasing."""
    times, direction = _times.times(times, values.dtype, name="times", per_sample=True,
                                    hint="")
    if direction == -1.0:
        raise ValueError("CubicSpline: times must be strictly increasing. Received: times "
                         f"decreasing, {tf.get_static_value(times).tolist()}")
    n_values, n_times = values.shape[1], times.shape[-1]
    if n_values is not None and n_times is not None and n_values != n_times:
        raise ValueError("CubicSpline: values (batch, n, channels) needs n times. Received: "
                         f"times with shape {times.shape} and values with shape {values.shape}")
    batch = values.shape[0]
    if times.shape.rank == 2 and None not in (batch, times.shape[0]) and batch != times.shape[0]:
        raise ValueError("CubicSpline: per-sample times (batch, n) need a row per sample of "
                         f"values. Received: times with shape {times.shape} and values with "
                         f"shape {values.shape}")
    return times


def _compact(t, y):
    """The usable knots of each path, moved to the front.

    Ends are filled as torchcde does (leading NaNs take the first observed
    value, trailing ones the last); interior NaNs are dropped. A path with
    no observation becomes zeros. Past its `num_knots` usable knots a path
    repeats its last value at times 1, 2, ... after its last knot (finite
    filler the solve decouples). Returns `(t, y, num_knots)`, the last
    `(batch, channels)` int32.
    """
    n = tf.shape(y)[-1]
    position = tf.range(n)
    observed = ~tf.math.is_nan(y)
    y = tf.where(observed, y, tf.zeros_like(y))  # no NaN reaches arithmetic (or gradients)
    observed = observed | ~tf.reduce_any(observed, axis=-1, keepdims=True)  # empty: zeros
    observed_float = tf.cast(observed, tf.float32)  # ArgMax has GPU kernels for floats, not int32
    first = tf.argmax(observed_float, axis=-1, output_type=tf.int32)[..., None]
    last = (n - 1 - tf.argmax(tf.reverse(observed_float, [-1]), axis=-1,
                              output_type=tf.int32))[..., None]
    y = tf.where(position < first, tf.gather(y, first, batch_dims=2), y)
    y = tf.where(position > last, tf.gather(y, last, batch_dims=2), y)
    knot = observed | (position < first) | (position > last)
    # Stable order: knots first, each group in time order.
    order = tf.argsort(tf.where(knot, position, position + n), axis=-1, stable=True)
    t, y = tf.gather(t, order, batch_dims=2), tf.gather(y, order, batch_dims=2)
    num_knots = tf.reduce_sum(tf.cast(knot, tf.int32), axis=-1)
    filler = position[None, None, :] - num_knots[..., None] + 1  # 1, 2, ... past the knots
    valid = filler <= 0
    last_t = tf.gather(t, num_knots[..., None] - 1, batch_dims=2)
    last_y = tf.gather(y, num_knots[..., None] - 1, batch_dims=2)
    t = tf.where(valid, t, last_t + tf.cast(filler, t.dtype))
    y = tf.where(valid, y, last_y)
    return t, y, num_knots


def _knot_derivatives(t, y, num_knots):
    """The derivative of the natural spline at every knot, `(batch, channels, n)`.

    Unknowns k_i = X'(t_i). With L_i = 1/h_{i-1}, R_i = 1/h_i (h_j = t_{j+1}
    - t_j, zero when interval j is not a piece of the path), continuity of
    X'' at the knots and X'' = 0 at the ends give one tridiagonal row each:
        L_i k_{i-1} + 2 (L_i + R_i) k_i + R_i k_{i+1}
            = 3 (L_i^2 (y_i - y_{i-1}) + R_i^2 (y_{i+1} - y_i)).
    Rows past the last knot are k_i = 0. The matrix is diagonally dominant,
    so the solve needs no pivoting (and XLA compiles it).
    """
    n = tf.shape(y)[-1]
    h = t[..., 1:] - t[..., :-1]
    is_piece = tf.range(n - 1) < (num_knots[..., None] - 1)
    inverse = tf.where(is_piece, 1.0 / h, tf.zeros_like(h))
    slope_term = inverse**2 * (y[..., 1:] - y[..., :-1])
    zero = tf.zeros_like(inverse[..., :1])
    left = tf.concat([zero, inverse], axis=-1)  # L_i
    right = tf.concat([inverse, zero], axis=-1)  # R_i
    beyond = tf.cast(tf.range(n) >= num_knots[..., None], y.dtype)
    diagonal = 2.0 * (left + right) + beyond
    rhs = 3.0 * (tf.concat([zero, slope_term], -1) + tf.concat([slope_term, zero], -1))
    # Compact format: superdiagonal (last entry ignored), diagonal,
    # subdiagonal (first entry ignored).
    diagonals = tf.stack([right, diagonal, left], axis=-2)
    k = tf.linalg.tridiagonal_solve(diagonals, rhs[..., None], diagonals_format="compact",
                                    partial_pivoting=False)
    return k[..., 0]


def _piece_coefficients(t, y, k):
    """Power-basis coefficients `(a, b, c, d)` of each piece, X(t_j + s) =
    a + b s + c s^2 + d s^3, from the Hermite data (y, k) at its two ends."""
    h = t[..., 1:] - t[..., :-1]
    slope = (y[..., 1:] - y[..., :-1]) / h
    k0, k1 = k[..., :-1], k[..., 1:]
    c = (3.0 * slope - 2.0 * k0 - k1) / h
    d = (k0 + k1 - 2.0 * slope) / h**2
    return y[..., :-1], k0, c, d
