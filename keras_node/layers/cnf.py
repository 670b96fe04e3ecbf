"""`CNF`: a continuous normalizing flow (FFJORD, Grathwohl et al. 2019)."""

import math

import keras
import tensorflow as tf

from keras_node._validate import check_choice
from keras_node.adjoint import solve_adjoint
from keras_node.divergence import rademacher
from keras_node.layers.call_times import config_times, takes_time
from keras_node.layers.counters import Counters
from keras_node.layers.dynamics_check import build_and_check_dynamics
from keras_node.layers.ode_layer import GRADIENT_MODES
from keras_node.layers.regularized import Regularization, solve_options, time_direction
from keras_node.odeint import solve
from keras_node.options import AdjointOptions, ModelOptions, SolverOptions
from keras_node.regularizers import Layout

TRACES = ("auto", "exact", "hutchinson")
EXACT_IN_TRAINING_UP_TO = 16  # event sizes: "auto" uses the exact trace up to these
EXACT_IN_EVALUATION_UP_TO = 64


def standard_normal_log_prob(z):
    """`log N(z; 0, I)` per sample, over every non-batch axis."""
    flat = tf.reshape(z, [tf.shape(z)[0], -1])
    size = tf.cast(tf.shape(flat)[1], z.dtype)
    return -0.5 * tf.reduce_sum(tf.square(flat), axis=1) - 0.5 * size * math.log(2.0 * math.pi)


