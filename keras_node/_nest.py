"""Helpers over flat lists of state leaves.

Inside the solver a state is a tuple of tensors (the leaves of the user's
nested structure, flattened once at the boundary). These helpers do the
leaf-wise arithmetic the solver needs, so no module loops over leaves by hand.

Per-sample solves (`batch_axis=0`) hand these helpers per-sample step sizes,
times and conditions of shape `(batch,)` where a joint solve has scalars:
`per_sample` lines such a vector up with axis 0 of each leaf, and leaves a
scalar alone, so the joint solve's graph is unchanged.
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
        result.append(y_leaf + per_sample(dt, total) * total)
    return tuple(result)


def per_sample(value, leaf):
    """`value` shaped to broadcast against `leaf`: a scalar as it is, a
    `(batch,)` vector as `(batch, 1, ..., 1)` (one entry per sample)."""
    if value.shape.rank == 0:
        return value
    return tf.reshape(value, tf.concat([tf.shape(value), tf.ones([leaf.shape.rank - 1], tf.int32)], 0))


def weighted_sum(dt, coefficients, ks):
    """Return `dt * sum_j coefficients[j] * ks[j]` leaf by leaf."""
    zeros = tuple(tf.zeros_like(leaf) for leaf in ks[0])
    return axpy_sum(zeros, dt, coefficients, ks)


def where(condition, x, y):
    """Select whole states: `x` where `condition` holds, else `y`; a
    `(batch,)` condition selects per sample."""
    return tuple(tf.where(per_sample(condition, a), a, b) for a, b in zip(x, y))


def _sample_axes(leaf, batched):
    return list(range(1, leaf.shape.rank)) if batched else None


def all_finite(leaves, batched=False):
    """Bool: every component of every leaf is finite; a scalar, or per
    sample (shape `(batch,)`) when `batched`."""
    checks = [tf.reduce_all(tf.math.is_finite(leaf), axis=_sample_axes(leaf, batched)) for leaf in leaves]
    return tf.reduce_all(tf.stack(checks), axis=0) if len(checks) > 1 else checks[0]


def rms_norm(leaves, batched=False):
    """Root mean square over all components of all leaves: a scalar, or per
    sample over all but axis 0 (shape `(batch,)`) when `batched`."""
    squares = [tf.reduce_sum(tf.square(leaf), axis=_sample_axes(leaf, batched)) for leaf in leaves]
    if batched:
        sizes = [tf.cast(tf.reduce_prod(tf.shape(leaf)[1:]), leaf.dtype) for leaf in leaves]
    else:
        sizes = [tf.cast(tf.size(leaf), leaf.dtype) for leaf in leaves]
    total = squares[0] if len(squares) == 1 else tf.add_n(squares)
    count = sizes[0] if len(sizes) == 1 else tf.add_n(sizes)
    return tf.sqrt(total / tf.maximum(count, 1.0))
