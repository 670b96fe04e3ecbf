"""Dense output: a polynomial over one accepted step, evaluated anywhere in it.

With `x = (t - t0) / dt` in [0, 1] the polynomial `p(x) = sum_j p_j x**j`
matches `y0`, `dt * f0` (slope at 0), `y1`, `dt * f1` (slope at 1) and, when
the tableau gives midpoint weights, `y_mid ~ y(t0 + dt/2)`:

- quartic (5 conditions) for tableaus with `c_mid`: with
  `R1 = y1 - y0 - dt f0`, `R2 = dt (f1 - f0)`, `R3 = y_mid - y0 - dt f0 / 2`
  solving the conditions gives `p2 = -5 R1 + R2 + 16 R3`,
  `p3 = 14 R1 - 3 R2 - 32 R3`, `p4 = -8 R1 + 2 R2 + 16 R3`;
- cubic Hermite (4 conditions) otherwise: `p2 = 3 R1 - R2`,
  `p3 = R2 - 2 R1`, `p4 = 0`. Its O(dt**4) local error matches the 3rd-order
  and lower methods that use it.
"""

import tensorflow as tf

from keras_node import _nest


def fit(y0, y1, f0, f1, dt, k=None, c_mid=None):
    """Polynomial coefficients per leaf (a tuple of tuples): `(p0, ..., p4)`
    for the quartic, `(p0, ..., p3)` for the cubic."""
    if c_mid is not None:
        y_mid = _nest.axpy_sum(y0, dt, c_mid, k)
    coefficients = []
    for i in range(len(y0)):
        h = _nest.per_sample(dt, y0[i])  # a per-sample step size lines up with axis 0
        r1 = y1[i] - y0[i] - h * f0[i]
        r2 = h * (f1[i] - f0[i])
        if c_mid is None:
            p2, p3, p4 = 3.0 * r1 - r2, r2 - 2.0 * r1, None
        else:
            r3 = y_mid[i] - y0[i] - 0.5 * h * f0[i]
            p2 = -5.0 * r1 + r2 + 16.0 * r3
            p3 = 14.0 * r1 - 3.0 * r2 - 32.0 * r3
            p4 = -8.0 * r1 + 2.0 * r2 + 16.0 * r3
        leaf = (y0[i], h * f0[i], p2, p3) if p4 is None else (y0[i], h * f0[i], p2, p3, p4)
        coefficients.append(leaf)
    return tuple(coefficients)


def constant(y0, quartic):
    """Coefficients of the constant polynomial `p(x) = y0` (the shape `fit`
    returns: 5 per leaf when `quartic`, else 4)."""
    count = 4 if quartic else 3
    return tuple((y,) + (tf.zeros_like(y),) * count for y in y0)


def evaluate(coefficients, x):
    """Value of the fitted polynomial at fraction `x` of the step (Horner);
    `x` is a scalar or per sample, shape `(batch,)`."""
    values = []
    for leaf in coefficients:
        p0, p1, p2, p3 = leaf[:4]
        u = _nest.per_sample(x, p0)
        acc = p3 if len(leaf) == 4 else p3 + u * leaf[4]
        values.append(p0 + u * (p1 + u * (p2 + u * acc)))
    return tuple(values)