@keras.saving.register_keras_serializable(package="keras_node")
class CNF(keras.Model):
    """Continuous normalizing flow: a density through an ODE (FFJORD).

    `dynamics(h, t=t)` carries a data point `x` at `t[0]` to `z = h(t[-1])`
    on the base side, a standard normal over the event shape (all
    non-batch axes); by the instantaneous change of variables
    `log p(x) = log N(z; 0, I) + int_{t0}^{t1} tr(df/dh) dt`, integrated in
    the same solve as `h` (the log-density is under error control).

    Args:
        dynamics: a Keras layer giving dh/dt with the shape of h (called
            as `dynamics(h, t=t)` when its `call` takes `t`). Samples must
            not interact (no batch statistics).
        t: the times; the flow runs from `t[0]` (data) to `t[-1]` (base).
        trace: `"exact"` (D vector-Jacobian products, D the event size),
            `"hutchinson"` (one Rademacher probe per solve, fixed within it)
            or `"auto"` (exact up to D = 16; above, Hutchinson in training
            and exact in evaluation up to D = 64). Settable later:
            `cnf.trace = "exact"`, also after loading.
        method, rtol, atol: the solver and its tolerances.
        gradient: `"adjoint"` (default; the state [h, log-density, ...]
            goes through `odeint_adjoint`) or `"backprop"`.
        regularizers: as for `keras_node.ODELayer` (RNODE terms, in
            training, logged as `reg_<key>`); the Frobenius term and a
            Hutchinson trace share one probe product.
        **model_kwargs: `keras.Model` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: data `(batch, ...)`.
        training: Keras' flag (selects the "auto" trace and regularisers).

    Returns (call):
        `log_prob(inputs)`, shape `(batch,)`; the mean negative
        log-likelihood is added as a loss, so `compile(optimizer)` and
        `fit(x)` with no loss argument train by maximum likelihood and
        `evaluate(x)` reports the NLL in nats as `loss`.

    Build the model (or call it on data) before `fit`: the solver's
    `jit_compile="auto"` check then sees initialised weights (on a model
    that Keras builds inside `fit` it warns and runs without XLA).

    Example:

    ```python
    cnf = keras_node.CNF(keras_node.dynamics.MLP(units=(64, 64)))
    cnf.build((None, 2))
    cnf.compile(keras.optimizers.Adam(1e-3))
    cnf.fit(x, epochs=10, batch_size=256)      # x: (n, 2) data
    nll = -cnf.log_prob(x_test).numpy().mean()
    samples = cnf.sample(1000, seed=0)
    ```
    """

    def __init__(self, dynamics, *, t=(0.0, 1.0), trace="auto", method="dopri5", rtol=1e-5,
                 atol=1e-5, gradient="adjoint", regularizers=None, **model_kwargs):
        super().__init__(**model_kwargs)
        if not isinstance(dynamics, keras.layers.Layer):
            raise TypeError("dynamics must be a Keras layer computing dh/dt (e.g. "
                            "keras_node.dynamics.MLP()). Received: dynamics of type "
                            f"{type(dynamics).__name__}")
        self.dynamics = dynamics
        self.t = config_times(t)
        self.options = SolverOptions(method=method, rtol=rtol, atol=atol)
        self.adjoint_options = AdjointOptions()
        self.gradient = check_choice(gradient, "gradient", GRADIENT_MODES)
        self.model_options = ModelOptions(regularizers=regularizers)
        # The probe's seed generator always exists: the trace may change.
        self._regularization = Regularization(
            self, regularizers, Layout(terms=self.model_options.terms, trace="hutchinson"))
        self._trace = check_choice(trace, "trace", TRACES)
        self._time_dependent = takes_time(dynamics)
        self.event_shape = None
        self._counters = None
        object.__setattr__(self, "_solve_dynamics", {})  # per Layout; not tracked by Keras

    @property
    def trace(self):
        """The divergence estimator: "auto", "exact" or "hutchinson"."""
        return self._trace

    @trace.setter
    def trace(self, value):
        self._trace = check_choice(value, "trace", TRACES)
        # Keras' compiled train/test/predict steps read the old trace.
        self.train_function = self.test_function = self.predict_function = None

    def build(self, input_shape):
        self.event_shape = tuple(input_shape[1:])
        build_and_check_dynamics(self.dynamics, (None,) + self.event_shape, self.compute_dtype,
                                 self._time_dependent)
        self._counters = Counters(self)

    @property
    def nfe_forward(self):
        """Function evaluations of the last density solve (int)."""
        return 0 if self._counters is None else int(self._counters.nfe_forward.numpy())

    def _resolve_trace(self, training):
        if self._trace != "auto":
            return self._trace
        size = math.prod(self.event_shape)
        limit = EXACT_IN_TRAINING_UP_TO if training else EXACT_IN_EVALUATION_UP_TO
        return "exact" if size <= limit else "hutchinson"

    def _call_dynamics(self, t, h):
        out = self.dynamics(h, t=t) if self._time_dependent else self.dynamics(h)
        return tf.cast(out, h.dtype)

    def _dynamics_for(self, layout):
        """The solve's dynamics for `layout`, one function per layout (eager
        solves are compiled once per function)."""
        if layout not in self._solve_dynamics:
            self._solve_dynamics[layout] = layout.dynamics(self._call_dynamics)
        return self._solve_dynamics[layout]

    def _log_prob(self, x, training):
        if not self.built:
            self.build(x.shape)
        x = tf.cast(x, self.compute_dtype)
        terms = self._regularization.layout.terms if training else ()
        layout = Layout(terms=terms, trace=self._resolve_trace(training))
        probe = rademacher(x, seed=self._probe_seed) if layout.probe else None
        options = solve_options(self.options, layout)
        times = tf.constant([self.t[0], self.t[-1]], x.dtype)
        func, name = self._dynamics_for(layout), f"CNF {self.name!r}"
        if self.gradient == "adjoint":
            ys, stats = solve_adjoint(func, layout.initial_state(x, probe), times, options,
                                      self.adjoint_options,
                                      variables=self.dynamics.trainable_variables,
                                      backward_stats=self._counters.backward, name=name)
        else:
            ys, stats = solve(func, layout.initial_state(x, probe), times, options, name=name)
        z, log_det, integrals = layout.split(ys, time_direction(times, x.dtype))
        if terms:
            self._regularization.report(integrals)
        log_prob = standard_normal_log_prob(z[-1]) + log_det[-1]
        return self._counters.record_forward(log_prob, stats)

    def call(self, inputs, training=None):
        log_prob = self._log_prob(tf.convert_to_tensor(inputs), bool(training))
        self.add_loss(-tf.reduce_mean(log_prob))
        return log_prob

    def compute_output_spec(self, inputs, training=None):
        # Keras' symbolic build (fit on an unbuilt model) needs only the
        # shape: no solve on placeholders, whose variables are not yet
        # initialised (the XLA probe of the solve would fail on them).
        return keras.KerasTensor(tuple(inputs.shape[:1]), dtype=self.compute_dtype)

    def log_prob(self, x):
        """`log p(x)` in nats, shape `(batch,)` (evaluation mode: the
        "auto" trace is exact up to event size 64)."""
        return self._log_prob(tf.convert_to_tensor(x), training=False)

    def sample(self, n, seed=None):
        """`n` samples `(n, *event_shape)`: base draws integrated from `t[-1]`
        back to `t[0]`. `seed`: an int or `keras.random.SeedGenerator`."""
        if self.event_shape is None:
            raise ValueError("CNF.sample needs the event shape: call the model on data "
                             "(or fit it, or build it) first.")
        z = keras.random.normal((n,) + self.event_shape, dtype=self.compute_dtype, seed=seed)
        times = tf.constant([self.t[-1], self.t[0]], z.dtype)
        ys, _ = solve(self._call_dynamics, z, times, self.options, name=f"CNF {self.name!r}")
        return ys[-1]

    def get_config(self):
        return {
            "name": self.name, "dtype": keras.saving.serialize_keras_object(self.dtype_policy),
            "dynamics": keras.saving.serialize_keras_object(self.dynamics), "t": list(self.t),
            "trace": self._trace, "method": self.options.method, "rtol": self.options.rtol,
            "atol": self.options.atol, "gradient": self.gradient,
            "regularizers": self.model_options.regularizers,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        dynamics = keras.saving.deserialize_keras_object(config.pop("dynamics"))
        dtype = config.pop("dtype", None)
        if isinstance(dtype, dict):
            dtype = keras.saving.deserialize_keras_object(dtype)
        return cls(dynamics, dtype=dtype, **config)
