"""The adjoint's backward pass: one solve of the augmented ODE per interval
between active anchors, from the last to the first.

At each anchor z is reset to the stored forward state (re-anchoring, so the
backward reconstruction of z never drifts far on contractive dynamics) and
the output's cotangent is added to a; then the augmented ODE
(`augmented.py`) is solved to the previous active anchor. The error norm is
the RMS over all components of [z, a] (and of g unless seminorm), the
forward solve's rule applied to the augmented state. (torchdiffeq instead
takes the maximum of the RMS norms of z and a, which is stricter: 10% more
backward evaluations on the benchmark MLP, 5% over benchmarks/checkpoints.py's
problems, for the same gradients.) The first backward step reuses the
forward solve's last step-size proposal when both solves share method and
tolerances (the adjoint shares the forward Jacobian, so its time scales).

A Rosenbrock backward method (rodas4, for stiff problems) cannot solve z
backward in time (backward, a stiff decay is an explosive growth): there
each interval re-solves z forward from its earlier anchor and integrates
only [a, g] backward, with z interpolated (`interpolated.py`).

Time gradients use dL/dt_i = dL/dy_i . f(t_i, y_i) for outputs i >= 1 (f
read off the augmented derivative each interval starts with, so free) and
dL/dt_0 = -a(t_0) . f(t_0, y_0). These equal the integrated time-adjoint of
torchdiffeq/jax (by d/dt (a . f) = a . df/dt along the solution) without
integrating one more component.
"""

import dataclasses
from typing import NamedTuple

import tensorflow as tf

from keras_node.adjoint import augmented
from keras_node.adjoint import interpolated
from keras_node.solvers import step_control
from keras_node.solvers.integrate import integrate
from keras_node.solvers.rosenbrock_tableau import RosenbrockTableau


class BackwardState(NamedTuple):
    """The backward loop's state; one iteration per interval."""

    index: tf.Tensor  # the anchor the next interval starts at
    a: tuple  # dL/dz per leaf, before re-anchoring at `index`
    params: tuple  # () or (flat dL/dtheta accumulated so far,)
    dt: tf.Tensor  # next backward step size
    t_grads: tf.Tensor  # [A] direct dL/dtau per anchor ([A, batch] with anchors per sample)
    counts: tf.Tensor  # int32 [nfe, num_steps, num_rejected]
    status: tf.Tensor  # int32, 0 = success
    tau_reached: tf.Tensor  # solver time of a failure


class BackwardResult(NamedTuple):
    """Gradients (solver time) and the backward solve's counts."""

    grads_y0: list  # per leaf
    grad_tau: tf.Tensor  # [len(t)] dL/dtau at each output time
    grads_variables: list
    counts: tf.Tensor
    status: tf.Tensor
    tau_reached: tf.Tensor


