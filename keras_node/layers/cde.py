"""`NeuralCDE`: a neural controlled differential equation over a cubic spline."""

import keras
import tensorflow as tf

from keras_node.interpolate import CubicSpline
from keras_node.layers import series
from keras_node.layers.call_times import takes_time
from keras_node.layers.dynamics_check import symbolic_output
from keras_node.options import check_bool, check_int


@keras.saving.register_keras_serializable(package="keras_node")
class NeuralCDE(keras.layers.Layer):
    """Neural CDE (Kidger et al. 2020): `dz/dt = vector_field(z, t) · dX/dt`.

    X is the natural cubic spline (`keras_node.CubicSpline`) through each
    series' observations, so irregular times and missing values (NaN) are
    part of the input, not a preprocessing step. The hidden state starts at
    `z(t0) = initial(X(t0))` (a learned linear map, a `Dense` layer) and is
    integrated over the observation times by `keras_node.odeint` (or
    `odeint_adjoint`).

    Args:
        vector_field: a Keras layer or model mapping z `(batch, hidden_size)`
            to a matrix `(batch, hidden_size, channels)` (e.g. an MLP ending
            in `keras.layers.Reshape((hidden_size, channels))`). Called as
            `vector_field(z, t=t)` when its `call` takes `t`.
        hidden_size: size of z.
        return_sequences: return z at every observation time,
            `(batch, n, hidden_size)`, instead of the last, `(batch,
            hidden_size)`.
        gradient: `"adjoint"` (default) or `"backprop"`. With the adjoint,
            gradients reach the vector field, the initial map and `values`
            through X(t0), but not `values` through dX/dt (the spline enters
            the adjoint as a constant): when `values` come out of trainable
            layers, use `"backprop"`.
        method, rtol, atol, first_step, step_size, max_num_steps,
            jit_compile, adjoint_method, adjoint_rtol, adjoint_atol,
            adjoint_seminorm, adjoint_checkpoints: the solver's options, as
            for `keras_node.ODELayer`.
        **kwargs: standard Keras layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `(values, times)`: `values` `(batch, n, channels)` (NaN =
            missing, filled as `CubicSpline` says), `times` `(n,)` shared or
            `(batch, n)` per sample, strictly increasing. Per-sample times
            solve each sample on its own times with its own steps
            (`batch_axis=0` of `odeint`); time-dependent vector fields then
            get `t` shaped `(batch, 1)`.

    Output shape:
        `(batch, hidden_size)`, or `(batch, n, hidden_size)` with
        `return_sequences=True`.

    Example:

    ```python
    channels, hidden = 3, 16
    field = keras.Sequential([
        keras.layers.Dense(64, activation="softplus"),
        keras.layers.Dense(hidden * channels, activation="tanh"),
        keras.layers.Reshape((hidden, channels)),
    ])
    values = keras.Input((50, channels))
    times = keras.Input((50,))
    z = keras_node.NeuralCDE(field, hidden)([values, times])
    model = keras.Model([values, times], keras.layers.Dense(1)(z))
    ```
    """

    def __init__(self, vector_field, hidden_size, *, return_sequences=False, **kwargs):
        self.settings = series.OdeSettings.pop_from(kwargs)
        super().__init__(**kwargs)
        self.vector_field = series.check_sublayer(
            vector_field, "vector_field", "z -> a (batch, hidden_size, channels) matrix")
        self.hidden_size = check_int(hidden_size, "hidden_size", 1)
        self.return_sequences = check_bool(return_sequences, "return_sequences")
        self.initial = keras.layers.Dense(self.hidden_size, name="initial", dtype=self.dtype_policy)
        self._time_dependent = takes_time(vector_field)
        self._graph_call = series.GraphCall(self._forward)

    def build(self, input_shape):
        batch, _, channels = series.values_shape(input_shape, self)
        self.initial.build((batch, channels))
        out = symbolic_output(self.vector_field, (batch, self.hidden_size), self.compute_dtype,
                              self._time_dependent)
        if tuple(getattr(out, "shape", ()))[1:] != (self.hidden_size, channels):
            raise ValueError(
                "The vector_field of a NeuralCDE must return a matrix (batch, hidden_size, "
                f"channels) = (batch, {self.hidden_size}, {channels}). Received: output shape "
                f"{getattr(out, 'shape', type(out).__name__)} from {self.vector_field.name!r} "
                "(end it with keras.layers.Reshape((hidden_size, channels)))")

    def compute_output_shape(self, inputs_shape):
        batch, n, _ = series.values_shape(inputs_shape, self)
        if self.return_sequences:
            return (batch, n, self.hidden_size)
        return (batch, self.hidden_size)

    def call(self, inputs, training=None):
        values, times = series.split_inputs(inputs, self)[:2]
        return self._graph_call(values, times)

    def _forward(self, values, times, recording):
        spline = CubicSpline(times, values)
        t0 = times[..., 0]
        z0 = tf.cast(self.initial(spline.evaluate(t0)), values.dtype)

        def func(t, z):
            matrix = series.call_sublayer(self.vector_field, self._time_dependent, z, t)
            return tf.einsum("bhc,bc->bh", tf.cast(matrix, z.dtype), spline.derivative(t))

        variables = self.vector_field.trainable_variables
        zs = self.settings.solve(func, z0, times,
                                 variables, name=f"NeuralCDE {self.name!r}", recording=recording)
        if not self.return_sequences:
            return zs[-1]
        return tf.transpose(zs, [1, 0, 2])

    def get_config(self):
        config = super().get_config()
        config.update(vector_field=keras.saving.serialize_keras_object(self.vector_field),
                      hidden_size=self.hidden_size, return_sequences=self.return_sequences,
                      **self.settings.to_config())
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        vector_field = series.deserialize_sublayer(config, "vector_field", "NeuralCDE")
        return cls(vector_field, **config)
