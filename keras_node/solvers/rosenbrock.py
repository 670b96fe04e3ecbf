"""One Rosenbrock step (`rosenbrock_tableau.RosenbrockTableau`, e.g. rodas4).

`rk_step` hands Rosenbrock tableaus here, so every caller (the joint loop,
the per-sample loop, events, the adjoint's backward solve) runs them through
the interface of the explicit step: `(y1, f1, y_error, k)`.

Each step takes one Jacobian `J = df/dy` and `f_t = df/dt` at `(t0, y0)`
by TF autodiff, on the state flattened into one vector (all leaves
concatenated): the full `n x n` Jacobian for a joint solve; per-sample
blocks (`batch_jacobian`, `(batch, n, n)`) when `dt` is per sample
(`batch_axis=0`). Memory is O(n^2) and each stage solve O(n^3): sensible up
to a state of a few hundred components per problem (per sample with
`batch_axis=0`); beyond that an explicit method or a smaller state is the
better choice. A rejected step recomputes the Jacobian at the same point
(Hairer's codes reuse it): carrying J in the loop state would save that,
not done yet. Dense output is the cubic Hermite of `interpolation.py`
(order 3), not rodas4's own order-3 formula.

Stage equations are multiplied through by `gamma h`, so that a zero-length
step (a finished sample, `dt = 0`) is the identity instead of a division
by zero:

    (I - gamma h J) U_i = gamma h f_i + gamma sum_j coupling_ij U_j
                          + gamma d_i h^2 f_t.

Linear solves use `tf.linalg.solve` (partial-pivoting LU) once per stage.
Factoring once per step with `tf.linalg.lu` + `lu_solve` would save five
factorisations, but in TF 2.21 the `Lu` op has neither an XLA kernel nor a
registered gradient (checked), and both are part of the contract.

Block structure (`tableau.jacobian_leaves = k`): `f` depends only on the
first k leaves F; the others Q (the adjoint's parameter-gradient integral:
as large as all parameters) never feed back. Then `J = [[J_FF, 0], [J_QF,
0]]` is block lower triangular and the stage solve splits exactly into
`(I - gamma h J_FF) U_F = r_F` and `U_Q = r_Q + gamma h (J_QF U_F + d_i h
f_Q,t)`. Only `J_FF` is formed; the coupling `J_QF U_F + d_i h f_Q,t` is a
Jacobian-vector product, taken as the reverse derivative (with respect to a
dummy cotangent `w`) of the vector-Jacobian product `w . d f_Q / d(y_F, t)`
recorded once per step, so each stage costs one backward pass and no
`n_Q x n_F` matrix is ever stored.
"""

import contextlib

import tensorflow as tf
# Private, as in loop_bodies: no public API tells whether a tape records.
from tensorflow.python.eager import record
# Private: no public API restarts tapes that a caller stopped (see _recording).
from tensorflow.python import pywrap_tfe

from keras_node import _status

_ZERO = tf.UnconnectedGradients.ZERO


@contextlib.contextmanager
def _recording():
    """Let the step's own tapes record even where the caller stopped all
    recording: `odeint_adjoint`'s forward solve runs under
    `stop_recording()` (its gradient is the adjoint), which in graphs would
    otherwise leave every Jacobian silently zero (W = I: rodas4 degrades to
    an explicit method and runs out of steps; measured). Other tapes on the
    thread see these ops too, but nothing they differentiate leads here."""
    stopped = pywrap_tfe.TFE_Py_TapeSetIsStopped()
    if stopped:
        pywrap_tfe.TFE_Py_TapeSetRestartOnThread()
    try:
        yield
    finally:
        if stopped:
            pywrap_tfe.TFE_Py_TapeSetStopOnThread()