class BackwardPass:
    """The backward pass of one gradient computation.

    Args:
        func: `func(tau, leaves)` in increasing solver time.
        anchors: the forward pass's `forward.Anchors`.
        output_grads: cotangents of the outputs, per leaf `[len(t), ...]`.
        variables: the variables to differentiate.
        controls: a `Controls` for the backward solve over the *state's*
            leaves (tableau, rtol, atol, max_num_steps, first_step,
            step_size); the augmented tolerances are derived here.
        seminorm: leave g out of the error norm.
        warm_start: start from the forward's last step-size proposal.
    """

    def __init__(self, func, anchors, output_grads, variables, controls, seminorm, warm_start):
        self.func, self.anchors, self.variables = func, anchors, list(variables)
        self.n = len(anchors.states)
        self.dtype = anchors.states[0].dtype
        static = anchors.tau.shape[-1]
        self.num_anchors = static if static is not None else tf.shape(anchors.tau)[-1]
        # Cotangents per anchor: zero at checkpoints that are not outputs.
        index = self._anchor_indices()
        self.grads = [tf.scatter_nd(index, g, tf.shape(y)) for g, y in zip(output_grads, anchors.states)]
        self.aug_func = augmented.augmented_dynamics(func, self.n, self.variables, self.dtype)
        num_params = sum(v.shape.num_elements() for v in self.variables)
        self.params0 = (tf.zeros([num_params], self.dtype),) if self.variables else ()
        rtol, atol = augmented.augmented_tolerances(controls.rtol, controls.atol, len(self.params0))
        # The state's leaves in the norm (all, or those `controls` names: the
        # quadrature leaves stay out), their adjoints, and g unless seminorm.
        state_norm = controls.norm_leaves or tuple(range(self.n))
        adjoint_norm = tuple(self.n + i for i in state_norm) + (
            () if seminorm or not self.params0 else (2 * self.n,))
        self.controls = controls._replace(
            rtol=rtol, atol=atol, norm_leaves=state_norm + adjoint_norm,
            clip_to_end=controls.tableau.adaptive, shrink_after_accept=True,
            tableau=_with_feedback_leaves(controls.tableau, 2 * self.n),
        )
        # Stiff (Rosenbrock) backward solves interpolate z (interpolated.py):
        # z is re-solved forward with the state's controls, and [a, g] alone
        # integrated backward.
        self.interpolate = isinstance(controls.tableau, RosenbrockTableau)
        self.state_controls = controls
        self.adjoint_controls = self.controls._replace(
            rtol=rtol[self.n:], atol=atol[self.n:], norm_leaves=tuple(i - self.n for i in adjoint_norm),
            tableau=_with_feedback_leaves(controls.tableau, self.n))
        self.warm_start = warm_start

    # -- what differs for anchors per sample (backward_per_sample.py) --------

    def _anchor_indices(self):
        """Scatter indices of the outputs among the anchors."""
        return self.anchors.positions[:, None]

    def _tau_at(self, i):
        """The time (solver time) of anchor i."""
        return tf.gather(self.anchors.tau, i)

    def _time_gradient(self, g, f):
        """dL/dtau of a cotangent `g` of a state moving with velocity `f`."""
        return tf.add_n([tf.reduce_sum(gi * fi) for gi, fi in zip(g, f)])

    def _output_time_gradients(self, t_grads):
        """dL/dtau of each output, from those of the anchors."""
        return tf.gather(t_grads, self.anchors.positions)

    # -- the pass ------------------------------------------------------------

    def _at_anchor(self, i, a, params):
        """Augmented state [z_i, a + dL/dy_i, g] at anchor i, its derivative
        (the first stage of the interval's solve) and dL/dtau_i (direct part)."""
        z = tuple(tf.gather(y, i) for y in self.anchors.states)
        g = [tf.gather(grads, i) for grads in self.grads]
        x = z + tuple(ai + gi for ai, gi in zip(a, g)) + params
        derivative = self.aug_func(-self._tau_at(i), x)
        # The z-part of the derivative is -f(tau_i, y_i); g is zero at anchors
        # that are not outputs, so their time gradient comes out zero.
        t_grad = -self._time_gradient(g, derivative[: self.n])
        return x, derivative, t_grad

    def _previous_active(self, i):
        """The active anchor before i (anchor 0 is an output, always active)."""
        index = tf.range(tf.size(self.anchors.active))
        return tf.reduce_max(tf.where(self.anchors.active & (index < i), index, -1))

    def _initial_dt(self):
        """Step size the first backward interval starts with, and its cost."""
        if self.controls.first_step is not None:
            return self.controls.first_step, 0
        if not self.controls.tableau.adaptive:
            return tf.zeros([], self.dtype), 0  # unused by fixed-step methods
        if self.warm_start:
            return self.anchors.last_dt, 0
        last = self.num_anchors - 1
        x = tuple(tf.gather(y, last) for y in self.anchors.states)
        x += tuple(tf.gather(g, last) for g in self.grads) + self.params0
        sigma0 = -self._tau_at(last)
        f0 = self.aug_func(sigma0, x)
        dt = step_control.initial_step(self.aug_func, sigma0, x, f0, self.controls.tableau.order,
                                       self.controls.rtol, self.controls.atol,
                                       self.controls.norm_leaves)
        return dt, 2

    def _interval(self, s):
        """Re-anchor at s.index and solve back to the previous active anchor."""
        x, derivative, t_grad = self._at_anchor(s.index, s.a, s.params)
        j = self._previous_active(s.index)
        sigma = -tf.stack([self._tau_at(s.index), self._tau_at(j)])
        if self.interpolate:
            sol = self._interpolated_solve(x[self.n:], j, sigma, s.dt)
            end = [None] * self.n + [y[-1] for y in sol.ys]
        else:
            sol = integrate(self.aug_func, x, sigma, self.controls._replace(first_step=s.dt),
                            f0=derivative)
            end = [y[-1] for y in sol.ys]
        failed_now = tf.equal(s.status, 0) & tf.not_equal(sol.status, 0)
        return BackwardState(
            index=j, a=tuple(end[self.n: 2 * self.n]), params=tuple(end[2 * self.n:]),
            dt=sol.last_dt, t_grads=tf.tensor_scatter_nd_update(s.t_grads, [[s.index]], [t_grad]),
            counts=s.counts + tf.stack([sol.nfe + 1, sol.num_steps, sol.num_rejected]),
            status=tf.where(tf.equal(s.status, 0), sol.status, s.status),
            tau_reached=tf.where(failed_now, -sol.t_reached, s.tau_reached),
        )

    def _interpolated_solve(self, x, j, sigma, dt):
        """[a, g] from -sigma[0] back to anchor j, z interpolated from a
        forward re-solve from anchor j; one `Solution` with both solves'
        counts and the first failure."""
        z_j = tuple(tf.gather(y, j) for y in self.anchors.states)
        record = interpolated.record_forward(self.func, z_j, -sigma[1], -sigma[0],
                                             self.state_controls)
        dynamics = interpolated.adjoint_dynamics(self.func, interpolated.state_at(record),
                                                 self.variables, self.dtype)
        sol = integrate(dynamics, x, sigma, self.adjoint_controls._replace(first_step=dt),
                        initial_status=record.status)
        return sol._replace(nfe=sol.nfe + record.nfe, num_steps=sol.num_steps + record.num_steps,
                            num_rejected=sol.num_rejected + record.num_rejected)

    def run(self):
        """Solve backward over every interval; return a `BackwardResult`."""
        dt, initial_cost = self._initial_dt()
        state = BackwardState(
            index=self.num_anchors - 1, a=tuple(tf.zeros_like(y[0]) for y in self.anchors.states),
            params=self.params0, dt=dt,
            t_grads=tf.zeros(tf.concat([[self.num_anchors], tf.shape(self.anchors.tau)[:-1]], 0),
                             self.dtype),
            counts=tf.constant([initial_cost, 0, 0], tf.int32), status=tf.constant(0, tf.int32),
            tau_reached=tf.zeros([], self.dtype),
        )
        bound = self.num_anchors if isinstance(self.num_anchors, int) else None
        state = tf.while_loop(lambda s: (s.index >= 1) & tf.equal(s.status, 0),
                              lambda s: (self._interval(s),), (state,), maximum_iterations=bound)[0]
        return self._finish(state)

    def _finish(self, s):
        """Gradients for y0 (a + the first output's cotangent), the output
        times and the variables."""
        f0 = self.func(self._tau_at(0), tuple(y[0] for y in self.anchors.states))
        t0_grad = -self._time_gradient(s.a, f0)
        t_grads = tf.tensor_scatter_nd_update(s.t_grads, [[0]], [t0_grad])
        grads_vars = augmented.unflatten_parameters(s.params[0], self.variables) if self.variables else []
        return BackwardResult(
            grads_y0=[ai + g[0] for ai, g in zip(s.a, self.grads)],
            grad_tau=self._output_time_gradients(t_grads), grads_variables=grads_vars,
            counts=s.counts + tf.constant([1, 0, 0], tf.int32), status=s.status,
            tau_reached=s.tau_reached,
        )


def _with_feedback_leaves(tableau, count):
    """A Rosenbrock tableau told that the augmented dynamics read only the
    first `count` leaves [z, a]: g never feeds back, so the step forms the
    Jacobian over [z, a] alone and treats g's block exactly
    (`solvers/rosenbrock.py`), instead of a Jacobian as wide as all the
    parameters. Explicit tableaus are returned unchanged."""
    if isinstance(tableau, RosenbrockTableau):
        return dataclasses.replace(tableau, jacobian_leaves=count)
    return tableau
