"""Backprop through the solver loop by replaying each attempted step.

A solve is `n` applications of the loop body to the loop state, so its
gradient is `n` vector-Jacobian products of the body, last attempt first.
TensorFlow gets them by keeping every intermediate of every iteration (XLA:
for all `max_num_steps` iterations, taken or not), and a gradient taken
outside an XLA-compiled function cannot reach into its loop at all. Here
the forward loop keeps only the loop state before each attempt (time,
state, derivative, step size, counters: the output buffers are left out,
since the body only writes into them and its gradient does not depend on
their values), and the backward pass is a loop that runs each attempt
again under a tape and takes its vector-Jacobian product. Both are plain
forward loops, so each can be one XLA function; the price is one extra
evaluation of each attempt.

Memory is bounded by `max_num_steps`, not the attempts' intermediates:
the forward keeps the states before the first `chunk` attempts
(`recompute.chunk_size`) and, after those, only the state at the start of
each further chunk; the backward pass runs such a chunk forward again to
collect its states before replaying it. Most solves end within the first
chunk and run nothing forward twice.

The gradient is the loop's gradient (the same operations are
differentiated; step sizes carry none either way, `step_control.py`), to
round-off.
"""

from typing import NamedTuple

import tensorflow as tf

from keras_node.solvers import recompute


class Residuals(NamedTuple):
    """What the forward keeps for the backward pass (nests of the loop
    state without its output buffers, stacked along a new leading axis).

    first: the states before attempts 0 .. chunk - 1.
    starts: the state at the start of chunk 1, 2, ...
    attempts: int32, the number of attempts the solve made.
    """

    first: object
    starts: object
    attempts: tf.Tensor


def _without_outputs(state):
    return state._replace(ys=())


def _stacked(state, size):
    return tf.nest.map_structure(
        lambda x: tf.zeros(tf.concat([[size], tf.shape(x)], 0), x.dtype), _without_outputs(state))


def _put(stack, index, state):
    return tf.nest.map_structure(lambda s, x: tf.tensor_scatter_nd_update(s, [[index]], [x]),
                                 stack, _without_outputs(state))


def _take(stack, index, outputs):
    """The state stored at `index` of `stack`, with output buffers `outputs`."""
    return tf.nest.map_structure(lambda s: tf.gather(s, index), stack)._replace(ys=outputs)


def _record_chunk(parts, state, size):
    """Run up to `size` attempts from `state`: `(final state, the states
    before each attempt (stacked, `size` slots), the number of attempts)`."""

    def body(s, stack, i):
        return parts.body(s)[0], _put(stack, i, s), i + 1

    return tf.while_loop(lambda s, stack, i: parts.keep_going(s), body,
                         (state, _stacked(state, size), tf.constant(0, tf.int32)),
                         maximum_iterations=size)


