"""Helpers over flat lists of state leaves.

Inside the solver a state is a tuple of tensors (the leaves of the user's
nested structure, flattened once at the boundary). These helpers do the
leaf-wise arithmetic the solver needs, so no module loops over leaves by hand.
"""

import tensorflow as tf


def axpy_sum(y0, dt, coefficients, ks):
    """Return `y0 + dt * sum_j coefficients[j] * ks[j]`, leaf by leaf.

    `coefficients` are Python floats; zero coefficients are skipped so the
    traced graph only holds the work the tableau asks for. The weighted stage
    sum is one `add_n` per leaf (a single fused op) before the `dt` scale.
    """
    terms = [(c, k) for c, k in zip(coefficients, ks) if c != 0.0]
    if not terms:
        return tuple(y0)
    result = []
    for leaf_index, y_leaf in enumerate(y0):
        weighted = [k[leaf_index] * c if c != 1.0 else k[leaf_index] for c, k in terms]
        total = weighted[0] if len(weighted) == 1 else tf.add_n(weighted)
        result.append(y_leaf + dt * total)
    return tuple(result)


def weighted_sum(dt, coefficients, ks):
    """Return `dt * sum_j coefficients[j] * ks[j]` leaf by leaf."""
    zeros = tuple(tf.zeros_like(leaf) for leaf in ks[0])
    return axpy_sum(zeros, dt, coefficients, ks)


def where(condition, x, y):
    """Select whole states: `x` where the scalar `condition` holds, else `y`."""
    return tuple(tf.where(condition, a, b) for a, b in zip(x, y))


def all_finite(leaves):
    """Scalar bool: every component of every leaf is finite."""
    checks = [tf.reduce_all(tf.math.is_finite(leaf)) for leaf in leaves]
    return tf.reduce_all(tf.stack(checks)) if len(checks) > 1 else checks[0]


def rms_norm(leaves):
    """Root mean square over all components of all leaves (a scalar)."""
    squares = [tf.reduce_sum(tf.square(leaf)) for leaf in leaves]
    sizes = [tf.cast(tf.size(leaf), leaf.dtype) for leaf in leaves]
    total = squares[0] if len(squares) == 1 else tf.add_n(squares)
    count = sizes[0] if len(sizes) == 1 else tf.add_n(sizes)
    return tf.sqrt(total / tf.maximum(count, 1.0))
