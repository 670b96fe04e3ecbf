"""`ODERNN`: an RNN whose hidden state follows an ODE between observations."""

import keras
import tensorflow as tf

from keras_node.layers import series
from keras_node.layers.call_times import takes_time
from keras_node.layers.dynamics_check import symbolic_output
from keras_node.options import check_bool


@keras.saving.register_keras_serializable(package="keras_node")
class ODERNN(keras.layers.Layer):
    """ODE-RNN (Rubanova, Chen & Duvenaud 2019) over irregularly sampled series.

    Between two observations the hidden state h follows `dh/dt =
    dynamics(h)` (solved by `keras_node.odeint` or `odeint_adjoint` from
    t_{i-1} to t_i, per sample when the times are); at each observation
    the RNN `cell` updates it with the observed values. Masked observations
    are skipped: h only evolves across them. With zero dynamics this is
    `keras.layers.RNN(cell)` (which keeps the state at masked steps).

    With `gradient="backprop"` (the default here) the observations are a
    `tf.while_loop` in the graph (one solve per interval, traced once), so
    long series cost no tracing time. `gradient="adjoint"` unrolls them in
    the graph instead (tracing time grows with n), since TensorFlow cannot
    differentiate a while loop around the adjoint's custom gradient; the
    solves between observations are usually short, so backprop's memory
    rarely matters.

    Args:
        cell: a Keras RNN cell with a single state vector, e.g.
            `keras.layers.GRUCell(units)` or `SimpleRNNCell` (LSTM's two
            states are not supported).
        dynamics: a Keras layer or model mapping h `(batch, units)` to
            dh/dt of the same shape; called as `dynamics(h, t=t)` when its
            `call` takes `t`.
        return_sequences: return h after every observation, `(batch, n,
            units)`, instead of after the last, `(batch, units)`.
        gradient: `"backprop"` (default) or `"adjoint"`, see above.
        method, rtol, atol, first_step, step_size, max_num_steps,
            jit_compile, adjoint_method, adjoint_rtol, adjoint_atol,
            adjoint_seminorm, adjoint_checkpoints: the solver's options, as
            for `keras_node.ODELayer`.
        **kwargs: standard Keras layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `(values, times)` or `(values, times, mask)`: `values`
            `(batch, n, channels)`, `times` `(n,)` or `(batch, n)` strictly
            increasing, `mask` `(batch, n)` (True = observed). h starts at
            zero at the first time.

    Output shape:
        `(batch, units)`, or `(batch, n, units)` with `return_sequences`.

    Example:

    ```python
    values, times = keras.Input((40, 3)), keras.Input((40,))
    h = keras_node.ODERNN(keras.layers.GRUCell(32),
                          keras_node.dynamics.MLP(units=(32,)))([values, times])
    model = keras.Model([values, times], keras.layers.Dense(1)(h))
    ```
    """

    def __init__(self, cell, dynamics, *, return_sequences=False, **kwargs):
        kwargs.setdefault("gradient", "backprop")
        self.settings = series.OdeSettings.pop_from(kwargs)
        super().__init__(**kwargs)
        self.cell = series.check_sublayer(cell, "cell", "an RNN cell such as GRUCell")
        self.dynamics = series.check_sublayer(dynamics, "dynamics", "h -> dh/dt")
        self.units = _state_size(cell)
        self.return_sequences = check_bool(return_sequences, "return_sequences")
        self._time_dependent = takes_time(dynamics)
        self._graph_call = series.GraphCall(self._forward)

    def build(self, input_shape):
        batch, _, channels = series.values_shape(input_shape, self, with_mask=True)
        if not self.cell.built:
            self.cell.build((batch, channels))
        out = symbolic_output(self.dynamics, (batch, self.units), self.compute_dtype,
                              self._time_dependent)
        if tuple(getattr(out, "shape", ()))[1:] != (self.units,):
            raise ValueError(
                f"The dynamics of an ODERNN must return dh/dt with the shape of h (batch, "
                f"{self.units}). Received: output shape {getattr(out, 'shape', type(out).__name__)} "
                f"from {self.dynamics.name!r}")

    def compute_output_shape(self, inputs_shape):
        batch, n, _ = series.values_shape(inputs_shape, self, with_mask=True)
        return (batch, n, self.units) if self.return_sequences else (batch, self.units)

    def call(self, inputs, training=None):
        values, times, mask = series.split_inputs(inputs, self, with_mask=True)
        if mask is None:
            mask = tf.ones(tf.shape(values)[:2], dtype=tf.bool)
        return self._graph_call(values, times, mask)

    def _forward(self, values, times, mask, recording):
        h = self._update(tf.zeros([tf.shape(values)[0], self.units], values.dtype),
                         values[:, 0], mask[:, 0])
        if self.settings.gradient == "adjoint":
            h, states = self._unrolled(h, values, times, mask, recording)
        else:
            h, states = self._looped(h, values, times, mask, recording)
        if not self.return_sequences:
            return h
        return tf.transpose(states, [1, 0, 2])

    def _step(self, i, h, values, times, mask, recording):
        """h after observation i, from h after observation i - 1."""
        h = self._evolve(h, tf.gather(times, [i - 1, i], axis=-1), recording)
        return self._update(h, tf.gather(values, i, axis=1), tf.gather(mask, i, axis=1))

    def _looped(self, h, values, times, mask, recording):
        """The observations as a `tf.while_loop` (backprop gradients)."""
        n = tf.shape(values)[1]
        states = tf.TensorArray(values.dtype, size=n, element_shape=h.shape).write(0, h)

        def body(i, h, states):
            h = self._step(i, h, values, times, mask, recording)
            return i + 1, h, states.write(i, h)

        _, h, states = tf.while_loop(lambda i, h, s: i < n, body, (tf.constant(1), h, states),
                                     maximum_iterations=values.shape[1] or n)
        return h, states.stack()

    def _unrolled(self, h, values, times, mask, recording):
        """The observations unrolled in the graph (adjoint gradients: TF
        cannot differentiate a while loop around `odeint_adjoint`'s custom
        gradient, which reads the dynamics' variables)."""
        n = values.shape[1]
        if n is None:
            raise ValueError("ODERNN(gradient=\"adjoint\") needs a known number of observations "
                             "(values of shape (batch, n, channels) with n fixed); use "
                             "gradient=\"backprop\" for a variable n. Received: values with "
                             f"shape {values.shape}")
        states = [h]
        for i in range(1, n):
            h = self._step(i, h, values, times, mask, recording)
            states.append(h)
        return h, tf.stack(states)

    def _evolve(self, h, grid, recording):
        """h at the end of `grid`, `(2,)` or `(batch, 2)`, from h at its start."""

        def func(t, h):
            dh = series.call_sublayer(self.dynamics, self._time_dependent, h, t)
            return tf.cast(dh, h.dtype)

        ys = self.settings.solve(func, h, grid, self.dynamics.trainable_variables,
                                 name=f"ODERNN {self.name!r}", recording=recording)
        return ys[-1]

    def _update(self, h, x, observed):
        """The cell's update of h by the observation x, where observed."""
        # Unobserved values may be NaN: keep them out of the cell, or the
        # gradient through tf.where's unused branch would be NaN * 0.
        x = tf.where(observed[:, None], x, tf.zeros_like(x))
        _, new_states = self.cell(x, [h])
        new_h = tf.cast(tf.nest.flatten(new_states)[0], h.dtype)
        return tf.where(observed[:, None], new_h, h)

    def get_config(self):
        config = super().get_config()
        config.update(cell=keras.saving.serialize_keras_object(self.cell),
                      dynamics=keras.saving.serialize_keras_object(self.dynamics),
                      return_sequences=self.return_sequences, **self.settings.to_config())
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        cell = series.deserialize_sublayer(config, "cell", "ODERNN")
        dynamics = series.deserialize_sublayer(config, "dynamics", "ODERNN")
        return cls(cell, dynamics, **config)


def _state_size(cell):
    """The size of the cell's single state vector."""
    size = getattr(cell, "state_size", None)
    if isinstance(size, (list, tuple)) and len(size) == 1:
        size = size[0]
    if not isinstance(size, int) or isinstance(size, bool):
        raise ValueError(
            "The cell of an ODERNN must be a Keras RNN cell with a single state vector "
            "(state_size an integer, e.g. keras.layers.GRUCell or SimpleRNNCell). Received: "
            f"cell {type(cell).__name__} with state_size={size!r}")
    return size
