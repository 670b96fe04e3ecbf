"""Solver status codes, their messages, and the single place failures raise.

A failed solve is data first (an int32 `status` in the loop state), so the
loop stays a pure TensorFlow computation that works under XLA; the edge of the
public function turns a non-zero status into an error. Inside XLA, where
TensorFlow cannot raise (assert ops are dropped), outputs are filled with NaN
instead: never a plausible number.
"""

import tensorflow as tf

from keras_node import _nest
# Private, because no public API says whether a graph is being compiled by
# XLA; the solvers ask it to avoid nesting an XLA function inside an XLA
# compile and to pick the loop layout XLA can differentiate (loop_bodies).
from tensorflow.python.framework import ops
from tensorflow.python.ops import control_flow_util

SUCCESS = 0
MAX_STEPS = 1
STEP_UNDERFLOW = 2
NON_FINITE = 3
BAD_TIMES = 4
NON_FINITE_INPUT = 5

MESSAGES = {
    MAX_STEPS: (
        "the solve needed more than max_num_steps={max_num_steps} attempted steps. "
        "The dynamics may be stiff or blowing up; raise max_num_steps, loosen "
        "rtol/atol, or regularise the dynamics"
    ),
    STEP_UNDERFLOW: (
        "the step size underflowed (t + dt == t): the solution is probably "
        "blowing up in finite time or the problem is stiff. Check the dynamics, "
        "loosen rtol/atol, or try float64"
    ),
    NON_FINITE: (
        "the state or the dynamics became non-finite (NaN or inf). Check the "
        "dynamics for overflow, division by zero or exploding weights; a smaller "
        "learning rate or gradient clipping often helps during training"
    ),
    BAD_TIMES: "the time values t are not strictly monotonic (increasing or decreasing)",
    NON_FINITE_INPUT: (
        "the initial state contains NaN or inf: the input is bad, not the dynamics. "
        "Drop or impute those samples; with per-sample steps (batch_axis=0, "
        "ODELayer(per_sample_steps=True)) only they fail and the error names them"
    ),
}


def initial(y0, f0, batched=False):
    """The status before the first step: NON_FINITE_INPUT if `y0` (flat
    leaves) holds NaN or inf, NON_FINITE if the dynamics `f0` at `y0` do,
    else SUCCESS; a scalar, or per sample (shape `(batch,)`) when `batched`."""
    return tf.where(_nest.all_finite(y0, batched=batched),
                    tf.where(_nest.all_finite(f0, batched=batched), SUCCESS, NON_FINITE),
                    NON_FINITE_INPUT)


def in_xla_context():
    """True while tracing code that XLA will compile (`jit_compile=True`)."""
    if tf.executing_eagerly():
        return False
    return control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph())


def guard(outputs, status, t_reached, where, max_num_steps, sample_axis=1):
    """Return `outputs` if `status` is SUCCESS, else fail loudly.

    Eagerly: raise `tf.errors.InvalidArgumentError` naming the cause and the
    time reached. In a graph: an assertion naming the cause, which raises
    that error when the graph runs, and every floating output replaced with
    NaN, which is what remains inside XLA (where assertions are dropped):
    never a plausible number. `outputs` is a flat list of tensors; `where` names the
    caller (e.g. "odeint", "odeint_adjoint backward pass").

    A per-sample solve has a status and time reached per sample (shape
    `(batch,)`): the error names the first failed sample, and only the
    failed samples' entries (along `sample_axis` of each output) are NaN.
    """
    if status.shape.rank == 1:
        return _guard_per_sample(outputs, status, t_reached, where, max_num_steps, sample_axis)
    if tf.executing_eagerly():
        code = int(status)
        if code != SUCCESS:
            raise tf.errors.InvalidArgumentError(None, None, _message(code, where, max_num_steps)
                                                 + f". Time reached: t = {float(t_reached):.6g}")
        return list(outputs)
    failed = tf.not_equal(status, SUCCESS)
    checks = _checked(status, lambda code: [
        _message(code, where, max_num_steps) + ". Time reached: t =", t_reached])
    with tf.control_dependencies(checks):
        return [
            tf.where(failed, tf.constant(float("nan"), x.dtype), x) if x.dtype.is_floating
            else tf.identity(x)
            for x in outputs
        ]


def _guard_per_sample(outputs, status, t_reached, where, max_num_steps, sample_axis):
    failed = tf.not_equal(status, SUCCESS)
    if tf.executing_eagerly():
        failed_indices = [int(i) for i in tf.where(failed)[:, 0]]
        if failed_indices:
            first = failed_indices[0]
            raise tf.errors.InvalidArgumentError(None, None, _sample_message(
                int(status[first]), where, max_num_steps, first, len(failed_indices))
                + f". Time reached by sample {first}: t = {float(t_reached[first]):.6g}")
        return list(outputs)
    first = tf.argmax(tf.cast(failed, tf.float32), output_type=tf.int32)  # GPU: float ArgMax
    checks = _checked(tf.gather(status, first), lambda code: [
        _sample_message(code, where, max_num_steps, None, None) + ". First failed sample:",
        first, "time reached:", tf.gather(t_reached, first)])
    with tf.control_dependencies(checks):
        return [_nan_where(x, failed, sample_axis) for x in outputs]


def _checked(code, data_of):
    """Control dependencies asserting `code == SUCCESS` (an int32 scalar)
    with the message data `data_of(code)` for the failure's own code; none
    inside XLA, which drops assertions. One conditional on the status, with
    an assertion per cause inside it, rather than five conditionals: each
    runs on every call (~10 us apiece, a third of a small solve's
    overhead). A plain `tf.cond` because converters (TFLite) take it,
    unlike `tf.switch_case`."""
    if in_xla_context():
        return []

    def report():
        with tf.control_dependencies([
                tf.debugging.Assert(tf.not_equal(code, known), data_of(known), summarize=1)
                for known in MESSAGES]):
            return tf.constant(True)

    return [tf.cond(tf.equal(code, SUCCESS), lambda: tf.constant(True), report)]


def _nan_where(x, failed, sample_axis):
    """`x` with NaN in the entries of the failed samples (along `sample_axis`)."""
    if not x.dtype.is_floating:
        return tf.identity(x)
    shape = [1] * x.shape.rank
    shape[sample_axis] = -1
    return tf.where(tf.reshape(failed, shape), tf.constant(float("nan"), x.dtype), x)


def _sample_message(code, where, max_num_steps, index, count):
    who = "a sample" if index is None else f"sample {index}" + (f" (and {count - 1} more)" if count > 1 else "")
    return f"keras_node {where} failed for {who}: " + MESSAGES[code].format(max_num_steps=max_num_steps)


def _message(code, where, max_num_steps):
    return f"keras_node {where} failed: " + MESSAGES[code].format(max_num_steps=max_num_steps)
