"""Every bad input gets a clear answer (issue 8; API.md "Errors", STYLE.md B12).

One table, `CASES`, of invalid arguments to `odeint`, `odeint_adjoint`,
`ODELayer` (construction, build and call), `dynamics.MLP`/`ConvBlock` and
`callbacks.NFELogger`. Each case names the exception type it must raise
(`ValueError` or `TypeError`) and regular expressions its message must all
match: the argument's name, "Received" (STYLE.md B12), and what was received
(the offending value as the user wrote it, or its type, dtype or shape).
Nothing here solves an ODE: every case fails during argument checking,
before any tracing, so the table is cheap.

`test_unregistered_dynamics_class_at_load_time` covers the one failure that
needs a file: a `.keras` archive naming a dynamics class that was never
registered.

Every message is collected; `test_zz_message_catalogue` (last in the file)
writes "case -> exception type -> message" to `bad_input_messages.txt` under
pytest's base temporary directory and prints it (`pytest -s` shows it).
"""

import dataclasses
import re
from typing import Callable

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_node
from keras_node.callbacks import NFELogger
from keras_node.dynamics import MLP, ConvBlock

Y0 = tf.constant([1.0, 2.0])
T = [0.0, 1.0]
H0 = tf.ones((2, 3))  # an ODELayer input: batch 2, 3 features

MESSAGES = {}  # case id -> (exception type name, message), filled as the cases run

# "Received: name=value" (STYLE.md B12); structure messages say "...; received: ...".
RECEIVED = r"(?i:received)"
METHODS_LISTED = [re.escape(repr(m)) for m in keras_node.METHODS]


def decay(t, y):
    return tf.nest.map_structure(lambda leaf: -leaf, y)


def _odeint(*args, **kwargs):
    return lambda: keras_node.odeint(*args, **kwargs)


def _adjoint(*args, **kwargs):
    return lambda: keras_node.odeint_adjoint(*args, **kwargs)


def _layer(**kwargs):
    return lambda: keras_node.ODELayer(MLP(units=(4,)), **kwargs)


def _build(make_dynamics, input_shape):
    return lambda: keras_node.ODELayer(make_dynamics(), jit_compile=False).build(input_shape)


def _call(inputs, **call_kwargs):
    def call():
        layer = keras_node.ODELayer(MLP(units=(4,)), return_sequences=True, jit_compile=False)
        return layer(inputs() if callable(inputs) else inputs, **call_kwargs)

    return call


def _symbolic_call(t_shape):
    def call():
        layer = keras_node.ODELayer(MLP(units=(4,)), return_sequences=True, jit_compile=False)
        return layer(keras.Input((3,)), t=keras.Input(batch_shape=t_shape))

    return call


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    call: Callable
    error: type
    patterns: tuple  # regexes the message must all match


# Dynamics layers with the wrong output *structure* (a shape mismatch is the
# Dense/Conv2D cases below).
class _TupleField(keras.layers.Layer):
    def call(self, h):
        return (h, h)


class _DictField(keras.layers.Layer):
    def call(self, h):
        return {"dh": h}


