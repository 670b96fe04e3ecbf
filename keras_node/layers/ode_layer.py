"""`ODELayer`: a Keras layer whose output is the solution of an ODE."""

import inspect
import numbers

import keras
import numpy as np
import tensorflow as tf

from keras_node import _inputs
from keras_node import _xla
from keras_node.adjoint import DEFAULT_CHECKPOINTS, _odeint_adjoint
from keras_node.odeint import odeint
from keras_node.solvers import registry

GRADIENT_MODES = ("adjoint", "backprop")


@keras.saving.register_keras_serializable(package="keras_node")
class ODELayer(keras.layers.Layer):
    """Neural ODE layer: maps `h(t[0])` to `h(t[-1])` under `dh/dt = dynamics(h, t)`.

    The input is the initial state; the output is the state at the last
    time (or at every time with `return_sequences=True`), found by an
    adaptive Runge-Kutta solver. Gradients come from the adjoint method
    (constant memory in the number of solver steps) or from backpropagation
    through the solver's operations.

    Args:
        dynamics: a Keras layer or model giving dh/dt with the shape of h.
            Called as `dynamics(h, t=t)` when its `call` takes a `t`
            argument (time-dependent), else as `dynamics(h)`.
        t: the integration times, at least 2, strictly monotonic. Default
            `(0.0, 1.0)`.
        method: ODE solver, one of `keras_node.METHODS` (default `"dopri5"`).
        rtol, atol: relative and absolute error tolerances.
        gradient: `"adjoint"` (default; constant memory, `odeint_adjoint`)
            or `"backprop"` (differentiate through the solver: faster for
            few steps, memory grows with the steps).
        return_sequences: return the state at every time of `t`, shape
            `(batch, len(t), ...)`, instead of only the last.
        first_step: initial step of adaptive methods (default: automatic).
        step_size: step of fixed-step methods (`None`: one step per
            interval of `t`).
        max_num_steps: bound on attempted steps per solve; exceeding it
            raises `tf.errors.InvalidArgumentError` (NaN outputs under XLA).
        adjoint_seminorm: see `keras_node.odeint_adjoint`.
        adjoint_checkpoints: see `keras_node.odeint_adjoint`.
        jit_compile: compile the solver loops with XLA: `"auto"` (default:
            when the dynamics' ops all have XLA kernels), `True` or `False`.
            Independent of `model.compile(jit_compile=...)`, which compiles
            the whole training step.
        **kwargs: standard Keras layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: the initial state, `(batch, ...)` of any rank.
        t: optional 1-D tensor of times overriding the configured `t` for
            this call (e.g. irregularly sampled series).
        training: passed through to nothing; accepted for Keras symmetry.

    Input shape:
        `(batch, ...)`, any rank.

    Output shape:
        Same as the input, or `(batch, len(t), ...)` with
        `return_sequences=True`.

    Attributes:
        nfe_forward, nfe_backward: function evaluations of the last forward
            solve and of the last backward (adjoint) solve; integer scalars.
            `nfe_backward` is 0 with `gradient="backprop"`.

    Example:

    ```python
    model = keras.Sequential([
        keras.Input((2,)),
        keras_node.ODELayer(keras_node.dynamics.MLP(units=(64,))),
        keras.layers.Dense(1),
    ])
    model.compile("adam", "mse")
    model.fit(x, y, callbacks=[keras_node.callbacks.NFELogger()])
    ```
    """

    def __init__(
        self, dynamics, t=(0.0, 1.0), *, method="dopri5", rtol=1e-3, atol=1e-6,
        gradient="adjoint", return_sequences=False, first_step=None, step_size=None,
        max_num_steps=10_000, adjoint_seminorm=True, adjoint_checkpoints=DEFAULT_CHECKPOINTS,
        jit_compile="auto", **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(dynamics, keras.layers.Layer):
            raise TypeError(
                "dynamics must be a Keras layer or model computing dh/dt (e.g. "
                "keras_node.dynamics.MLP()). Received: dynamics of type "
                f"{type(dynamics).__name__}"
            )
        registry.get_tableau(method)
        if gradient not in GRADIENT_MODES:
            raise ValueError(
                f"gradient must be one of {GRADIENT_MODES}. Received: gradient={gradient!r}"
            )
        if not isinstance(return_sequences, bool):
            raise TypeError(f"return_sequences must be a bool. Received: return_sequences={return_sequences!r}")
        self.dynamics = dynamics
        self.t = _config_times(t)
        self.method = method
        self.rtol = _config_tolerance(rtol, "rtol")
        self.atol = _config_tolerance(atol, "atol")
        _inputs.check_both_tolerances([self.rtol], [self.atol])
        self.gradient = gradient
        self.return_sequences = return_sequences
        self.first_step = _config_step(first_step, "first_step")
        self.step_size = _config_step(step_size, "step_size")
        self.max_num_steps = _inputs.max_steps(max_num_steps)
        if not isinstance(adjoint_seminorm, bool):
            raise TypeError(f"adjoint_seminorm must be a bool. Received: adjoint_seminorm={adjoint_seminorm!r}")
        if isinstance(adjoint_checkpoints, bool) or not isinstance(adjoint_checkpoints, numbers.Integral) or adjoint_checkpoints < 0:
            raise ValueError(
                "adjoint_checkpoints must be an integer >= 0. "
                f"Received: adjoint_checkpoints={adjoint_checkpoints!r}"
            )
        self.adjoint_seminorm = adjoint_seminorm
        self.adjoint_checkpoints = int(adjoint_checkpoints)
        self.jit_compile = _xla.validate(jit_compile)
        self._time_dependent = _takes_time(dynamics)
        self._counters = None

    # -- building -----------------------------------------------------------

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if not self.dynamics.built:
            self.dynamics.build(input_shape)
        output = self._dynamics_output_spec(input_shape)
        if not hasattr(output, "shape"):
            raise ValueError(
                "The dynamics of an ODELayer must return a single tensor dh/dt with the shape of "
                f"h {input_shape}. Received: a {type(output).__name__} from "
                f"{self.dynamics.name!r}: {output!r}"
            )
        output_shape = output.shape
        if tuple(output_shape) != input_shape:
            raise ValueError(
                "The dynamics of an ODELayer must return dh/dt with the shape of h. "
                f"Input shape: {input_shape}; dynamics output shape: {tuple(output_shape)}. "
                f"Check the last layer of {self.dynamics.name!r} (its width must equal the "
                "state's last dimension)."
            )
        self._counters = _Counters(self)

    def _dynamics_output_spec(self, input_shape):
        spec = keras.KerasTensor(input_shape, dtype=self.compute_dtype)
        if self._time_dependent:
            return self.dynamics.compute_output_spec(spec, t=keras.KerasTensor((), dtype=self.compute_dtype))
        return self.dynamics.compute_output_spec(spec)

    def compute_output_shape(self, inputs_shape, t_shape=None):
        input_shape = tuple(inputs_shape)
        if t_shape is not None and len(t_shape) != 1:
            raise ValueError(f"The call-time t of an ODELayer must be 1-D (a vector of times). "
                             f"Received: t with shape {tuple(t_shape)}")
        if not self.return_sequences:
            return input_shape
        num_times = len(self.t) if t_shape is None else t_shape[0]
        return (input_shape[0], num_times) + input_shape[1:]

    # -- calling ------------------------------------------------------------

    def _call_dynamics(self, t, h):
        out = self.dynamics(h, t=t) if self._time_dependent else self.dynamics(h)
        # Under a mixed precision policy the dynamics compute in float16 while
        # the solver integrates in float32 (API.md): hand back the state dtype.
        return tf.cast(out, h.dtype)

    @tf.autograph.experimental.do_not_convert
    def call(self, inputs, t=None, training=None):
        if not tf.as_dtype(inputs.dtype).is_floating:
            raise TypeError("ODELayer inputs must be floating (the initial state of the ODE). "
                            f"Received: inputs with dtype {tf.as_dtype(inputs.dtype).name}; cast them "
                            "to float32 first")
        times = tf.constant(self.t, dtype=_time_dtype(inputs.dtype)) if t is None else t
        options = dict(
            method=self.method, rtol=self.rtol, atol=self.atol, first_step=self.first_step,
            step_size=self.step_size, max_num_steps=self.max_num_steps, return_stats=True,
            name=f"ODELayer {self.name!r}", jit_compile=self.jit_compile,
        )
        if self.gradient == "adjoint":
            ys, stats = _odeint_adjoint(
                self._call_dynamics, inputs, times, variables=self.dynamics.trainable_variables,
                adjoint_method=None, adjoint_rtol=None, adjoint_atol=None,
                adjoint_seminorm=self.adjoint_seminorm,
                adjoint_checkpoints=self.adjoint_checkpoints,
                backward_stats=self._counters.backward,
                nonfinite_gradients="nan" if self._uses_loss_scaling() else "raise",
                **options,
            )
        else:
            ys, stats = odeint(self._call_dynamics, inputs, times, **options)
        ys = self._counters.record_forward(ys, stats)
        if not self.return_sequences:
            return ys[-1]
        rank = len(ys.shape)
        return tf.transpose(ys, [1, 0] + list(range(2, rank)))

    def _uses_loss_scaling(self):
        # float16 has a narrow range, so Keras trains it with a loss-scale
        # optimizer that needs to *see* overflowing gradients.
        return self.dynamics.compute_dtype == "float16" or self.compute_dtype == "float16"

    # -- diagnostics --------------------------------------------------------

    @property
    def nfe_forward(self):
        """Function evaluations of the last forward solve (int32 scalar)."""
        return self._counter_value("nfe_forward")

    @property
    def nfe_backward(self):
        """Function evaluations of the last backward (adjoint) solve."""
        return self._counter_value("nfe_backward")

    def _counter_value(self, name):
        if self._counters is None:
            return 0
        return int(keras.ops.convert_to_numpy(getattr(self._counters, name)))

    # -- serialization ------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        config.update(
            dynamics=keras.saving.serialize_keras_object(self.dynamics),
            t=list(self.t), method=self.method, rtol=self.rtol, atol=self.atol,
            gradient=self.gradient, return_sequences=self.return_sequences,
            first_step=self.first_step, step_size=self.step_size,
            max_num_steps=self.max_num_steps, adjoint_seminorm=self.adjoint_seminorm,
            adjoint_checkpoints=self.adjoint_checkpoints, jit_compile=self.jit_compile,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        dynamics_config = config.pop("dynamics")
        try:
            dynamics = keras.saving.deserialize_keras_object(dynamics_config)
        except (TypeError, ValueError) as error:
            raise ValueError(
                "Could not rebuild the dynamics of an ODELayer from its config. If it is a "
                "custom layer, decorate its class with "
                "@keras.saving.register_keras_serializable() and make sure the module "
                f"defining it is imported before loading. Details: {error}"
            ) from error
        return cls(dynamics, **config)


class _Counters:
    """The layer's solver counters: non-trainable int32 Keras variables.

    `backward` quacks like `keras_node.AdjointStats`, so the adjoint's
    backward pass writes its counts straight into the layer.
    """

    def __init__(self, layer):
        def counter(name):
            return layer.add_weight(
                shape=(), dtype="int32", initializer="zeros", trainable=False,
                aggregation="only_first_replica", name=name,
            )

        self.nfe_forward = counter("nfe_forward")
        self.nfe_backward = counter("nfe_backward")
        self.backward = _BackwardCounters(self.nfe_backward, counter("num_steps_backward"),
                                          counter("num_rejected_backward"), counter("status_backward"))

    def record_forward(self, ys, stats):
        update = self.nfe_forward.assign(stats["nfe"])
        if tf.executing_eagerly():
            return ys
        with tf.control_dependencies([update] if update is not None else []):
            return tf.identity(ys)


class _BackwardCounters:
    def __init__(self, nfe, num_steps, num_rejected, status):
        self.nfe, self.num_steps, self.num_rejected, self.status = nfe, num_steps, num_rejected, status


def _time_dtype(dtype):
    dtype = tf.as_dtype(dtype)
    return tf.float32 if dtype in (tf.float16, tf.bfloat16) else dtype


def _takes_time(layer):
    try:
        parameters = inspect.signature(layer.call).parameters
    except (TypeError, ValueError):
        return False
    return "t" in parameters


def _config_times(t):
    try:
        values = np.asarray(t, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"t must be a sequence of numbers. Received: t={t!r}") from None
    if values.ndim != 1 or values.shape[0] < 2:
        raise ValueError(f"t must be 1-D with at least 2 times. Received: t={t!r}")
    _inputs.times(values, tf.float64)  # finite, strictly monotonic
    return tuple(float(v) for v in values)


def _config_tolerance(value, name):
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number. Received: {name}={value!r}")
    if isinstance(value, numbers.Real):
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be finite and >= 0. Received: {name}={value!r}")
        return float(value)
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number or a list of numbers. Received: {name}={value!r}") from None
    if np.any(array < 0) or not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite and >= 0. Received: {name}={value!r}")
    return array.tolist()


def _config_step(value, name):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0 or not np.isfinite(value):
        raise ValueError(f"{name} must be a positive number or None. Received: {name}={value!r}")
    return float(value)
