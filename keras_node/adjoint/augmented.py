"""The augmented adjoint dynamics and the flat parameter vector.

In backward time sigma = -tau (so d/dsigma = -d/dtau) the augmented state
[z, a, g] evolves by

    dz/dsigma = -f(z),   da/dsigma = a . df/dz,   dg/dsigma = a . df/dtheta,

one `tf.GradientTape` vector-Jacobian product per evaluation (Chen et al.
2018). The parameter gradients travel as one flat vector `g`: one leaf
instead of one per variable keeps the traced solver small and its stage sums
fused.
"""

import tensorflow as tf

from keras_node import _nest


def augmented_dynamics(func, num_leaves, variables, dtype):
    """`dynamics(sigma, x)` of x = [z leaves, a leaves, (g)] for `func(tau, z)`.

    One tape records f; one `gradient` call gives both VJPs (w.r.t. z and
    the variables); variables f does not use get zeros.
    """
    rescaled = rescaled_dynamics(func, num_leaves, variables, dtype)

    def dynamics(sigma, x):
        return rescaled(sigma, None, x)[0]

    return dynamics


def rescaled_dynamics(func, num_leaves, variables, dtype):
    """`dynamics(sigma, scale, x) -> (derivative, f)`: the augmented
    derivative times a per-sample `scale` (shape `(batch,)`; `None` for 1),
    and `f` itself.

    A backward interval whose length differs per sample (grids of times per
    sample) is solved for all samples at once in a shared variable s in
    [0, 1], with `sigma_b = sigma_b0 + s * L_b`: then dx_b/ds = L_b dx_b/dsigma.
    The parameter part sums over samples, so the scale goes into the
    cotangent (`L_b a_b`) rather than onto the result.
    """

    def dynamics(sigma, scale, x):
        z, a = x[:num_leaves], x[num_leaves: 2 * num_leaves]
        if scale is not None:
            a = tuple(ai * _nest.per_sample(scale, ai) for ai in a)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(z)
            tape.watch(variables)
            f = func(-sigma, z)
        vjps = tape.gradient(
            f, list(z) + list(variables), output_gradients=list(a),
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
        vjps = [tf.cast(tf.convert_to_tensor(v), dtype) for v in vjps]
        velocity = f if scale is None else tuple(fi * _nest.per_sample(scale, fi) for fi in f)
        derivative = tuple(-vi for vi in velocity) + tuple(vjps[:num_leaves])
        if variables:
            derivative += (flatten_parameters(vjps[num_leaves:]),)
        return derivative, tuple(f)

    return dynamics


def flatten_parameters(tensors):
    """Concatenate tensors into one flat vector."""
    return tf.concat([tf.reshape(v, [-1]) for v in tensors], axis=0)


def unflatten_parameters(flat, variables):
    """Split a flat vector back into tensors shaped (and typed) like `variables`."""
    sizes = [v.shape.num_elements() for v in variables]
    pieces = tf.split(flat, sizes) if len(sizes) > 1 else [flat]
    return [tf.cast(tf.reshape(p, v.shape), v.dtype) for p, v in zip(pieces, variables)]


def augmented_tolerances(rtol, atol, num_parameter_leaves):
    """Tolerances for [z, a, g]: z and a reuse the state's; the parameter
    vector gets the tightest of them as a scalar (it only matters without the
    seminorm)."""
    r_min = tf.reduce_min(tf.stack([tf.reduce_min(r) for r in rtol]))
    a_min = tf.reduce_min(tf.stack([tf.reduce_min(a) for a in atol]))
    rtol = tuple(rtol) + tuple(rtol) + (r_min,) * num_parameter_leaves
    atol = tuple(atol) + tuple(atol) + (a_min,) * num_parameter_leaves
    return rtol, atol
