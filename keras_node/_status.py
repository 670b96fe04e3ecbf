"""Solver status codes, their messages, and the single place failures raise.

A failed solve is data first (an int32 `status` in the loop state), so the
loop stays a pure TensorFlow computation that works under XLA; the edge of the
public function turns a non-zero status into an error. Inside XLA, where
TensorFlow cannot raise (assert ops are dropped), outputs are filled with NaN
instead: never a plausible number.
"""

import tensorflow as tf
from tensorflow.python.framework import ops
from tensorflow.python.ops import control_flow_util

SUCCESS = 0
MAX_STEPS = 1
STEP_UNDERFLOW = 2
NON_FINITE = 3
BAD_TIMES = 4

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
}


def in_xla_context():
    """True while tracing code that XLA will compile (`jit_compile=True`)."""
    if tf.executing_eagerly():
        return False
    return control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph())


def guard(outputs, status, t_reached, where, max_num_steps):
    """Return `outputs` if `status` is SUCCESS, else fail loudly.

    Outside XLA: assertions that raise `tf.errors.InvalidArgumentError` naming
    the cause and the time reached. Inside XLA: every floating output is
    replaced with NaN. `outputs` is a flat list of tensors; `where` names the
    caller (e.g. "odeint", "odeint_adjoint backward pass").
    """
    if tf.executing_eagerly():
        code = int(status)
        if code != SUCCESS:
            raise tf.errors.InvalidArgumentError(None, None, _message(code, where, max_num_steps)
                                                 + f". Time reached: t = {float(t_reached):.6g}")
        return list(outputs)
    failed = tf.not_equal(status, SUCCESS)
    if in_xla_context():
        return [
            tf.where(failed, tf.constant(float("nan"), x.dtype), x) if x.dtype.is_floating else x
            for x in outputs
        ]
    checks = []
    for code in MESSAGES:
        text = _message(code, where, max_num_steps)
        checks.append(
            tf.debugging.Assert(
                tf.not_equal(status, code), [text + ". Time reached: t =", t_reached], summarize=1
            )
        )
    with tf.control_dependencies(checks):
        return [tf.identity(x) for x in outputs]


def _message(code, where, max_num_steps):
    return f"keras_node {where} failed: " + MESSAGES[code].format(max_num_steps=max_num_steps)
