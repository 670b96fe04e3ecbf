"""A fixed-size record of accepted steps for solves whose length is unknown
in advance (the event search), for the adjoint to re-anchor at.

The adjoint's usual checkpoints (`adjoint/checkpoints.py`) are times spread
evenly over the known output span. An event search does not know where it
will stop, so it records the state after every `stride`-th accepted step
instead, starting with the caller's stride (the adjoint's
`STEPS_PER_ANCHOR`). When the K slots are
full, every other record is dropped and the stride doubles, so the records
stay evenly spread over the steps taken: between K/2 and K of them for a
long solve, at most one per first stride of steps, in K states of memory.
Per sample: every sample of a per-sample loop (`(batch,)` counts) keeps its
own records.
"""

from typing import NamedTuple

import tensorflow as tf

from keras_node import _nest


class Records(NamedTuple):
    """Up to K records per sample, oldest first; slots from `count` on are
    unused."""

    tau: tf.Tensor  # (batch, K) solver time of each record
    states: tuple  # per leaf, (K, batch, ...)
    count: tf.Tensor  # (batch,) int32 slots in use
    stride: tf.Tensor  # (batch,) int32 accepted steps between records


def empty(t0, y0, slots, stride):
    """K = `slots` empty records per sample (`t0` `(batch,)`, `y0` leaves
    `(batch, ...)`), the first one due after `stride` accepted steps."""
    batch = tf.shape(t0)[0]
    return Records(
        tau=tf.zeros(tf.stack([batch, slots]), t0.dtype),
        states=tuple(tf.zeros(tf.concat([[slots], tf.shape(y)], 0), y.dtype) for y in y0),
        count=tf.zeros([batch], tf.int32),
        stride=tf.fill([batch], tf.constant(stride, tf.int32)),
    )


def add(records, due, num_steps, t, y):
    """Record `(t, y)` for the samples where `due` ((batch,) bool: an
    accepted step to keep) and `num_steps` (accepted steps so far) is a
    multiple of the sample's stride; then thin the full ones."""
    write = due & tf.equal(tf.math.floormod(num_steps, records.stride), 0)
    # Most steps record nothing: skip the buffer updates (copies, outside XLA).
    return tf.cond(tf.reduce_any(write), lambda: _written(records, write, t, y), lambda: records)


def _written(records, write, t, y):
    slots = records.tau.shape[1]
    rows = tf.range(tf.shape(t)[0])
    slot = tf.minimum(records.count, slots - 1)
    indices = tf.stack([rows, slot], axis=1)
    tau = tf.tensor_scatter_nd_update(
        records.tau, indices, tf.where(write, t, tf.gather_nd(records.tau, indices)))
    state_indices = tf.reverse(indices, axis=[1])  # states are (K, batch, ...)
    states = tuple(
        tf.tensor_scatter_nd_update(s, state_indices, tf.where(
            _nest.per_sample(write, value), value, tf.gather_nd(s, state_indices)))
        for s, value in zip(records.states, y))
    records = records._replace(tau=tau, states=states,
                               count=records.count + tf.cast(write, tf.int32))
    full = tf.equal(records.count, slots)
    return tf.cond(tf.reduce_any(full), lambda: _thinned(records, full), lambda: records)


def _thinned(records, full):
    """Keep slots 1, 3, 5, ... of the full samples (the records at multiples
    of twice the stride), moved to the front; double their stride."""
    slots = records.tau.shape[1]
    kept = tf.minimum(2 * tf.range(slots) + 1, slots - 1)
    source = tf.where(full[:, None], kept[None, :], tf.range(slots)[None, :])  # (batch, K)
    tau = tf.gather(records.tau, source, batch_dims=1)
    batch_rows = tf.broadcast_to(tf.range(tf.shape(source)[0])[None, :], tf.shape(tf.transpose(source)))
    state_indices = tf.stack([tf.transpose(source), batch_rows], axis=-1)  # (K, batch, 2)
    states = tuple(tf.gather_nd(s, state_indices) for s in records.states)
    return Records(tau=tau, states=states,
                   count=tf.where(full, slots // 2, records.count),
                   stride=tf.where(full, 2 * records.stride, records.stride))


def in_use(records):
    """(batch, K) bool: the slots holding a record."""
    return tf.range(records.tau.shape[1])[None, :] < records.count[:, None]
