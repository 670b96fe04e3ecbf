"""Adaptive step-size control: pure functions with their defaults in one place.

Conventions (the forward solve shares them with torchdiffeq, so that, given
the same tableau, it takes the same decisions and the same number of steps;
the adjoint's backward solve departs where noted):

- Error ratio: the norm of `y_error / (atol + rtol * max(|y0|, |y1|))`,
  an RMS over all components of the leaves in the norm (`norm_leaves`:
  all of them, except that the adjoint's seminorm leaves the
  parameter-gradient integral out). A step is accepted when the
  ratio is <= 1. A NaN ratio compares false and so means "reject", which lets
  a step that wandered where `func` is undefined be retried smaller.
- Next step: `dt * clip(SAFETY * ratio ** (-1 / order), lo, MAX_GROWTH)`
  with `order` the propagated order (the error estimate is O(dt**order) for
  the lower-order embedded solution of order `order - 1`), `lo = MIN_SHRINK`
  after a rejection and `lo = 1` after an acceptance: an accepted step never
  shrinks the next one (torchdiffeq, diffrax). `shrink_after_accept=True`
  gives Hairer's DOPRI5 rule instead, `lo = MIN_SHRINK` always: a step
  accepted with a ratio near 1 is followed by a slightly smaller one rather
  than an equal one that is likely to fail. The forward solve keeps the
  torchdiffeq rule (step-for-step parity); the adjoint's backward solve uses
  Hairer's, which halves its rejected steps (benchmarks/RESULTS.md). No PI
  controller: tried on the backward solve it cut rejections on hard problems
  but slowed step growth on easy ones (RESULTS.md 2b), and its gains would
  need per-method tuning.
- Step sizes carry no gradient (`tf.stop_gradient`): differentiating through
  the controller would add terms describing how the *mesh* moves with the
  parameters, which is noise from the discretisation, not part of dy/dθ.
"""

import tensorflow as tf

from keras_node import _nest

SAFETY = 0.9
MAX_GROWTH = 10.0
MIN_SHRINK = 0.2


def _norm(leaves, norm_leaves, batched=False):
    return _nest.rms_norm([leaves[i] for i in norm_leaves], batched)


def error_ratio(y_error, y0, y1, rtol, atol, norm_leaves, batched=False):
    """Scaled error norm of one step (<= 1 means accept): a scalar, or one
    per sample (over all but axis 0, shape `(batch,)`) when `batched`."""
    # Only the leaves in the norm are scaled: the seminorm's parameter vector
    # would be work thrown away on every backward step.
    scaled = [
        y_error[i] / (atol[i] + rtol[i] * tf.maximum(tf.abs(y0[i]), tf.abs(y1[i])))
        for i in norm_leaves
    ]
    return tf.stop_gradient(_nest.rms_norm(scaled, batched))


def next_step_size(dt, ratio, accept, order, shrink_after_accept=False):
    """Step size to try next, from this step's `dt` and error `ratio`."""
    dtype = dt.dtype
    safe_ratio = tf.where(tf.math.is_finite(ratio), ratio, tf.constant(1e30, dtype))
    factor = SAFETY * tf.pow(tf.maximum(safe_ratio, 1e-30), -1.0 / order)
    if shrink_after_accept:
        lower = tf.constant(MIN_SHRINK, dtype)
    else:
        lower = tf.where(accept, tf.constant(1.0, dtype), tf.constant(MIN_SHRINK, dtype))
    factor = tf.clip_by_value(factor, lower, MAX_GROWTH)
    factor = tf.where(tf.equal(ratio, 0.0), tf.constant(MAX_GROWTH, dtype), factor)
    return tf.stop_gradient(dt * factor)


def initial_step(func, t0, y0, f0, order, rtol, atol, norm_leaves, span=None, batched=False):
    """Starting step size by Hairer, Norsett & Wanner, Sec. II.4.

    `order` is the propagated order of the method. Costs one evaluation of
    `func`. Returns a positive scalar, or one per sample when `batched`
    (then `t0` and `span` are per sample too). One departure: when `f` is (nearly)
    zero at the start and at the probe, the algorithm's 1e-6 guess would
    make a fresh zero-initialised Neural ODE crawl up by factors of ten for
    several steps; with the integration `span` known we try all of it.
    """
    dtype = t0.dtype
    scale = [a + r * tf.abs(y) for y, r, a in zip(y0, rtol, atol)]
    d0 = _norm([y / s for y, s in zip(y0, scale)], norm_leaves, batched)
    d1 = _norm([f / s for f, s in zip(f0, scale)], norm_leaves, batched)
    small = (d0 < 1e-5) | (d1 < 1e-5)
    h0 = tf.where(small, tf.constant(1e-6, dtype), 0.01 * d0 / tf.where(small, tf.ones_like(d1), d1))
    y_probe = tuple(y + _nest.per_sample(h0, f) * f for y, f in zip(y0, f0))
    f_probe = func(t0 + h0, y_probe)
    d2 = _norm([(fp - f) / s for fp, f, s in zip(f_probe, f0, scale)], norm_leaves, batched) / h0
    both_tiny = (d1 <= 1e-15) & (d2 <= 1e-15)
    h1 = tf.where(
        both_tiny,
        tf.maximum(tf.constant(1e-6, dtype), h0 * 1e-3),
        tf.pow(0.01 / tf.maximum(tf.maximum(d1, d2), 1e-300 if dtype == tf.float64 else 1e-30),
               1.0 / order),
    )
    h = tf.minimum(100.0 * h0, h1)
    if span is not None:
        h = tf.where(both_tiny, tf.maximum(span, h), h)
    return tf.stop_gradient(h)