def _jacobian(tape, out, sources, per_sample):
    """d out / d source for each source: `(..., n, m)` for a state source,
    `(n,)` for a scalar time. Per sample (`out` `(batch, n)`), rows are per
    sample, as `batch_jacobian` gives them (samples are independent).

    Vectorised (pfor) unless XLA compiles code a tape may differentiate:
    XLA cannot compile the second derivative of pfor's vectorised slice
    gradients (a user's `y[0]`: shapes it cannot make constant; TF 2.21), nor
    `jacobian`'s unvectorised while loop (unbounded); a Python loop of n VJPs
    it can (`tape` must then be persistent)."""
    if not (_status.in_xla_context() and record.could_possibly_record()):
        if per_sample:
            return [tape.batch_jacobian(out, s, unconnected_gradients=_ZERO) for s in sources]
        return tape.jacobian(out, sources, unconnected_gradients=_ZERO)
    # Row i as the VJP with the i-th unit cotangent (a slice of `out` taken
    # here, after the tape stopped, would not be on the tape).
    size = out.shape[-1]
    rows = [tape.gradient(out, sources, unconnected_gradients=_ZERO,
                          output_gradients=tf.broadcast_to(tf.one_hot(i, size, dtype=out.dtype),
                                                           tf.shape(out)))
            for i in range(size)]
    return [tf.stack([row[k] for row in rows], axis=-2 if s.shape.rank else 0)
            for k, s in enumerate(sources)]


class _Flat:
    """Flattens tuples of leaves into one vector (`(n,)`, or `(batch, n)`
    per sample) and back."""

    def __init__(self, leaves, per_sample):
        self.per_sample = per_sample
        self.shapes = [tf.shape(leaf) for leaf in leaves]
        first = 1 if per_sample else 0
        static = [leaf.shape[first:].num_elements() for leaf in leaves]
        if all(size is not None for size in static):
            self.sizes, self.size = static, sum(static)
        else:
            self.sizes = tf.stack([tf.reduce_prod(tf.shape(leaf)[first:]) for leaf in leaves])
            self.size = tf.reduce_sum(self.sizes)

    def flatten(self, leaves):
        """One vector of all leaves' components."""
        shape = [tf.shape(leaves[0])[0], -1] if self.per_sample else [-1]
        flat = [tf.reshape(leaf, shape) for leaf in leaves]
        return flat[0] if len(flat) == 1 else tf.concat(flat, axis=-1)

    def unflatten(self, flat):
        """The tuple of leaves of `flat`."""
        pieces = [flat] if len(self.shapes) == 1 else tf.split(flat, self.sizes, axis=-1,
                                                               num=len(self.shapes))
        return tuple(tf.reshape(p, s) for p, s in zip(pieces, self.shapes))


def rosenbrock_step(func, t0, y0, f0, dt, tableau):
    """Advance `y0` at `t0` by `dt` with the Rosenbrock `tableau`.

    Same arguments and results as `rk_step.rk_step` (`dt` and `t0` may be
    per sample, shape `(batch,)`); `k` is the list of increments `U_i`
    (flat), which dense output does not use (cubic Hermite). Costs
    `tableau.new_evaluations_per_step` evaluations of `func`, one Jacobian
    and one linear solve per stage.
    """
    y0 = tuple(y0)
    per_sample = dt.shape.rank == 1
    flat = _Flat(y0, per_sample)
    h = dt[:, None] if per_sample else dt
    gamma = tableau.gamma
    split = tableau.jacobian_leaves
    with _recording():
        if split is None or split >= len(y0) or per_sample:
            solve = _full_solver(func, t0, y0, flat, h, tableau)
        else:
            solve = _block_solver(func, t0, y0, split, flat, h, tableau)
    y0_flat = flat.flatten(y0)
    increments = []
    for i in range(tableau.num_stages):
        if i == 0:
            f_i = flat.flatten(f0)
        else:
            y_in = _combine(y0_flat, tableau.a[i], increments)
            f_i = flat.flatten(func(t0 + tableau.c[i] * dt, flat.unflatten(y_in)))
        rhs = _combine(gamma * h * f_i, [gamma * x for x in tableau.coupling[i]], increments)
        increments.append(solve(rhs, i))
    y1 = flat.unflatten(_combine(y0_flat, tableau.b, increments))
    f1 = tuple(func(t0 + dt, y1))
    y_error = None
    if tableau.adaptive:
        y_error = flat.unflatten(_combine(tf.zeros_like(y0_flat), tableau.b_error, increments))
    return y1, f1, y_error, increments


def _combine(start, coefficients, vectors):
    """`start + sum_j coefficients[j] vectors[j]`, skipping zero coefficients."""
    terms = [v * c if c != 1.0 else v for c, v in zip(coefficients, vectors) if c != 0.0]
    return start if not terms else start + (terms[0] if len(terms) == 1 else tf.add_n(terms))


