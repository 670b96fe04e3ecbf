"""The cores of `odeint_event` (run through `_execution.run`): the search
on a normalised problem, for each gradient mode, and the adjoint's anchors
built from what the search recorded.

A joint solve is searched as a batch of one (the per-sample loop of
`solvers/events.py`); the cores return the user's shapes and time.
"""

import tensorflow as tf

from keras_node import _inputs
from keras_node.adjoint import checkpoints
from keras_node.adjoint.forward import Anchors
from keras_node.odeint import direction_and_tau, to_user_time
from keras_node.solvers import events as event_search
from keras_node.solvers import recompute
from keras_node.solvers import thinned_records
from keras_node.solvers.integrate import Controls


def _search(func, problem, settings, record_slots=0, compile_root_search=False):
    """Run the search on `problem` (solver time). Returns `(found, sign,
    tau_span)`: the `EventSearch`, with batch-of-one shapes for a joint
    solve, the time direction and the `(batch, 2)` solver-time span."""
    options = settings.options
    sign, tau, initial_status = direction_and_tau(problem)
    if not settings.has_t_max:
        infinity = tf.constant(float("inf"), tau.dtype)
        tau = tf.concat([tau[..., :1], tf.fill(tf.shape(tau[..., 1:]), infinity)], -1)
    controls = Controls(tableau=options.tableau, rtol=problem.rtol, atol=problem.atol,
                        max_num_steps=options.max_num_steps, first_step=problem.first_step)
    owner, func = func, _inputs.normalized_func(func, problem.y0, sign)
    event_fn = _normalized_event_fn(settings.event_fn, problem.y0, sign, options.batch_axis == 0)
    leaves = problem.leaves
    if options.batch_axis == 0:
        if tau.shape.rank == 1:
            tau = tf.broadcast_to(tau, tf.concat([tf.shape(leaves[0])[:1], [2]], 0))
    else:  # a joint solve is a batch of one
        func, event_fn = _batch_of_one(func), _batch_of_one(event_fn)
        leaves, tau = tuple(y[None] for y in leaves), tau[None]
    controls = controls._replace(variables=recompute.loop_variables(owner, func, tau[:, 0], leaves))
    found = event_search.search(func, event_fn, leaves, tau, controls, settings.direction,
                                initial_status, record_slots=record_slots,
                                record_stride=checkpoints.STEPS_PER_ANCHOR,
                                compile_root_search=compile_root_search)
    return found, sign, tau


def _public(found, sign, joint):
    """`(t_event, index, stats, t_reached)` in user time and user shapes."""
    stats = {"nfe": found.nfe, "num_steps": found.num_steps, "num_rejected": found.num_rejected,
             "status": found.status}
    t_event, t_reached = to_user_time(found.t, sign), to_user_time(found.t_reached, sign)
    index = found.event_index
    if joint:
        t_event, index, t_reached = t_event[0], index[0], t_reached[0]
        stats = {k: v if k == "nfe" else v[0] for k, v in stats.items()}
    return t_event, index, stats, t_reached


def backprop_core(func, problem, settings, compile_root_search):
    """The search for `gradient="backprop"` (a core of `_execution.run`):
    `(t_event, index, stats, t_reached, y_event)`, y_event differentiable
    through the loop."""
    found, sign, _ = _search(func, problem, settings, compile_root_search=compile_root_search)
    joint = settings.options.batch_axis != 0
    y_event = [y[0] for y in found.y] if joint else list(found.y)
    return _public(found, sign, joint) + (y_event,)


def adjoint_forward_core(func, problem, settings, event):
    """The search as the forward pass of `odeint_adjoint` (its `forward`
    core, with the adjoint's `settings`): outputs `[y0, y_event]` per leaf,
    the anchors (t0, the recorded states, the event), the stats (with the
    event time, index and time reached) and the time reached."""
    slots = settings.adjoint_options.adjoint_checkpoints
    found, sign, tau = _search(func, problem, event, record_slots=slots)
    joint = settings.options.batch_axis != 0
    t_event, index, stats, t_reached = _public(found, sign, joint)
    stats.update(event_t=t_event, event_index=index, t_reached=t_reached)
    anchors = _anchors(tau, tuple(y[None] if joint else y for y in problem.leaves), found, slots,
                       joint)
    outputs = [tf.stack([states[0], states[-1]]) for states in anchors.states]
    return outputs, tf.nest.map_structure(tf.stop_gradient, anchors), stats, t_reached


