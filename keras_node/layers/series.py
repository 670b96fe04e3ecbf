"""What the time-series layers (`NeuralCDE`, `ODERNN`) share: their ODE
options, their `(values, times[, mask])` inputs, and one solve that picks
per-sample steps for per-sample times.

The ODE options are `ODELayer`'s (validated into the same frozen
`SolverOptions` / `AdjointOptions`), minus `t` (the times come with the
inputs) and the step constraints; the solve is `odeint`'s or
`odeint_adjoint`'s, nothing of its own.
"""

import dataclasses

import keras
import tensorflow as tf
# Private, as in odeint.py: whether an eager tape records the call decides
# whether the solver loop may run under XLA with backprop gradients.
from tensorflow.python.eager import record

from keras_node.adjoint import solve_adjoint
from keras_node.layers.call_times import time_dtype
from keras_node.odeint import solve
from keras_node.options import AdjointOptions, SolverOptions, check_choice

GRADIENT_MODES = ("adjoint", "backprop")
_SOLVER_NAMES = ("method", "rtol", "atol", "first_step", "step_size", "max_num_steps",
                 "jit_compile")
_ADJOINT_NAMES = ("adjoint_method", "adjoint_rtol", "adjoint_atol", "adjoint_seminorm",
                  "adjoint_checkpoints")


class OdeSettings:
    """The ODE keyword arguments of a series layer, validated once.

    `pop_from(kwargs)` takes `gradient`, the solver options (`method`,
    `rtol`, `atol`, `first_step`, `step_size`, `max_num_steps`,
    `jit_compile`) and the adjoint options out of a layer's `**kwargs`, so
    what is left goes to `keras.layers.Layer`.
    """

    def __init__(self, gradient="adjoint", **options):
        self.gradient = check_choice(gradient, "gradient", GRADIENT_MODES)
        self.options = SolverOptions(**{k: v for k, v in options.items() if k in _SOLVER_NAMES})
        self.adjoint_options = AdjointOptions(
            **{k: v for k, v in options.items() if k in _ADJOINT_NAMES})

    @classmethod
    def pop_from(cls, kwargs):
        names = ("gradient",) + _SOLVER_NAMES + _ADJOINT_NAMES
        return cls(**{name: kwargs.pop(name) for name in names if name in kwargs})

    def to_config(self):
        config = {**self.options.to_config(), **self.adjoint_options.to_config()}
        config = {k: v for k, v in config.items() if k in _SOLVER_NAMES + _ADJOINT_NAMES}
        return dict(config, gradient=self.gradient)

    def solve(self, func, y0, t, variables, name, recording=None):
        """`ys` at the times `t`, `(len(t), batch, ...)`. 2-D `t` `(batch, n)`
        solves each sample on its own row with its own steps (`batch_axis=0`);
        `func(t, y)` then gets `t` shaped `(batch,)`. `recording`: whether a
        gradient tape outside the graph being built will differentiate the
        solve (None: the solver sees for itself)."""
        options = self.options
        if t.shape.rank == 2:
            options = dataclasses.replace(options, batch_axis=0)
        if self.gradient == "adjoint":
            ys, _ = solve_adjoint(func, y0, t, options, self.adjoint_options,
                                  variables=variables, name=name)
        else:
            ys, _ = solve(func, y0, t, options, name=name, recording=recording)
        return ys


def split_inputs(inputs, layer, with_mask=False):
    """`(values, times, mask)` of a series layer's call, checked: `values`
    `(batch, n, channels)` cast to the layer's compute dtype (time dtype of
    float16 policies: float32), `times` `(n,)` or `(batch, n)` of the same
    dtype, `mask` `(batch, n)` bool or None."""
    expected = "(values, times, mask)" if with_mask else "(values, times)"
    if not isinstance(inputs, (list, tuple)) or len(inputs) not in ((2, 3) if with_mask else (2,)):
        raise ValueError(f"{type(layer).__name__} takes inputs {expected}. Received: inputs of "
                         f"type {type(inputs).__name__}"
                         + (f" with {len(inputs)} elements" if isinstance(inputs, (list, tuple))
                            else ""))
    values, times = tf.convert_to_tensor(inputs[0]), tf.convert_to_tensor(inputs[1])
    if not values.dtype.is_floating:
        raise TypeError(f"{type(layer).__name__}: values must be floating. Received: values "
                        f"with dtype {values.dtype.name}")
    if values.shape.rank != 3:
        raise ValueError(f"{type(layer).__name__}: values must have shape (batch, n, channels). "
                         f"Received: values with shape {values.shape}")
    if times.shape.rank not in (1, 2):
        raise ValueError(f"{type(layer).__name__}: times must be (n,) or (batch, n). Received: "
                         f"times with shape {times.shape}")
    dtype = time_dtype(layer.compute_dtype)
    mask = None
    if with_mask and len(inputs) == 3 and inputs[2] is not None:
        mask = tf.cast(inputs[2], tf.bool)
    return tf.cast(values, dtype), tf.cast(times, dtype), mask


def values_shape(input_shape, layer, with_mask=False):
    """The `(batch, n, channels)` shape of `values` from a layer's input shape."""
    shapes = list(input_shape) if isinstance(input_shape, (list, tuple)) else None
    if not shapes or not isinstance(shapes[0], (list, tuple)) or len(shapes[0]) != 3:
        expected = "(values, times, mask)" if with_mask else "(values, times)"
        raise ValueError(f"{type(layer).__name__} takes inputs {expected} with values of shape "
                         f"(batch, n, channels). Received: input shape {input_shape}")
    return tuple(shapes[0])


def call_sublayer(sublayer, takes_t, h, t):
    """`sublayer(h, t=t)` for time-dependent sublayers (t scalar, or shaped
    `(batch, 1)` under per-sample steps), else `sublayer(h)`."""
    if not takes_t:
        return sublayer(h)
    if t.shape.rank == 1:
        t = tf.reshape(t, [-1] + [1] * (h.shape.rank - 1))
    return sublayer(h, t=t)


def deserialize_sublayer(config, key, owner):
    """The Keras layer stored under `config[key]`, with a helpful error."""
    try:
        return keras.saving.deserialize_keras_object(config.pop(key))
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"Could not rebuild the {key} of a {owner} from its config. If it is a custom "
            "layer, decorate its class with @keras.saving.register_keras_serializable() and "
            f"import the module defining it before loading. Details: {error}") from error


def check_sublayer(layer, name, what):
    """`layer` must be a Keras layer (TypeError naming what was given)."""
    if not isinstance(layer, keras.layers.Layer):
        raise TypeError(f"{name} must be a Keras layer or model ({what}). Received: {name} of "
                        f"type {type(layer).__name__}")
    return layer


class GraphCall:
    """Runs a layer's forward computation as a `tf.function` when called
    eagerly: the solve's dynamics close over this call's tensors (the
    spline, the observation), which an eagerly compiled solve would capture
    as constants; in a graph they are ordinary tensors. Graph calls (fit,
    predict, functional models) run inline.

    `forward(*args, recording)` gets whether an eager gradient tape records
    the call (traced separately for True and False), `None` in graphs.
    """

    def __init__(self, forward):
        self._forward = forward
        self._function = tf.function(forward, autograph=False, reduce_retracing=True)

    def __call__(self, *args):
        if tf.executing_eagerly():
            return self._function(*args, record.could_possibly_record())
        return self._forward(*args, None)


__all__ = ["OdeSettings", "split_inputs", "values_shape", "call_sublayer",
           "deserialize_sublayer", "check_sublayer", "GraphCall"]
