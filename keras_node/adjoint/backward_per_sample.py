"""The adjoint's backward pass when every sample has its own time grid.

With `t` of shape `(batch, n)` (`batch_axis=0`) the anchors are per sample:
anchor k of sample b sits at `tau[b, k]`. The backward pass still steps the
whole batch jointly, one interval per anchor index, as the parameter
gradient sums over the samples: interval k -> j is solved in a shared
variable s in [0, 1], with sample b at `sigma_b(s) = -tau[b, k] + s * L_b`,
`L_b = tau[b, k] - tau[b, j]` (`augmented.rescaled_dynamics`). A sample
whose interval is empty (L_b = 0) stands still. Step sizes carry over
between intervals in solver time (s-steps times the longest L). The
forward's step constraints (`max_step`, step and jump times) are not
applied here: they are in solver time, which differs per sample.
"""

import tensorflow as tf

from keras_node import _nest
from keras_node import _status
from keras_node.adjoint import augmented
from keras_node.adjoint import interpolated
from keras_node.adjoint.backward import BackwardPass, BackwardState
from keras_node.adjoint.forward import output_indices
from keras_node.solvers.integrate import integrate


class PerSampleBackwardPass(BackwardPass):
    """`BackwardPass` over anchors per sample (`Anchors.tau` `[batch, A]`,
    `positions` `[batch, n]`); same arguments."""

    def __init__(self, func, anchors, output_grads, variables, controls, seminorm, warm_start):
        # Step constraints are in solver time, which differs per sample here.
        controls = controls._replace(max_step=None, stops=None)
        super().__init__(func, anchors, output_grads, variables, controls, seminorm, warm_start)
        self.rescaled = augmented.rescaled_dynamics(func, self.n, self.variables, self.dtype)

    def _output_rows(self):
        """`[n, batch, 2]` indices (anchor of output i of sample b, b)."""
        return output_indices(self.anchors.positions)

    def _anchor_indices(self):
        return self._output_rows()

    def _tau_at(self, i):
        return self.anchors.tau[:, i]

    def _time_gradient(self, g, f):
        return tf.add_n([tf.reduce_sum(gi * fi, axis=list(range(1, gi.shape.rank)))
                         for gi, fi in zip(g, f)])

    def _output_time_gradients(self, t_grads):
        # t_grads is [A, batch]; the user's t (and its gradient) is [batch, n].
        return tf.transpose(tf.gather_nd(t_grads, self._output_rows()))

    def _interval(self, s):
        """Re-anchor every sample at anchor s.index and solve all of them
        back to the previous active anchor index, in s in [0, 1]."""
        i, j = s.index, self._previous_active(s.index)
        z = tuple(tf.gather(y, i) for y in self.anchors.states)
        g = [tf.gather(grads, i) for grads in self.grads]
        x = z + tuple(ai + gi for ai, gi in zip(s.a, g)) + s.params
        sigma0, length = -self._tau_at(i), self._tau_at(i) - self._tau_at(j)
        derivative, f = self.rescaled(sigma0, length, x)
        t_grad = self._time_gradient(g, f)  # f itself, not the derivative's -f
        longest = tf.reduce_max(length)
        # An all-empty interval has nothing to solve: any step crosses it.
        safe = tf.where(longest > 0, longest, tf.ones_like(longest))
        controls = self.controls._replace(first_step=s.dt / safe)
        if controls.step_size is not None:
            controls = controls._replace(step_size=controls.step_size / safe)
        if self.interpolate:
            sol = self._interpolated_solve(x[self.n:], j, sigma0, length, controls.first_step)
            end = [None] * self.n + [y[-1] for y in sol.ys]
        else:
            sol = integrate(lambda u, x: self.rescaled(sigma0 + u * length, length, x)[0], x,
                            tf.constant([0.0, 1.0], self.dtype), controls, f0=derivative)
            end = [y[-1] for y in sol.ys]
        failed_now = tf.equal(s.status, _status.SUCCESS) & tf.not_equal(sol.status, _status.SUCCESS)
        return BackwardState(
            index=j, a=tuple(end[self.n: 2 * self.n]), params=tuple(end[2 * self.n:]),
            dt=tf.where(longest > 0, sol.last_dt * longest, s.dt),
            t_grads=tf.tensor_scatter_nd_update(s.t_grads, [[i]], [t_grad]),
            counts=s.counts + tf.stack([sol.nfe + 1, sol.num_steps, sol.num_rejected]),
            status=tf.where(tf.equal(s.status, _status.SUCCESS), sol.status, s.status),
            tau_reached=tf.where(failed_now, tf.reduce_max(-sigma0 - sol.t_reached * length),
                                 s.tau_reached),
        )

    def _interpolated_solve(self, x, j, sigma0, length, first_step):
        """The stiff (Rosenbrock) interval in the shared variable: z re-solved
        forward in s = 1 - u from anchor j (sample b at tau_j_b + s L_b), then
        [a, g] backward in u with z interpolated (`interpolated.py`)."""
        tau_j = self._tau_at(j)

        def forward(s, z):
            return tuple(fi * _nest.per_sample(length, fi) for fi in self.func(tau_j + s * length, z))

        zero, one = tf.constant(0.0, self.dtype), tf.constant(1.0, self.dtype)
        record = interpolated.record_forward(forward, tuple(tf.gather(y, j) for y in self.anchors.states),
                                             zero, one, self.state_controls)
        z_of = interpolated.state_at(record)

        def dynamics(u, x):
            return self.rescaled(sigma0 + u * length, length, z_of(1.0 - u) + tuple(x))[0][self.n:]

        sol = integrate(dynamics, x, tf.stack([zero, one]),
                        self.adjoint_controls._replace(first_step=first_step),
                        initial_status=record.status)
        return sol._replace(nfe=sol.nfe + record.nfe, num_steps=sol.num_steps + record.num_steps,
                            num_rejected=sol.num_rejected + record.num_rejected)