CASES = [
    # ---------------------------------------------------------------- odeint: func
    Case("odeint-func-not-callable", _odeint(3, Y0, T), TypeError, (r"\bfunc\b", RECEIVED, r"\bint\b|\b3\b")),
    Case("odeint-func-none", _odeint(None, Y0, T), TypeError, (r"\bfunc\b", RECEIVED, "None")),
    Case("odeint-func-wrong-shape", _odeint(lambda t, y: tf.concat([y, y], 0), Y0, T), ValueError,
         (r"func", r"\(2,\)", r"\(4,\)", RECEIVED)),
    Case("odeint-func-wrong-structure", _odeint(lambda t, y: (y, y), Y0, T), ValueError,
         (r"func", r"structure", RECEIVED)),
    Case("odeint-func-missing-key", _odeint(lambda t, y: {"a": y["a"]}, {"a": Y0, "b": Y0}, T), ValueError,
         (r"func", r"structure", RECEIVED)),
    Case("odeint-func-wrong-dtype", _odeint(lambda t, y: tf.cast(y, tf.float64), Y0, T), ValueError,
         (r"func", "float32", "float64", RECEIVED)),
    Case("odeint-func-returns-none", _odeint(lambda t, y: None, Y0, T), ValueError,
         (r"func", RECEIVED, "None")),
    # ---------------------------------------------------------------- odeint: y0
    Case("odeint-y0-int32", _odeint(decay, tf.constant([1, 2]), T), TypeError,
         (r"\by0\b", "int32", RECEIVED, "float")),
    Case("odeint-y0-int64-numpy", _odeint(decay, np.array([1, 2]), T), TypeError,
         (r"\by0\b", "int64", RECEIVED)),
    Case("odeint-y0-int-leaf", _odeint(decay, {"a": Y0, "b": tf.constant([1])}, T), TypeError,
         (r"\by0\b", "int32", RECEIVED)),
    Case("odeint-y0-bool", _odeint(decay, tf.constant([True]), T), TypeError, (r"\by0\b", "bool", RECEIVED)),
    Case("odeint-y0-complex", _odeint(decay, tf.constant([1j]), T), TypeError, (r"\by0\b", "complex", RECEIVED)),
    Case("odeint-y0-string", _odeint(decay, "abc", T), TypeError, (r"\by0\b", "string", RECEIVED)),
    Case("odeint-y0-none", _odeint(decay, None, T), TypeError, (r"\by0\b", "None", RECEIVED)),
    Case("odeint-y0-empty-dict", _odeint(decay, {}, T), ValueError, (r"\by0\b", r"\{\}", RECEIVED)),
    Case("odeint-y0-mixed-dtypes", _odeint(decay, {"a": Y0, "b": tf.constant([1.0], tf.float64)}, T),
         TypeError, (r"\by0\b", "float32", "float64", RECEIVED)),
    # ---------------------------------------------------------------- odeint: t
    Case("odeint-t-2d", _odeint(decay, Y0, [[0.0, 1.0]]), ValueError, (r"\bt\b", r"\(1, 2\)", "1-D", RECEIVED)),
    Case("odeint-t-scalar", _odeint(decay, Y0, 1.0), ValueError, (r"\bt\b", r"\(\)", "1-D", RECEIVED)),
    Case("odeint-t-none", _odeint(decay, Y0, None), (ValueError, TypeError), (r"\bt\b", RECEIVED)),
    Case("odeint-t-one-value", _odeint(decay, Y0, [0.0]), ValueError, (r"\bt\b", r"\b2\b", RECEIVED, r"0\.")),
    Case("odeint-t-empty", _odeint(decay, Y0, []), ValueError, (r"\bt\b", r"\b2\b", RECEIVED, r"\[\]")),
    Case("odeint-t-nan", _odeint(decay, Y0, [0.0, np.nan]), ValueError, (r"\bt\b", "finite", "nan", RECEIVED)),
    Case("odeint-t-inf", _odeint(decay, Y0, [0.0, np.inf]), ValueError, (r"\bt\b", "finite", "inf", RECEIVED)),
    Case("odeint-t-not-monotonic-list", _odeint(decay, Y0, [0.0, 1.0, 0.5]), ValueError,
         (r"\bt\b", "monoton|increasing", r"0\.5", RECEIVED)),
    Case("odeint-t-not-monotonic-numpy", _odeint(decay, Y0, np.array([1.0, 0.0, 0.5])), ValueError,
         (r"\bt\b", "monoton|increasing", r"0\.5", RECEIVED)),
    Case("odeint-t-not-monotonic-tensor", _odeint(decay, Y0, tf.constant([0.0, 1.0, 0.5])), ValueError,
         (r"\bt\b", "monoton|increasing", r"0\.5", RECEIVED)),
    Case("odeint-t-repeated", _odeint(decay, Y0, [0.0, 0.5, 0.5, 1.0]), ValueError,
         (r"\bt\b", "repeated|strictly", RECEIVED)),
    Case("odeint-t-strings", _odeint(decay, Y0, ["a", "b"]), TypeError, (r"\bt\b", RECEIVED, "'a'")),
    Case("odeint-t-complex", _odeint(decay, Y0, tf.constant([0j, 1j])), TypeError, (r"\bt\b", "complex", RECEIVED)),
    # ---------------------------------------------------------------- odeint: tolerances
    Case("odeint-rtol-negative", _odeint(decay, Y0, T, rtol=-1e-3), ValueError, (r"\brtol\b", r"-0\.001", RECEIVED)),
    Case("odeint-atol-negative", _odeint(decay, Y0, T, atol=-1e-6), ValueError, (r"\batol\b", r"-1e-06", RECEIVED)),
    Case("odeint-rtol-negative-component", _odeint(decay, Y0, T, rtol=np.array([1e-3, -1e-3])), ValueError,
         (r"\brtol\b", r"-0\.001", RECEIVED)),
    Case("odeint-atol-negative-leaf", _odeint(decay, {"a": Y0, "b": Y0}, T, atol={"a": 1e-6, "b": -1.0}),
         ValueError, (r"\batol\b", r"-1\.0", RECEIVED)),
    Case("odeint-rtol-nan", _odeint(decay, Y0, T, rtol=np.nan), ValueError, (r"\brtol\b", "nan", RECEIVED)),
    Case("odeint-atol-inf", _odeint(decay, Y0, T, atol=np.inf), ValueError, (r"\batol\b", "inf", RECEIVED)),
    Case("odeint-rtol-string", _odeint(decay, Y0, T, rtol="tight"), TypeError, (r"\brtol\b", r"\bstr\b", RECEIVED)),
    Case("odeint-rtol-none", _odeint(decay, Y0, T, rtol=None), TypeError, (r"\brtol\b", "None", RECEIVED)),
    Case("odeint-rtol-wrong-shape", _odeint(decay, Y0, T, rtol=np.full(3, 1e-3)), ValueError,
         (r"\brtol\b", r"\(3,\)", r"\(2,\)", RECEIVED)),
    Case("odeint-rtol-higher-rank", _odeint(decay, Y0, T, rtol=np.full((1, 2), 1e-3)), ValueError,
         (r"\brtol\b", r"\(1, 2\)", RECEIVED)),
    Case("odeint-rtol-structure-wrong-keys", _odeint(decay, {"a": Y0}, T, rtol={"b": 1e-3}), ValueError,
         (r"\brtol\b", "structure", r"'b'", RECEIVED)),
    Case("odeint-rtol-structure-too-long", _odeint(decay, (Y0, Y0), T, rtol=[np.array(1e-3)] * 3), ValueError,
         (r"\brtol\b", "structure", RECEIVED)),
    Case("odeint-rtol-atol-both-zero", _odeint(decay, Y0, T, rtol=0.0, atol=0.0), ValueError,
         (r"\brtol\b", r"\batol\b", "zero", RECEIVED)),
    # ---------------------------------------------------------------- odeint: method and steps
    Case("odeint-method-unknown", _odeint(decay, Y0, T, method="rk45"), ValueError,
         (r"\bmethod\b", "'rk45'", RECEIVED, *METHODS_LISTED)),
    Case("odeint-method-none", _odeint(decay, Y0, T, method=None), TypeError,
         (r"\bmethod\b", "None", RECEIVED, *METHODS_LISTED)),
    Case("odeint-method-wrong-case", _odeint(decay, Y0, T, method="Dopri5"), ValueError,
         (r"\bmethod\b", "'Dopri5'", RECEIVED)),
    Case("odeint-first_step-zero", _odeint(decay, Y0, T, first_step=0.0), ValueError,
         (r"\bfirst_step\b", r"0\.0", "positive", RECEIVED)),
    Case("odeint-first_step-negative", _odeint(decay, Y0, T, first_step=-0.1), ValueError,
         (r"\bfirst_step\b", r"-0\.1", RECEIVED)),
    Case("odeint-first_step-nan", _odeint(decay, Y0, T, first_step=np.nan), ValueError,
         (r"\bfirst_step\b", "nan", RECEIVED)),
    Case("odeint-first_step-vector", _odeint(decay, Y0, T, first_step=np.array([0.1, 0.2])), ValueError,
         (r"\bfirst_step\b", "scalar", RECEIVED)),
    Case("odeint-first_step-string", _odeint(decay, Y0, T, first_step="small"), TypeError,
         (r"\bfirst_step\b", "'small'", RECEIVED)),
    Case("odeint-step_size-zero", _odeint(decay, Y0, T, method="rk4", step_size=0.0), ValueError,
         (r"\bstep_size\b", r"0\.0", "positive", RECEIVED)),
    Case("odeint-step_size-negative", _odeint(decay, Y0, T, method="rk4", step_size=-0.1), ValueError,
         (r"\bstep_size\b", r"-0\.1", RECEIVED)),
    Case("odeint-step_size-inf", _odeint(decay, Y0, T, method="rk4", step_size=np.inf), ValueError,
         (r"\bstep_size\b", "inf", RECEIVED)),
    Case("odeint-step_size-bool", _odeint(decay, Y0, T, method="rk4", step_size=True), TypeError,
         (r"\bstep_size\b", "True", RECEIVED)),
    Case("odeint-max_num_steps-zero", _odeint(decay, Y0, T, max_num_steps=0), ValueError,
         (r"\bmax_num_steps\b", r"=0\b", RECEIVED)),
    Case("odeint-max_num_steps-negative", _odeint(decay, Y0, T, max_num_steps=-5), ValueError,
         (r"\bmax_num_steps\b", "-5", RECEIVED)),
    Case("odeint-max_num_steps-float", _odeint(decay, Y0, T, max_num_steps=10.5), TypeError,
         (r"\bmax_num_steps\b", r"10\.5", RECEIVED)),
    Case("odeint-max_num_steps-string", _odeint(decay, Y0, T, max_num_steps="100"), TypeError,
         (r"\bmax_num_steps\b", "'100'", RECEIVED)),
    Case("odeint-max_num_steps-none", _odeint(decay, Y0, T, max_num_steps=None), TypeError,
         (r"\bmax_num_steps\b", "None", RECEIVED)),
    Case("odeint-max_num_steps-bool", _odeint(decay, Y0, T, max_num_steps=True), TypeError,
         (r"\bmax_num_steps\b", "True", RECEIVED)),
    Case("odeint-jit_compile-string", _odeint(decay, Y0, T, jit_compile="yes"), ValueError,
         (r"\bjit_compile\b", "'yes'", RECEIVED, "auto")),
    Case("odeint-jit_compile-none", _odeint(decay, Y0, T, jit_compile=None), TypeError,
         (r"\bjit_compile\b", "None", RECEIVED)),
    Case("odeint-jit_compile-int", _odeint(decay, Y0, T, jit_compile=1), TypeError,
         (r"\bjit_compile\b", r"=1\b", RECEIVED)),
    Case("odeint-return_stats-string", _odeint(decay, Y0, T, return_stats="yes"), TypeError,
         (r"\breturn_stats\b", "'yes'", RECEIVED)),
    # ---------------------------------------------------------------- odeint_adjoint
    Case("adjoint-y0-int32", _adjoint(decay, tf.constant([1, 2]), T), TypeError, (r"\by0\b", "int32", RECEIVED)),
    Case("adjoint-t-2d", _adjoint(decay, Y0, [[0.0, 1.0]]), ValueError, (r"\bt\b", r"\(1, 2\)", RECEIVED)),
    Case("adjoint-t-not-monotonic", _adjoint(decay, Y0, [0.0, 1.0, 0.5]), ValueError,
         (r"\bt\b", "monoton|increasing", RECEIVED)),
    Case("adjoint-rtol-negative", _adjoint(decay, Y0, T, rtol=-1.0), ValueError, (r"\brtol\b", r"-1\.0", RECEIVED)),
    Case("adjoint-rtol-atol-both-zero", _adjoint(decay, Y0, T, rtol=0.0, atol=0.0), ValueError,
         (r"\brtol\b", r"\batol\b", RECEIVED)),
    Case("adjoint-method-unknown", _adjoint(decay, Y0, T, method="rk45"), ValueError,
         (r"\bmethod\b", "'rk45'", RECEIVED, *METHODS_LISTED)),
    Case("adjoint-adjoint_method-unknown", _adjoint(decay, Y0, T, adjoint_method="rk45"), ValueError,
         (r"\badjoint_method\b", "'rk45'", RECEIVED, *METHODS_LISTED)),
    Case("adjoint-adjoint_rtol-negative", _adjoint(decay, Y0, T, adjoint_rtol=-1.0), ValueError,
         (r"\badjoint_rtol\b", r"-1\.0", RECEIVED)),
    Case("adjoint-adjoint_atol-negative", _adjoint(decay, Y0, T, adjoint_atol=-1.0), ValueError,
         (r"\badjoint_atol\b", r"-1\.0", RECEIVED)),
    Case("adjoint-adjoint_rtol-adjoint_atol-both-zero", _adjoint(decay, Y0, T, adjoint_rtol=0.0, adjoint_atol=0.0),
         ValueError, (r"\badjoint_rtol\b", r"\badjoint_atol\b", RECEIVED)),
    Case("adjoint-adjoint_checkpoints-negative", _adjoint(decay, Y0, T, adjoint_checkpoints=-1), ValueError,
         (r"\badjoint_checkpoints\b", "-1", RECEIVED)),
    Case("adjoint-adjoint_checkpoints-float", _adjoint(decay, Y0, T, adjoint_checkpoints=2.5), TypeError,
         (r"\badjoint_checkpoints\b", r"2\.5", RECEIVED)),
    Case("adjoint-adjoint_checkpoints-bool", _adjoint(decay, Y0, T, adjoint_checkpoints=True), TypeError,
         (r"\badjoint_checkpoints\b", "True", RECEIVED)),
    Case("adjoint-adjoint_checkpoints-none", _adjoint(decay, Y0, T, adjoint_checkpoints=None), TypeError,
         (r"\badjoint_checkpoints\b", "None", RECEIVED)),
    Case("adjoint-adjoint_checkpoints-string", _adjoint(decay, Y0, T, adjoint_checkpoints="8"), TypeError,
         (r"\badjoint_checkpoints\b", "'8'", RECEIVED)),
    Case("adjoint-adjoint_seminorm-string", _adjoint(decay, Y0, T, adjoint_seminorm="yes"), TypeError,
         (r"\badjoint_seminorm\b", "'yes'", RECEIVED)),
    Case("adjoint-variables-float", _adjoint(decay, Y0, T, variables=[1.0]), TypeError,
         (r"\bvariables\b", RECEIVED, "float")),
    Case("adjoint-variables-tensor", _adjoint(decay, Y0, T, variables=[tf.constant(1.0)]), TypeError,
         (r"\bvariables\b", RECEIVED, "Tensor")),
    Case("adjoint-backward_stats-int", _adjoint(decay, Y0, T, backward_stats=3), TypeError,
         (r"\bbackward_stats\b", RECEIVED, r"\bint\b")),
    Case("adjoint-first_step-zero", _adjoint(decay, Y0, T, first_step=0.0), ValueError,
         (r"\bfirst_step\b", r"0\.0", RECEIVED)),
    Case("adjoint-step_size-negative", _adjoint(decay, Y0, T, method="rk4", step_size=-0.1), ValueError,
         (r"\bstep_size\b", r"-0\.1", RECEIVED)),
    Case("adjoint-max_num_steps-zero", _adjoint(decay, Y0, T, max_num_steps=0), ValueError,
         (r"\bmax_num_steps\b", r"=0\b", RECEIVED)),
    Case("adjoint-jit_compile-string", _adjoint(decay, Y0, T, jit_compile="no"), ValueError,
         (r"\bjit_compile\b", "'no'", RECEIVED)),
    Case("adjoint-return_stats-string", _adjoint(decay, Y0, T, return_stats="yes"), TypeError,
         (r"\breturn_stats\b", "'yes'", RECEIVED)),
    # ---------------------------------------------------------------- ODELayer: construction
    Case("layer-dynamics-function", lambda: keras_node.ODELayer(lambda t, h: h), TypeError,
         (r"\bdynamics\b", RECEIVED, "function")),
    Case("layer-dynamics-none", lambda: keras_node.ODELayer(None), TypeError,
         (r"\bdynamics\b", RECEIVED, "NoneType")),
    Case("layer-dynamics-string", lambda: keras_node.ODELayer("mlp"), TypeError, (r"\bdynamics\b", RECEIVED, "str")),
    Case("layer-dynamics-class-not-instance", lambda: keras_node.ODELayer(MLP), TypeError,
         (r"\bdynamics\b", RECEIVED, "type")),
    Case("layer-method-unknown", _layer(method="rk45"), ValueError,
         (r"\bmethod\b", "'rk45'", RECEIVED, *METHODS_LISTED)),
    Case("layer-gradient-unknown", _layer(gradient="autodiff"), ValueError,
         (r"\bgradient\b", "'autodiff'", "'adjoint'", "'backprop'", RECEIVED)),
    Case("layer-gradient-wrong-case", _layer(gradient="Adjoint"), ValueError, (r"\bgradient\b", "'Adjoint'", RECEIVED)),
    Case("layer-gradient-none", _layer(gradient=None), TypeError, (r"\bgradient\b", "None", RECEIVED)),
    Case("layer-t-one-value", _layer(t=[0.0]), ValueError, (r"\bt\b", r"\b2\b", RECEIVED, r"\[0\.0\]")),
    Case("layer-t-2d", _layer(t=[[0.0, 1.0]]), ValueError, (r"\bt\b", "1-D", RECEIVED, r"\[\[0\.0, 1\.0\]\]")),
    Case("layer-t-scalar", _layer(t=1.0), ValueError, (r"\bt\b", "1-D", RECEIVED, r"1\.0")),
    Case("layer-t-none", _layer(t=None), (ValueError, TypeError), (r"\bt\b", RECEIVED, "None")),
    Case("layer-t-string", _layer(t="abc"), TypeError, (r"\bt\b", RECEIVED, "'abc'")),
    Case("layer-t-not-monotonic", _layer(t=[0.0, 1.0, 0.5]), ValueError,
         (r"\bt\b", "monoton|increasing", RECEIVED, r"0\.5")),
    Case("layer-t-repeated", _layer(t=[0.0, 0.0]), ValueError, (r"\bt\b", "strictly|repeated", RECEIVED)),
    Case("layer-t-nan", _layer(t=[0.0, np.nan]), ValueError, (r"\bt\b", "finite", RECEIVED, "nan")),
    Case("layer-rtol-negative", _layer(rtol=-1e-3), ValueError, (r"\brtol\b", r"-0\.001", RECEIVED)),
    Case("layer-atol-negative", _layer(atol=-1.0), ValueError, (r"\batol\b", r"-1\.0", RECEIVED)),
    Case("layer-rtol-string", _layer(rtol="tight"), TypeError, (r"\brtol\b", "'tight'", RECEIVED)),
    Case("layer-rtol-none", _layer(rtol=None), TypeError, (r"\brtol\b", "None", RECEIVED)),
    Case("layer-rtol-atol-both-zero", _layer(rtol=0.0, atol=0.0), ValueError, (r"\brtol\b", r"\batol\b", RECEIVED)),
    Case("layer-first_step-zero", _layer(first_step=0.0), ValueError, (r"\bfirst_step\b", r"0\.0", RECEIVED)),
    Case("layer-step_size-negative", _layer(method="rk4", step_size=-0.1), ValueError,
         (r"\bstep_size\b", r"-0\.1", RECEIVED)),
    Case("layer-step_size-string", _layer(method="rk4", step_size="small"), TypeError,
         (r"\bstep_size\b", "'small'", RECEIVED)),
    Case("layer-max_num_steps-zero", _layer(max_num_steps=0), ValueError, (r"\bmax_num_steps\b", r"=0\b", RECEIVED)),
    Case("layer-max_num_steps-float", _layer(max_num_steps=1.5), TypeError,
         (r"\bmax_num_steps\b", r"1\.5", RECEIVED)),
    Case("layer-max_num_steps-none", _layer(max_num_steps=None), TypeError, (r"\bmax_num_steps\b", "None", RECEIVED)),
    Case("layer-adjoint_checkpoints-negative", _layer(adjoint_checkpoints=-1), ValueError,
         (r"\badjoint_checkpoints\b", "-1", RECEIVED)),
    Case("layer-adjoint_checkpoints-float", _layer(adjoint_checkpoints=1.5), TypeError,
         (r"\badjoint_checkpoints\b", r"1\.5", RECEIVED)),
    Case("layer-adjoint_checkpoints-bool", _layer(adjoint_checkpoints=True), TypeError,
         (r"\badjoint_checkpoints\b", "True", RECEIVED)),
    Case("layer-adjoint_seminorm-int", _layer(adjoint_seminorm=1), TypeError,
         (r"\badjoint_seminorm\b", r"=1\b", RECEIVED)),
    Case("layer-return_sequences-string", _layer(return_sequences="yes"), TypeError,
         (r"\breturn_sequences\b", "'yes'", RECEIVED)),
    Case("layer-jit_compile-string", _layer(jit_compile="yes"), ValueError, (r"\bjit_compile\b", "'yes'", RECEIVED)),
    # ---------------------------------------------------------------- ODELayer: build (dynamics' output)
    Case("layer-build-dense-wrong-width", _build(lambda: keras.layers.Dense(5), (None, 3)), ValueError,
         (r"dynamics", re.escape("(None, 3)"), re.escape("(None, 5)"))),
    Case("layer-build-conv-wrong-channels", _build(lambda: keras.layers.Conv2D(2, 3, padding="same"), (None, 8, 8, 4)),
         ValueError, (r"dynamics", re.escape("(None, 8, 8, 4)"), re.escape("(None, 8, 8, 2)"))),
    Case("layer-build-conv-valid-padding", _build(lambda: keras.layers.Conv2D(4, 3), (None, 8, 8, 4)), ValueError,
         (r"dynamics", re.escape("(None, 8, 8, 4)"), re.escape("(None, 6, 6, 4)"))),
    Case("layer-build-sequential-wrong-width", _build(lambda: keras.Sequential([keras.layers.Dense(5)]), (None, 3)),
         ValueError, (r"dynamics", re.escape("(None, 3)"), re.escape("(None, 5)"))),
    Case("layer-build-dynamics-returns-tuple", _build(_TupleField, (None, 3)), ValueError,
         (r"dynamics", "tuple|structure|single tensor", re.escape("(None, 3)"))),
    Case("layer-build-dynamics-returns-dict", _build(_DictField, (None, 3)), ValueError,
         (r"dynamics", "dict|structure|single tensor", re.escape("(None, 3)"))),
    # ---------------------------------------------------------------- ODELayer: call
    Case("layer-call-t-2d", _call(H0, t=tf.constant([[0.0, 1.0]])), ValueError,
         (r"\bt\b", "2-D", r"per_sample_steps=True", r"\(1, 2\)", RECEIVED)),
    Case("layer-call-t-scalar", _call(H0, t=tf.constant(1.0)), ValueError, (r"\bt\b", "1-D", r"\(\)", RECEIVED)),
    Case("layer-call-t-one-value", _call(H0, t=tf.constant([1.0])), ValueError, (r"\bt\b", r"\b2\b", RECEIVED)),
    Case("layer-call-t-not-monotonic", _call(H0, t=tf.constant([0.0, 1.0, 0.5])), ValueError,
         (r"\bt\b", "monoton|increasing", RECEIVED, r"0\.5")),
    Case("layer-call-t-nan", _call(H0, t=tf.constant([0.0, np.nan])), ValueError, (r"\bt\b", "finite", RECEIVED)),
    Case("layer-call-symbolic-t-2d", _symbolic_call((1, 2)), ValueError,
         (r"\bt\b", "2-D", r"per_sample_steps=True", r"\(1, 2\)", RECEIVED)),
    Case("layer-call-symbolic-t-scalar", _symbolic_call(()), ValueError, (r"\bt\b", "1-D", r"\(\)", RECEIVED)),
    Case("layer-call-int-inputs", _call(lambda: tf.ones((2, 3), tf.int32)), TypeError,
         (r"\binputs\b|initial state", "int32", "float", RECEIVED)),
    # ---------------------------------------------------------------- dynamics.MLP
    Case("mlp-units-zero", lambda: MLP(units=(0,)), ValueError, (r"\bunits\b", r"\(0,\)", RECEIVED)),
    Case("mlp-units-negative-int", lambda: MLP(units=-3), ValueError, (r"\bunits\b", "-3", RECEIVED)),
    Case("mlp-units-empty", lambda: MLP(units=()), ValueError, (r"\bunits\b", r"\(\)", RECEIVED)),
    Case("mlp-units-float", lambda: MLP(units=(2.5,)), ValueError, (r"\bunits\b", r"2\.5", RECEIVED)),
    Case("mlp-units-string", lambda: MLP(units="64"), (ValueError, TypeError), (r"\bunits\b", "'6'|'64'", RECEIVED)),
    Case("mlp-units-none", lambda: MLP(units=None), (ValueError, TypeError), (r"\bunits\b", "None", RECEIVED)),
    Case("mlp-activation-unknown", lambda: MLP(activation="nope"), ValueError, (r"activation", "nope")),
    Case("mlp-kernel_initializer-unknown", lambda: MLP(kernel_initializer="nope"), ValueError,
         (r"initializer", "nope")),
    Case("mlp-time_dependent-string", lambda: MLP(time_dependent="no"), TypeError,
         (r"\btime_dependent\b", "'no'", RECEIVED)),
    Case("mlp-build-unknown-last-dim", lambda: MLP().build((None, None)), ValueError,
         (r"last dimension", re.escape("(None, None)"), RECEIVED)),
    # ---------------------------------------------------------------- dynamics.ConvBlock
    Case("conv-filters-zero", lambda: ConvBlock(filters=0), ValueError, (r"\bfilters\b", r"=0\b", RECEIVED)),
    Case("conv-filters-float", lambda: ConvBlock(filters=2.0), ValueError, (r"\bfilters\b", r"2\.0", RECEIVED)),
    Case("conv-kernel_size-zero", lambda: ConvBlock(kernel_size=0), ValueError,
         (r"\bkernel_size\b", r"=0\b", RECEIVED)),
    Case("conv-groups-zero", lambda: ConvBlock(groups=0), ValueError, (r"\bgroups\b", r"=0\b", RECEIVED)),
    Case("conv-groups-negative", lambda: ConvBlock(groups=-4), ValueError, (r"\bgroups\b", "-4", RECEIVED)),
    Case("conv-groups-string", lambda: ConvBlock(groups="a"), (ValueError, TypeError),
         (r"\bgroups\b", "'a'", RECEIVED)),
    Case("conv-activation-unknown", lambda: ConvBlock(activation="nope"), ValueError, (r"activation", "nope")),
    Case("conv-time_dependent-string", lambda: ConvBlock(time_dependent="no"), TypeError,
         (r"\btime_dependent\b", "'no'", RECEIVED)),
    Case("conv-build-rank-3", lambda: ConvBlock().build((None, 8, 4)), ValueError,
         (r"images|height, width", re.escape("(None, 8, 4)"), RECEIVED)),
    Case("conv-build-unknown-channels", lambda: ConvBlock().build((None, 8, 8, None)), ValueError,
         (r"channels", re.escape("(None, 8, 8, None)"), RECEIVED)),
    # ---------------------------------------------------------------- callbacks.NFELogger
    Case("nfelogger-log_every_batch-string", lambda: NFELogger(log_every_batch="no"), TypeError,
         (r"\blog_every_batch\b", "'no'", RECEIVED)),
    Case("nfelogger-log_every_batch-int", lambda: NFELogger(log_every_batch=3), TypeError,
         (r"\blog_every_batch\b", r"=3\b", RECEIVED)),
]


