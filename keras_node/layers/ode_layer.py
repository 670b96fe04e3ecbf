"""`ODELayer`: a Keras layer whose output is the solution of an ODE."""

import dataclasses

import keras
import tensorflow as tf

from keras_node.adjoint import solve_adjoint
from keras_node.layers.call_times import check_call_time_rank, config_times, takes_time, time_dtype
from keras_node.layers.counters import Counters
from keras_node.layers.dynamics_check import build_and_check_dynamics
from keras_node.layers.regularized import (Regularization, augment, augmented_shape,
                                            solve_options, time_direction)
from keras_node.odeint import solve
from keras_node.options import (DEFAULT_CHECKPOINTS, AdjointOptions, ModelOptions, SolverOptions,
                                check_bool, check_choice)
from keras_node.regularizers import Layout

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
        adjoint_method, adjoint_rtol, adjoint_atol, adjoint_seminorm,
            adjoint_checkpoints: the backward solve's settings, see
            `keras_node.odeint_adjoint`.
        jit_compile: compile the solver loops with XLA: `"auto"` (default:
            when the dynamics' ops all have XLA kernels), `True` or `False`.
            Independent of `model.compile(jit_compile=...)`, which compiles
            the whole training step.
        per_sample_steps: solve each sample of the batch with its own step
            size, decisions and status (`batch_axis=0` of `odeint`): one hard
            sample no longer slows the others, and a call-time `t` may be
            2-D `(batch, n)`, each sample's own times. Time-dependent
            dynamics then get `t` shaped `(batch, 1, ..., 1)`.
        max_step, step_times, jump_times: step constraints of adaptive
            methods, see `keras_node.odeint`.
        regularizers: None or `{"kinetic" | "jacobian_frobenius" |
            "taylor2": weight >= 0}` (RNODE, `keras_node.regularizers`):
            in training, per-sample integrals along the same solve, left
            out of error control; `weight * batch mean` is added with
            `add_loss` and each term logged as the metric `reg_<key>`.
            Zero weights compute nothing.
        augment_dim: k >= 0 zero channels appended to the last axis before
            the solve and kept in the output (Dupont et al. 2019).
        **kwargs: standard Keras layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: the initial state, `(batch, ...)` of any rank.
        t: optional 1-D tensor of times overriding the configured `t` for
            this call (e.g. irregularly sampled series); with
            `per_sample_steps=True` also `(batch, n)`, a row per sample.
        training: in training the regularisers (if any) are integrated
            and their losses added; otherwise the plain solve runs.

    Input shape:
        `(batch, ...)`, any rank.

    Output shape:
        Same as the input (last axis + `augment_dim`), or
        `(batch, len(t), ...)` with `return_sequences=True`.

    Attributes:
        nfe_forward, nfe_backward: function evaluations of the last forward
            solve and of the last backward (adjoint) solve; integer scalars.
            `nfe_backward` is 0 with `gradient="backprop"`.
        options, adjoint_options: the validated solver settings
            (`keras_node.options.SolverOptions` / `AdjointOptions`), fixed at
            construction; `get_config` writes them out.
        t, gradient, return_sequences: as given.

    Eager calls (`layer(x)` outside `tf.function`) run a compiled function
    per layer and input signature, with `tf.function`'s rule for Python
    state: see `keras_node.odeint`.

    Example:

    ```python
    model = keras.Sequential([
        keras.Input((2,)),
        keras_node.ODELayer(keras_node.dynamics.MLP(units=(64,))),
        keras.layers.Dense(1),
    ])
    model.compile("adam", "mse")
    model.fit(x, y, callbacks=[keras_node.callbacks.NFELogger()])

    # Regularised (fewer function evaluations as training goes on) and
    # augmented by 2 zero channels (output (batch, 4)):
    keras_node.ODELayer(keras_node.dynamics.MLP(units=(64,)), augment_dim=2,
                        regularizers={"kinetic": 0.01, "jacobian_frobenius": 0.01})
    ```
    """

    def __init__(
        self, dynamics, t=(0.0, 1.0), *, method="dopri5", rtol=1e-3, atol=1e-6,
        gradient="adjoint", return_sequences=False, first_step=None, step_size=None,
        max_num_steps=10_000, adjoint_method=None, adjoint_rtol=None, adjoint_atol=None,
        adjoint_seminorm=True, adjoint_checkpoints=DEFAULT_CHECKPOINTS, jit_compile="auto",
        per_sample_steps=False, max_step=None, step_times=None, jump_times=None,
        regularizers=None, augment_dim=0, **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(dynamics, keras.layers.Layer):
            raise TypeError(
                "dynamics must be a Keras layer or model computing dh/dt (e.g. "
                "keras_node.dynamics.MLP()). Received: dynamics of type "
                f"{type(dynamics).__name__}"
            )
        self.dynamics = dynamics
        self.t = config_times(t)
        self.options = SolverOptions(method=method, rtol=rtol, atol=atol, first_step=first_step,
                                     step_size=step_size, max_num_steps=max_num_steps,
                                     jit_compile=jit_compile,
                                     batch_axis=0 if check_bool(per_sample_steps, "per_sample_steps") else None,
                                     max_step=max_step, step_times=step_times, jump_times=jump_times)
        self.adjoint_options = AdjointOptions(
            adjoint_method=adjoint_method, adjoint_rtol=adjoint_rtol, adjoint_atol=adjoint_atol,
            adjoint_seminorm=adjoint_seminorm, adjoint_checkpoints=adjoint_checkpoints,
        )
        self.gradient = check_choice(gradient, "gradient", GRADIENT_MODES)
        self.return_sequences = check_bool(return_sequences, "return_sequences")
        self.model_options = ModelOptions(regularizers=regularizers, augment_dim=augment_dim)
        layout = Layout(terms=self.model_options.terms)
        self._regularization = Regularization(self, regularizers, layout)
        self._time_dependent = takes_time(dynamics)
        self._counters = None

    @property
    def augment_dim(self):
        """Zero channels appended to the last axis (Dupont et al. 2019)."""
        return self.model_options.augment_dim

    @property
    def regularizers(self):
        """The regulariser weights, as given (None or a dict)."""
        return self.model_options.regularizers

    # -- building -----------------------------------------------------------

    def build(self, input_shape):
        build_and_check_dynamics(self.dynamics, augmented_shape(input_shape, self.augment_dim),
                                 self.compute_dtype, self._time_dependent)
        self._counters = Counters(self)
        if self._uses_loss_scaling():
            # Loss scaling expects overflowing gradients now and then and
            # lowers its scale: a non-finite backward pass gives NaN gradients.
            self.adjoint_options = dataclasses.replace(self.adjoint_options,
                                                       nonfinite_gradients="nan")

    def compute_output_shape(self, inputs_shape, t_shape=None):
        input_shape = augmented_shape(inputs_shape, self.augment_dim)
        if t_shape is not None:
            check_call_time_rank(len(t_shape), self.per_sample_steps, t_shape)
        if not self.return_sequences:
            return input_shape
        num_times = len(self.t) if t_shape is None else t_shape[-1]
        return (input_shape[0], num_times) + input_shape[1:]

    # -- calling ------------------------------------------------------------

    @property
    def per_sample_steps(self):
        """Whether each sample of the batch is solved with its own steps."""
        return self.options.batch_axis == 0

    def _call_dynamics(self, t, h):
        if self._time_dependent and t.shape.rank == 1:
            # Per-sample steps: a time per sample, shaped to broadcast against h.
            t = tf.reshape(t, [-1] + [1] * (h.shape.rank - 1))
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
        if t is None:
            times = tf.constant(self.t, dtype=time_dtype(inputs.dtype))
        else:
            times = t
            if getattr(t, "shape", None) is not None and t.shape.rank is not None:
                check_call_time_rank(t.shape.rank, self.per_sample_steps, t.shape)
        ys = self._solve(augment(inputs, self.augment_dim), times, training)
        if not self.return_sequences:
            return ys[-1]
        rank = len(ys.shape)
        return tf.transpose(ys, [1, 0] + list(range(2, rank)))

    def _solve(self, h0, times, training):
        """The solve, with the regularisers' states when there are any
        (their losses and metrics reported); returns h at every time."""
        layout = self._regularization.layout
        regularized = bool(layout.terms) and bool(training)
        func, y0, options = self._call_dynamics, h0, self.options
        if regularized:
            func, options = self._call_regularized, solve_options(options, layout)
            y0 = layout.initial_state(h0, self._regularization.probe(h0))
        name = f"ODELayer {self.name!r}"
        if self.gradient == "adjoint":
            ys, stats = solve_adjoint(
                func, y0, times, options, self.adjoint_options,
                variables=self.dynamics.trainable_variables,
                backward_stats=self._counters.backward, name=name,
            )
        else:
            ys, stats = solve(func, y0, times, options, name=name)
        if regularized:
            ys, _, integrals = layout.split(ys, time_direction(times, h0.dtype))
            self._regularization.report(integrals)
        return self._counters.record_forward(ys, stats)

    def _call_regularized(self, t, state):
        return self._regularization.layout.dynamics(self._call_dynamics)(t, state)

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
        """Function evaluations of the last call's backward (adjoint) solve:
        0 when that call computed no gradient (`predict`, validation)."""
        return self._counter_value("nfe_backward")

    def _counter_value(self, name):
        if self._counters is None:
            return 0
        return int(keras.ops.convert_to_numpy(getattr(self._counters, name)))

    # -- serialization ------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        config.update(
            dynamics=keras.saving.serialize_keras_object(self.dynamics), t=list(self.t),
            gradient=self.gradient, return_sequences=self.return_sequences,
            **self.options.to_config(), **self.adjoint_options.to_config(),
            **self.model_options.to_config(),
        )
        config["per_sample_steps"] = config.pop("batch_axis") == 0
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