def _full_solver(func, t0, y0, flat, h, tableau):
    """`solve(rhs, i)` for stage i with the whole Jacobian (per-sample
    blocks when `flat.per_sample`)."""
    # y and t are watched as separate tensors, not slices of one: under XLA
    # the second derivative (backprop through the Jacobian) of a slice's
    # vectorised gradient needs shapes XLA cannot make constant.
    y_flat = flat.flatten(y0)
    t_source = t0[:, None] if flat.per_sample else t0
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([y_flat, t_source])
        t = tf.reshape(t_source, [-1]) if flat.per_sample else t_source
        out = flat.flatten(tuple(func(t, flat.unflatten(y_flat))))
    jacobian, f_t = _jacobian(tape, out, [y_flat, t_source], flat.per_sample)
    if flat.per_sample:
        f_t = f_t[..., 0]  # (batch, n, 1) -> (batch, n)
    linear_solve = _iteration_matrix(jacobian, tableau.gamma * h, flat.per_sample)

    def solve(rhs, i):
        if tableau.d[i] != 0.0:
            rhs = rhs + (tableau.gamma * tableau.d[i]) * h * h * f_t
        return linear_solve(rhs)

    return solve


def _iteration_matrix(jacobian, gamma_h, per_sample):
    """A linear solver `solve(rhs)` with `I - gamma h J` (batched when per
    sample). A singular or non-finite matrix gives NaN (so the step is
    rejected, and a solve that cannot recover fails with a status) instead
    of `MatrixSolve`'s exception, which TF raises for an exactly zero or
    NaN pivot outside XLA: the matrix is swapped for I there, found by its
    determinant (one more LU per step; the solves factor six times). Under
    XLA, which has no determinant kernel, MatrixSolve returns non-finite
    values instead of raising, which the error control rejects alike."""
    size = tf.shape(jacobian)[-1]
    eye = tf.eye(size, dtype=jacobian.dtype)
    matrix = eye - (gamma_h[:, :, None] if per_sample else gamma_h) * jacobian
    if _status.in_xla_context():
        return lambda rhs: tf.linalg.solve(matrix, rhs[..., None])[..., 0]
    det = tf.stop_gradient(tf.linalg.det(matrix))
    usable = tf.math.is_finite(det) & tf.not_equal(det, 0.0)
    matrix = tf.where(usable[..., None, None], matrix, eye)
    nan = tf.constant(float("nan"), jacobian.dtype)

    def solve(rhs):
        u = tf.linalg.solve(matrix, rhs[..., None])[..., 0]
        return tf.where(usable[..., None], u, nan)

    return solve


def _block_solver(func, t0, y0, split, flat, h, tableau):
    """`solve(rhs, i)` exploiting that `f` does not read the leaves from
    `split` on (see the module docstring)."""
    feedback, rest = y0[:split], y0[split:]
    flat_f, flat_q = _Flat(feedback, False), _Flat(rest, False)
    y_f, t = flat_f.flatten(feedback), t0
    cotangent = [tf.zeros_like(q) for q in rest]
    with tf.GradientTape(persistent=True) as outer:
        outer.watch(cotangent)
        with tf.GradientTape(persistent=True) as inner:
            inner.watch([y_f, t])
            out = tuple(func(t, flat_f.unflatten(y_f) + tuple(rest)))
            out_f = flat_f.flatten(out[:split])
        with outer.stop_recording():
            jacobian, f_t = _jacobian(inner, out_f, [y_f, t], False)
        # w . d f_Q / d(y_F, t): linear in w, so its derivative along a
        # direction is J_QF times that direction (plus the time part).
        vjp = inner.gradient(list(out[split:]), [y_f, t], output_gradients=cotangent,
                             unconnected_gradients=_ZERO)
    gamma_h = tableau.gamma * h
    linear_solve = _iteration_matrix(jacobian, gamma_h, False)
    n_f = flat_f.size

    def solve(rhs, i):
        rhs_f, rhs_q = rhs[:n_f], rhs[n_f:]
        if tableau.d[i] != 0.0:
            rhs_f = rhs_f + (tableau.gamma * tableau.d[i]) * h * h * f_t
        u_f = linear_solve(rhs_f)
        coupled = outer.gradient(vjp, cotangent, output_gradients=[u_f, tableau.d[i] * h],
                                 unconnected_gradients=_ZERO)
        return tf.concat([u_f, rhs_q + gamma_h * flat_q.flatten(coupled)], axis=0)

    return solve