def test_case_ids_are_unique():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case):
    try:
        case.call()
    except Exception as caught:  # noqa: BLE001 - recorded, then checked
        error = caught
    else:
        MESSAGES[case.id] = ("no error", "(accepted silently)")
        pytest.fail(f"{case.id}: no error raised; expected {case.error}")
    MESSAGES[case.id] = (type(error).__name__, _plain(str(error)))
    # Check the type after recording, so the catalogue shows what was raised.
    assert isinstance(error, case.error), f"{type(error).__name__}: {error}"
    _assert_message(str(error), case.patterns)


def _plain(message):
    """The message without Keras' ANSI bold codes and call-argument trailer."""
    message = re.sub(r"\x1b\[[0-9;]*m", "", message)
    return re.sub(r"\s+", " ", message).strip()


def _assert_message(message, patterns):
    missing = [p for p in patterns if not re.search(p, message, re.S)]
    assert not missing, f"message lacks {missing}:\n{message}"


# ------------------------------------------------------------------ load time


class Unregistered(keras.layers.Layer):
    """dh/dt = -h, deliberately *not* registered with Keras serialization."""

    def call(self, h):
        return -h

    def compute_output_shape(self, input_shape):
        return input_shape


@pytest.mark.parametrize("safe_mode", [True, False], ids=["safe", "unsafe"])
def test_unregistered_dynamics_class_at_load_time(tmp_path, safe_mode):
    model = keras.Sequential([keras.Input((3,)), keras_node.ODELayer(Unregistered(), jit_compile=False)])
    path = str(tmp_path / "unregistered.keras")
    model.save(path)  # saving works; the class just cannot be found again
    with pytest.raises((ValueError, TypeError)) as info:
        keras.models.load_model(path, safe_mode=safe_mode)
    message = str(info.value)
    MESSAGES[f"load_model-unregistered-dynamics-{'safe' if safe_mode else 'unsafe'}"] = (
        type(info.value).__name__, _plain(message))
    _assert_message(message, ("Unregistered", "register_keras_serializable", "ODELayer|dynamics"))
    # The fix the message suggests works: the class, made known, loads.
    loaded = keras.models.load_model(path, custom_objects={"Unregistered": Unregistered}, safe_mode=safe_mode)
    assert isinstance(loaded.layers[0].dynamics, Unregistered)


# ------------------------------------------------------------------ catalogue


def test_zz_message_catalogue(tmp_path_factory, capsys):
    """Write (and print) every message collected above: the catalogue of
    bad inputs and their answers. Runs last (file order)."""
    lines = [f"{case_id} -> {kind} -> {message}" for case_id, (kind, message) in MESSAGES.items()]
    path = tmp_path_factory.getbasetemp() / "bad_input_messages.txt"
    path.write_text("\n".join(lines) + "\n")
    with capsys.disabled():
        print(f"\n{len(lines)} bad-input messages written to {path}")
    assert lines