def forward(parts, y0, max_num_steps):
    """The solve of `parts` (`integrate.LoopParts`, one attempt per
    iteration, output buffers as tensors) from `y0`: `(final loop state,
    Residuals)`. Carries no gradient itself: `backward` is its gradient."""
    size = recompute.chunk_size(max_num_steps)
    state, first, attempts = _record_chunk(parts, parts.initial(y0), size)
    num_starts = max(1, -(-max_num_steps // size) - 1)

    # A loop over chunks writes each chunk's start once (a write into the
    # stack of starts on every attempt made the T = 1 benchmark 40% slower).
    def chunk(s, starts, k):
        starts = _put(starts, k, s)
        s = tf.while_loop(parts.keep_going, parts.body, (s,), maximum_iterations=size)[0]
        return s, starts, k + 1

    state, starts, _ = tf.while_loop(
        lambda s, starts, k: parts.keep_going(s), chunk,
        (state, _stacked(state, num_starts), tf.constant(0, tf.int32)),
        maximum_iterations=num_starts)
    # Each attempt adds one accepted step or one rejection.
    return state, Residuals(first, starts, state.num_steps + state.num_rejected)


def backward(parts, y0, residuals, output_cotangents, sources, max_num_steps):
    """The gradient of `forward`'s output buffers: `(gradients of y0's
    leaves, gradients of `sources`)` for the buffers' cotangents
    `output_cotangents` (one per leaf). `sources`: tensors and variables the
    loop reads (output times, the dynamics' variables) that get gradients;
    `parts` must be built from the same tensors as `forward`'s."""
    size = recompute.chunk_size(max_num_steps)
    y0, sources = tuple(y0), list(sources)
    template = parts.initial(y0)
    zero_outputs = tuple(tf.zeros_like(b) for b in template.ys)
    floats = _float_positions(template)

    def attempt_vjp(state, cotangent):
        leaves = [tf.identity(x) for x in tf.nest.flatten(state)]
        return _vjp(lambda: parts.body(tf.nest.pack_sequence_as(state, leaves))[0],
                    [leaves[i] for i in floats], sources, floats, cotangent)

    def stack_of(k):
        """Chunk k's states before each attempt, and how many: kept by the
        forward for chunk 0, run forward again from its start for the rest."""
        def again():
            _, stack, count = _record_chunk(parts, _take(residuals.starts, k - 1, zero_outputs),
                                            size)
            return stack, count

        return tf.cond(k > 0, again, lambda: (residuals.first, tf.minimum(residuals.attempts, size)))

    def chunk_back(k, cotangent, totals):
        stack, count = stack_of(k)

        def one(i, cotangent, totals):
            cotangent, grads = attempt_vjp(_take(stack, i, zero_outputs), cotangent)
            return i - 1, cotangent, [a + _dense(g) for a, g in zip(totals, grads)]

        _, cotangent, totals = tf.while_loop(lambda i, c, g: i >= 0, one,
                                             (count - 1, cotangent, totals),
                                             maximum_iterations=size)
        return k - 1, cotangent, totals

    totals = [tf.zeros_like(tf.convert_to_tensor(s)) for s in sources]
    chunks_taken = tf.maximum(-(-residuals.attempts // size), 1)
    _, cotangent, totals = tf.while_loop(
        lambda k, c, g: k >= 0, chunk_back,
        (chunks_taken - 1, _final_cotangent(template, floats, output_cotangents), totals),
        maximum_iterations=-(-max_num_steps // size))
    # Through the state before the first attempt (f0, first step size).
    grads_y0, grads = _vjp(lambda: parts.initial(y0), list(y0), sources, floats, cotangent)
    return grads_y0, [a + _dense(g) for a, g in zip(totals, grads)]


def _vjp(function, inputs, sources, floats, cotangent):
    """`(gradients of inputs, gradients of sources)` of the floating leaves
    (`floats`: their positions) of the loop state `function()` returns, for
    their `cotangent`."""
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(inputs)
        tape.watch(sources)
        flat = tf.nest.flatten(function())
    grads = tape.gradient([flat[i] for i in floats], list(inputs) + sources,
                          output_gradients=cotangent,
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return grads[:len(inputs)], grads[len(inputs):]


def _final_cotangent(template, floats, output_cotangents):
    """The cotangent of the final loop state's floating leaves: the outputs'
    cotangents on the output buffers, zero elsewhere."""
    flat = tf.nest.flatten(template)
    cotangent = [tf.zeros_like(flat[i]) for i in floats]
    buffers = [i for i, x in enumerate(flat) if any(x is b for b in template.ys)]
    for slot, value in zip(buffers, output_cotangents):
        cotangent[floats.index(slot)] = tf.cast(value, flat[slot].dtype)
    return cotangent


def _dense(gradient):
    return tf.convert_to_tensor(gradient)


def _float_positions(state):
    """Indices of the floating leaves of the flattened loop state."""
    return [i for i, x in enumerate(tf.nest.flatten(state)) if x.dtype.is_floating]
