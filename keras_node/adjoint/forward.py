"""The adjoint's forward pass: `odeint`'s solve, plus the anchors.

Anchors are the states the backward pass re-anchors z at: every output time
and the checkpoints of `checkpoints.py`. Memory: (len(t) + K) states,
whatever the number of steps.
"""

from typing import NamedTuple

import tensorflow as tf

from keras_node.adjoint import checkpoints
from keras_node.odeint import direction_and_tau, integrate_problem


class Anchors(NamedTuple):
    """What the forward pass keeps for the backward pass (solver time)."""

    tau: tf.Tensor  # [A] sorted times (increasing solver time); per sample [batch, A]
    states: tuple  # per leaf, [A, ...]: the forward state at each anchor
    positions: tf.Tensor  # [len(t)] index of each output among the anchors; [batch, len(t)]
    active: tf.Tensor  # [A] bool: an output, or a checkpoint the backward pass uses
    last_dt: tf.Tensor  # the forward solve's next step-size proposal


def forward_pass(func, problem, options, num_checkpoints):
    """Solve forward keeping the anchors. Returns `(outputs, anchors,
    solution, t_reached)`: the states at the output times (per leaf, as
    `odeint` gives them), the `Anchors`, the `Solution` and the time reached
    (user time).

    With a grid of times per sample (`(batch, n)`, `batch_axis=0`) the
    anchors are per sample too: `tau` and `positions` get a row per sample,
    and an anchor index is active when it is active for any sample."""
    _, tau, _ = direction_and_tau(problem)
    num_out = tf.shape(tau)[-1]
    if options.tableau.adaptive:
        candidates = tf.concat([tau, checkpoints.uniform_times(tau, num_checkpoints)], -1)
        order, positions = checkpoints.merge(tau, candidates[..., num_out:])
        solution, t_reached = integrate_problem(func, problem, options,
                                                tau_out=_gather_rows(candidates, order))
        states = solution.ys
        # A per-sample solve counts steps per sample: its longest one decides.
        used = checkpoints.used_uniform(num_checkpoints, tf.reduce_max(solution.num_steps))
    elif num_checkpoints == 0 or options.batch_axis == 0:
        # Per-sample fixed steps record nothing: their anchors are the outputs.
        solution, t_reached = integrate_problem(func, problem, options)
        states, used, candidates = solution.ys, tf.zeros([0], tf.bool), tau
        order = positions = tf.broadcast_to(tf.range(num_out), tf.shape(tau))
    else:
        record = checkpoints.record_counts(tau, problem.step_size, num_checkpoints)
        solution, t_reached = integrate_problem(func, problem, options, record_steps=record)
        used = tf.math.is_finite(solution.recorded_t)
        # Unused records sort next to t[0], inactive (the backward pass skips them).
        extra = tf.where(used, solution.recorded_t, tau[0])
        order, positions = checkpoints.merge(tau, extra)
        candidates = tf.concat([tau, extra], 0)
        states = tuple(tf.gather(tf.concat([y, r], 0), order)
                       for y, r in zip(solution.ys, solution.recorded_y))
    used = tf.broadcast_to(used, tf.concat([tf.shape(tau)[:-1], tf.shape(used)], 0))
    used_at = _gather_rows(tf.concat([tf.zeros_like(tau, tf.bool), used], -1), order)
    active = (order < num_out) | used_at
    if active.shape.rank == 2:
        active = tf.reduce_any(active, axis=0)
    anchors = Anchors(tau=_gather_rows(candidates, order), states=states, positions=positions,
                      active=active, last_dt=tf.reduce_min(solution.last_dt))
    outputs = [_gather_outputs(y, positions) for y in states]
    return outputs, anchors, solution, t_reached


def _gather_rows(values, order):
    """`values` reordered by `order`, row by row for grids per sample."""
    return tf.gather(values, order, batch_dims=order.shape.rank - 1)


def _gather_outputs(states, positions):
    """The outputs `[n, ...]` among the anchors `[A, ...]`; with positions
    per sample `(batch, n)`, output i of sample b is anchor `positions[b, i]`
    of sample b."""
    if positions.shape.rank == 1:
        return tf.gather(states, positions)
    return tf.gather_nd(states, output_indices(positions))


def output_indices(positions):
    """`[n, batch, 2]` indices (anchor of output i of sample b, b) into
    anchors `[A, batch, ...]`, from per-sample `positions` `(batch, n)`."""
    rows = tf.broadcast_to(tf.range(tf.shape(positions)[0])[:, None], tf.shape(positions))
    return tf.transpose(tf.stack([positions, rows], -1), [1, 0, 2])
