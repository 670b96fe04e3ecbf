"""RNODE regularisers and the CNF's log-density, as extra per-sample states.

Finlay et al. 2020 ("How to train your neural ODE") penalise the kinetic
energy and the Jacobian's Frobenius norm along the trajectory; Kelly et al.
2020 the size of the second derivative. Per sample, with means over the
non-batch axes (API.md):

    kinetic             int mean(f^2) |dt|
    jacobian_frobenius  int mean((eps^T df/dh)^2) |dt|   (E = |df/dh|_F^2 / D)
    taylor2             int mean((d^2h/dt^2)^2) |dt|,    d^2h/dt^2 = (df/dh) f + df/dt

Each is integrated along the *same* solve as the state: the solve's state
becomes `(h, [log-density], [eps], r_1, ..., r_k)`, where `eps` (the
Hutchinson probe, dt eps = 0) is drawn once per solve and rides along, so
the forward and the adjoint's backward solve see the same probe. Only `h`
(and the log-density) enter error control (`SolverOptions.norm_leaves`):
the step sequence is the one of the plain solve. The r_i are integrated in
the solver's own time, so their values at the end are multiplied by the
direction of `t` to give integrals over |dt|.

All derivatives come from one evaluation of `func`: the probe product
`eps^T df/dh` serves both the Frobenius term and the Hutchinson trace, and `(df/dh) f + df/dt` is the derivative with respect to
`u` of `u^T (df/dh) f + u^T df/dt` (a vector-Jacobian product differentiated
again), so no second evaluation of `func` is needed.
"""

from typing import NamedTuple, Optional

import tensorflow as tf

from keras_node.divergence import (event_size, exact_trace, first_copy, hutchinson_trace,
                                   replicate, with_vjp)


def _mean(x):
    """Mean over every axis but the first (the batch): shape `(batch,)`."""
    return tf.reduce_mean(tf.reshape(x, [tf.shape(x)[0], -1]), axis=1)


def _second_derivative(vjp, f, h, t):
    """`(df/dh) f + df/dt`: the gradient with respect to `u` (at 0) of
    `u^T (df/dh) f + u^T df/dt`, two symbolic vector-Jacobian products."""
    u = tf.zeros_like(f)
    u_jac_h, u_jac_t = vjp(u, [h, t])
    directional = tf.reduce_sum(u_jac_h * f) + tf.reduce_sum(u_jac_t)
    return tf.gradients(directional, u)[0]


def _embed(cotangent, copies):
    """A cotangent on the original batch, placed on copy 0 of each sample
    of the replicated batch (zeros on the other copies)."""
    if copies == 1:
        return cotangent
    stacked = tf.stack([cotangent] + [tf.zeros_like(cotangent)] * (copies - 1), axis=1)
    return tf.reshape(stacked, tf.concat([[-1], tf.shape(cotangent)[1:]], 0))


def evaluate(func, t, h, terms, probe=None, trace=None):
    """`func(t, h)`, its divergence and the regularisers' rates, per sample.

    Runs inside the solver's graph (the products are symbolic, see
    `divergence.with_vjp`). With the exact trace `func` is evaluated once
    on the batch replicated D times (`divergence.exact_trace`), and every
    other product is taken on copy 0.

    Args:
        func: `func(t, h) -> dh/dt`, samples independent.
        t: the time (a tensor of h's dtype, scalar or per sample).
        h: `(batch, ...)` state.
        terms: regulariser names (see module docstring) to evaluate.
        probe: the Hutchinson probe shaped like h (for "jacobian_frobenius"
            and a "hutchinson" trace).
        trace: None (no divergence), "exact" or "hutchinson".

    Returns:
        `(f, div, rates)`: div `(batch,)` or None; rates a tuple of
        `(batch,)` tensors, one per term.
    """
    copies = event_size(h) if trace == "exact" else 1
    h_eval, t_eval = replicate(h, copies), replicate(t, copies)
    f_eval, vjp = with_vjp(func, t_eval, h_eval)
    f = first_copy(f_eval, copies)
    product = None
    if probe is not None:
        product = first_copy(vjp(_embed(probe, copies), [h_eval])[0], copies)
    div = None
    if trace == "exact":
        div = exact_trace(vjp, h_eval, copies)
    elif trace == "hutchinson":
        div = hutchinson_trace(product, probe)
    rates = []
    for term in terms:
        if term == "kinetic":
            rates.append(_mean(tf.square(f)))
        elif term == "jacobian_frobenius":
            rates.append(_mean(tf.square(product)))
        else:
            accel = first_copy(_second_derivative(vjp, f_eval, h_eval, t_eval), copies)
            rates.append(_mean(tf.square(accel)))
    return f, div, tuple(rates)


class Layout(NamedTuple):
    """What rides along with `h` in the solve's state, in this order:
    the log-density (a CNF), the probe, one integral per term."""

    terms: tuple = ()
    trace: Optional[str] = None  # None (no log-density), "exact" or "hutchinson"

    @property
    def probe(self):
        return self.trace == "hutchinson" or "jacobian_frobenius" in self.terms

    @property
    def num_leaves(self):
        """The number of leaves of the solve's state."""
        return 1 + (self.trace is not None) + self.probe + len(self.terms)

    @property
    def norm_leaves(self):
        """The leaves under error control: h, and the log-density if any."""
        return (0, 1) if self.trace is not None else (0,)

    def initial_state(self, h, probe=None):
        """`(h, [log-density 0], [probe], 0, ..., 0)`."""
        zero = tf.zeros(tf.shape(h)[:1], h.dtype)
        state = (h,) + ((zero,) if self.trace is not None else ())
        state += (probe,) if self.probe else ()
        return state + (zero,) * len(self.terms)

    def dynamics(self, func):
        """The solve's `dynamics(t, state)` for the user's `func(t, h)`."""

        def dynamics(t, state):
            h = state[0]
            probe = state[1 + (self.trace is not None)] if self.probe else None
            t = tf.cast(t, h.dtype)
            f, div, rates = evaluate(func, t, h, self.terms, probe, self.trace)
            derivative = (f,) + ((div,) if self.trace is not None else ())
            derivative += (tf.zeros_like(probe),) if self.probe else ()
            return derivative + rates

        return dynamics

    def split(self, ys, direction):
        """`(h_ys, log_density_ys or None, {term: (batch,) integral over |dt|})`
        from the solve's output (stacked over output times)."""
        log_density = ys[1] if self.trace is not None else None
        integrals = ys[len(ys) - len(self.terms):]
        return ys[0], log_density, {term: direction * r[-1] for term, r in zip(self.terms, integrals)}
