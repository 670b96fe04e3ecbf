"""Backprop through the solver loop with bounded memory under XLA.

XLA differentiates a bounded `tf.while_loop` by stacking every intermediate
its gradient needs for all `maximum_iterations` iterations, taken or not:
for the solver loop, `max_num_steps` copies of each stage of the state
(5.4 GB for the 256 x 16 benchmark MLP, benchmarks/RESULTS.md 2a). So when
XLA may differentiate the loop, the solver loops that `replay.py` does not
cover (`integrate` for rodas4, the per-sample loop of `per_sample.py`,
`odeint_event`'s search) run their first `chunk_size`
(about sqrt(max_num_steps) / 2) attempts as a plain loop, whose
intermediates XLA keeps, and the rest as an outer loop over chunks of that
many attempts, each under a custom gradient that keeps only its input
state: the backward pass runs the chunk again under a tape and
differentiates that, one chunk at a time. Most solves end within the first
chunk and recompute nothing (RESULTS.md §13: 0.80-0.97x diffrax's backprop,
against 1.17x when every chunk was recomputed).
Memory: about 2 sqrt(max_num_steps) loop states plus two chunks'
intermediates; cost: chunks after the first run forward twice. The gradient
differentiates the same operations, so it is the plain loop's gradient up
to round-off (step sizes carry none either way, `step_control.py`).

The dynamics' variables enter each recomputed chunk as values (`keras.StatelessScope`
maps each Keras variable to its value read once before the loop): the
recomputation must not read a variable itself, because TensorFlow's
while-loop gradient cannot capture a variable's handle into the gradient
graph ("... is in list of internal_captures but not in
internal_capture_to_output", TF 2.21). So chunking needs to know every
variable the dynamics read, and that they are Keras variables
(`chunkable_variables`); other dynamics keep the plain loop.
"""

import math

import keras
import tensorflow as tf
# Private, as in odeint.py: whether a tape may differentiate the loop.
from tensorflow.python.eager import record

from keras_node import _status


def chunk_size(max_num_steps):
    """Attempts per chunk: sqrt(max_num_steps / 4), rounded up. XLA
    allocates (and zeroes) both stacks at their full size on every call:
    the loop states of `max_num_steps / size` chunks, and `size` attempts'
    intermediates, which are several states each (the stages). Measured on
    the T = 1 benchmark MLP at the default 10000 (RESULTS.md §12): sizes
    32-64 fastest, 100 (sqrt) ~30% slower, 16 slower."""
    quarter = -(-max_num_steps // 4)
    return max(1, math.isqrt(quarter - 1) + 1)


def chunkable_variables(user_func, func, t0, y0):
    """The Keras variables `func(t0, y0)` reads, as a tuple, when the owner
    of `user_func` (a Keras layer, or the layer a bound method belongs to)
    holds them all and `func` (the solver's wrapping of `user_func`) reads
    no other variable; else None. Traces `func` once (in the graph being
    built: nothing runs, unused ops are pruned)."""
    owner = user_func if isinstance(user_func, keras.layers.Layer) else getattr(user_func, "__self__", None)
    if not isinstance(owner, keras.layers.Layer) or not owner.built:
        return None  # (an unbuilt layer would create its variables in the probe)
    variables = tuple(owner.variables)
    mapping = [(v, tf.convert_to_tensor(v)) for v in variables]
    with tf.GradientTape(watch_accessed_variables=True) as tape:
        with keras.StatelessScope(state_mapping=mapping):
            func(t0, y0)
    return None if tape.watched_variables() else variables


def loop_variables(user_func, func, t0, y0):
    """The `variables` for `solver_loop` (`integrate.Controls.variables`):
    `chunkable_variables` while tracing for XLA with a tape that may
    differentiate the loop, else None (the plain loop)."""
    if _status.in_xla_context() and record.could_possibly_record():
        return chunkable_variables(user_func, func, t0, y0)
    return None


def solver_loop(keep_going, body, state, max_num_steps, variables=None):
    """The solver's `tf.while_loop` over up to `max_num_steps` iterations:
    checkpointed (`checkpointed_loop`) when `variables` is given (callers
    take them from `loop_variables`), else plain. Returns the final state."""
    if variables is not None:
        return checkpointed_loop(keep_going, body, state, max_num_steps, variables)
    return tf.while_loop(keep_going, body, (state,), maximum_iterations=max_num_steps)[0]


def checkpointed_loop(keep_going, body, state, max_num_steps, variables):
    """`tf.while_loop(keep_going, body, (state,))` for up to `max_num_steps`
    iterations, with bounded gradient memory: the first `chunk_size`
    iterations are a plain loop (XLA stacks their intermediates, which most
    solves need no more than: no recomputation), the rest run in chunks
    whose gradient is recomputed. `variables`: every variable `body` reads
    (Keras variables). Returns the final state."""
    size = chunk_size(max_num_steps)
    state = tf.while_loop(keep_going, body, (state,), maximum_iterations=size)[0]
    values = [tf.convert_to_tensor(v) for v in variables]  # read once, outside the loop

    def run_flat(template, *leaves):
        split = len(leaves) - len(values)
        chunk_state = tf.nest.pack_sequence_as(template, list(leaves[:split]))
        mapping = list(zip(variables, leaves[split:]))
        with keras.StatelessScope(state_mapping=mapping):
            chunk_state = tf.while_loop(keep_going, body, (chunk_state,), maximum_iterations=size)[0]
        return tf.nest.flatten(chunk_state)

    def chunk_body(chunk_state):
        leaves = _recomputed(lambda *leaves: run_flat(chunk_state, *leaves),
                             tf.nest.flatten(chunk_state) + values)
        return (tf.nest.pack_sequence_as(chunk_state, leaves),)

    remaining_chunks = -(-max_num_steps // size) - 1
    return tf.while_loop(keep_going, chunk_body, (state,), maximum_iterations=remaining_chunks)[0]


def _recomputed(function, inputs):
    """`function(*inputs)` (a list of tensors), whose gradient runs it again
    under a tape rather than keeping its intermediates. Integer and bool
    tensors (counters, flags) get no gradient."""

    @tf.custom_gradient
    def forward(*leaves):
        outputs = function(*leaves)

        def grad_fn(*upstream):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                again = [tf.identity(leaf) for leaf in leaves]
                floats = [leaf for leaf in again if leaf.dtype.is_floating]
                tape.watch(floats)
                recomputed = function(*again)
            pairs = [(out, up) for out, up in zip(recomputed, upstream)
                     if out.dtype.is_floating and up is not None]
            grads = iter(tape.gradient([out for out, _ in pairs], floats,
                                       output_gradients=[up for _, up in pairs],
                                       unconnected_gradients=tf.UnconnectedGradients.ZERO))
            return [next(grads) if leaf.dtype.is_floating else None for leaf in again]

        return outputs, grad_fn

    return forward(*inputs)