def _anchors(tau, y0, found, slots, joint):
    """The adjoint's `Anchors` (solver time) from the search: t0, the
    records (unused slots sit at t0 with y0, inactive) and the event, per
    sample `(batch, slots + 2)`, or for a joint solve `(slots + 2,)`."""
    batch = tf.shape(tau)[0]
    if slots:
        records = found.records
        used = thinned_records.in_use(records)  # (batch, K)
        # Unused slots first (at t0, where re-anchoring is a no-op), then the records in order.
        j, count = tf.range(slots)[None, :], records.count[:, None]
        order = tf.where(j < slots - count, count + j, j - (slots - count))
        middle_tau = tf.gather(tf.where(used, records.tau, tau[:, :1]), order, batch_dims=1)
        rows = tf.broadcast_to(tf.range(batch)[None, :], [slots, batch])
        indices = tf.stack([tf.transpose(order), rows], -1)
        middle_states = tuple(
            tf.gather_nd(tf.where(_used_mask(used, s), s, y[None]), indices)
            for s, y in zip(records.states, y0))
        middle_active = tf.range(slots) >= slots - tf.reduce_max(records.count)
    else:
        middle_tau = tf.zeros([batch, 0], tau.dtype)
        middle_states = tuple(tf.zeros(tf.concat([[0], tf.shape(y)], 0), y.dtype) for y in y0)
        middle_active = tf.zeros([0], tf.bool)
    anchor_tau = tf.concat([tau[:, :1], middle_tau, found.t[:, None]], 1)
    states = tuple(tf.concat([y[None], m, e[None]], 0)
                   for y, m, e in zip(y0, middle_states, found.y))
    active = tf.concat([[True], middle_active, [True]], 0)
    positions = tf.constant([0, slots + 1], tf.int32)
    if joint:
        return Anchors(tau=anchor_tau[0], states=tuple(s[:, 0] for s in states),
                       positions=positions, active=active, last_dt=found.last_dt[0])
    return Anchors(tau=anchor_tau, states=states,
                   positions=tf.broadcast_to(positions, [batch, 2]), active=active,
                   last_dt=tf.reduce_min(found.last_dt))


def _used_mask(used, states):
    """`used` (batch, K) as a mask broadcasting against records `(K, batch, ...)`."""
    mask = tf.transpose(used)
    return tf.reshape(mask, tf.concat([tf.shape(mask), tf.ones([states.shape.rank - 2], tf.int32)], 0))


def _batch_of_one(fn):
    """`fn(tau, leaves)` of a joint problem as a per-sample one of batch 1."""
    def wrapped(tau, leaves):
        out = fn(tau[0], tuple(y[0] for y in leaves))
        return tf.nest.map_structure(lambda v: v[None], out)
    return wrapped


def _normalized_event_fn(event_fn, structure, sign, per_sample):
    """`event_fn(tau, leaves) -> (k,)` per problem (`(batch, k)` per sample),
    in the solve dtype; the shape is checked once, while tracing."""
    def wrapped(tau, leaves):
        t = tau if _inputs.is_plus_one(sign) else tau * sign
        with tf.name_scope("event_fn"):
            g = tf.convert_to_tensor(event_fn(t, tf.nest.pack_sequence_as(structure, list(leaves))))
        return tf.cast(as_event_matrix(g, leaves[0], per_sample), leaves[0].dtype)
    return wrapped


def as_event_matrix(g, first_leaf, per_sample):
    """`event_fn`'s result `g` as `(k,)` (a joint problem) or `(batch, k)`
    (per sample); a clear error for any other shape."""
    rank = g.shape.rank
    batch = first_leaf.shape[0] if per_sample else None
    ok_rank = rank in ((1, 2) if per_sample else (0, 1))
    ok_batch = not per_sample or batch is None or g.shape[0] is None or g.shape[0] == batch
    if not (ok_rank and ok_batch):
        expected = (f"(batch,) or (batch, k) with batch = {batch}" if per_sample
                    else "a scalar or a vector (k,) of event values")
        raise ValueError(f"event_fn(t, y) must return {expected}. Received: shape {g.shape}")
    if per_sample:
        return g if rank == 2 else g[:, None]
    return tf.reshape(g, [-1])
