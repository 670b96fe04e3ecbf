"""Ready-made, serializable dynamics layers for `ODELayer`.

Both blocks start as the zero vector field (their last projection is
zero-initialised), so a fresh `ODELayer` is the identity map: training starts
from a well-conditioned point and the first solves are cheap, the same idea
as zero-initialising the last layer of a residual block.
"""

import math

import keras
from keras import ops

from keras_node._validate import check_bool


@keras.saving.register_keras_serializable(package="keras_node")
class MLP(keras.layers.Layer):
    """Time-dependent MLP vector field for feature vectors.

    `dh/dt = W_out act(... act(W_1 [h, t] + b_1) ...) + b_out`, with time
    appended as an extra input feature of every hidden layer when
    `time_dependent=True`. The output width equals the state's last
    dimension; inputs of any rank are mapped along their last axis.

    Args:
        units: hidden widths, e.g. `(64, 64)`.
        activation: hidden activation (smooth ones such as `"tanh"` or
            `"softplus"` keep adaptive solvers cheap; ReLU's kinks force
            small steps).
        time_dependent: feed `t` to the network.
        kernel_initializer: initializer of the hidden layers.
        final_initializer: initializer of the output projection (default
            `"zeros"`: start as the identity map).
        **kwargs: standard layer arguments.

    Call arguments:
        h: state `(batch, ..., features)`.
        t: scalar time (ignored when `time_dependent=False`).
    """

    def __init__(self, units=(64, 64), activation="tanh", time_dependent=True,
                 kernel_initializer="glorot_uniform", final_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        check_bool(time_dependent, "time_dependent")
        if not isinstance(units, (int, list, tuple)) or isinstance(units, bool):
            raise TypeError(f"units must be an int or a sequence of ints (hidden widths). Received: units={units!r}")
        units = (units,) if isinstance(units, int) else tuple(units)
        if not units or any(not isinstance(u, int) or isinstance(u, bool) or u < 1 for u in units):
            raise ValueError(
                f"units must be a non-empty sequence of positive integers. Received: units={units!r}"
            )
        self.units = units
        self.activation = keras.activations.get(activation)
        self.time_dependent = bool(time_dependent)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.final_initializer = keras.initializers.get(final_initializer)
        self.hidden = [
            keras.layers.Dense(u, kernel_initializer=self.kernel_initializer, name=f"hidden_{i}",
                               dtype=self.dtype_policy)
            for i, u in enumerate(units)
        ]
        self.output_layer = None

    def build(self, input_shape):
        features = input_shape[-1]
        if features is None:
            raise ValueError(f"MLP dynamics need a known last dimension. Received: input_shape={input_shape}")
        extra = 1 if self.time_dependent else 0
        width = features
        for layer in self.hidden:
            layer.build(tuple(input_shape[:-1]) + (width + extra,))
            width = layer.units
        self.output_layer = keras.layers.Dense(
            features, kernel_initializer=self.final_initializer, bias_initializer="zeros",
            name="output", dtype=self.dtype_policy,
        )
        self.output_layer.build(tuple(input_shape[:-1]) + (width,))

    def call(self, h, t=None):
        x = h
        for layer in self.hidden:
            x = layer(_with_time(x, t) if self.time_dependent else x)
            x = self.activation(x)
        return self.output_layer(x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            units=list(self.units), activation=keras.activations.serialize(self.activation),
            time_dependent=self.time_dependent,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            final_initializer=keras.initializers.serialize(self.final_initializer),
        )
        return config


@keras.saving.register_keras_serializable(package="keras_node")
class ConvBlock(keras.layers.Layer):
    """The ODE-Net convolution block of Chen et al. (2018) for images.

    norm -> act -> conv([h, t]) -> norm -> act -> conv([h, t]) on
    `(batch, height, width, channels)`, time appended as an extra channel
    when `time_dependent=True`, group normalisation, 'same' padding. The
    output keeps the state's channels; `filters` is the hidden width.

    Args:
        filters: hidden channels.
        kernel_size: convolution window.
        time_dependent: feed `t` as an extra channel.
        activation: default `"softplus"` (smooth: cheaper adaptive solves
            than the paper's ReLU).
        groups: maximum number of normalisation groups (reduced to a
            divisor of the channel count).
        final_initializer: initializer of the last convolution (default
            `"zeros"`: start as the identity map).
        **kwargs: standard layer arguments.
    """

    def __init__(self, filters=64, kernel_size=3, time_dependent=True, activation="softplus",
                 groups=32, final_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(filters, int) or isinstance(filters, bool) or filters < 1:
            raise ValueError(f"filters must be a positive integer. Received: filters={filters!r}")
        if not isinstance(kernel_size, int) or isinstance(kernel_size, bool) or kernel_size < 1:
            raise ValueError(f"kernel_size must be a positive integer. Received: kernel_size={kernel_size!r}")
        if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
            raise ValueError(f"groups must be a positive integer. Received: groups={groups!r}")
        check_bool(time_dependent, "time_dependent")
        self.filters = filters
        self.kernel_size = kernel_size
        self.time_dependent = bool(time_dependent)
        self.activation = keras.activations.get(activation)
        self.groups = groups
        self.final_initializer = keras.initializers.get(final_initializer)

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                "ConvBlock dynamics expect images (batch, height, width, channels) with known "
                f"channels. Received: input_shape={tuple(input_shape)}"
            )
        channels = input_shape[-1]
        extra = 1 if self.time_dependent else 0
        spatial = tuple(input_shape[:-1])
        policy = self.dtype_policy
        self.norm_in = keras.layers.GroupNormalization(math.gcd(self.groups, channels), dtype=policy, name="norm_in")
        self.conv_hidden = keras.layers.Conv2D(self.filters, self.kernel_size, padding="same", dtype=policy, name="conv_hidden")
        self.norm_hidden = keras.layers.GroupNormalization(math.gcd(self.groups, self.filters), dtype=policy, name="norm_hidden")
        self.conv_out = keras.layers.Conv2D(channels, self.kernel_size, padding="same",
                                            kernel_initializer=self.final_initializer, dtype=policy, name="conv_out")
        self.norm_in.build(tuple(input_shape))
        self.conv_hidden.build(spatial + (channels + extra,))
        self.norm_hidden.build(spatial + (self.filters,))
        self.conv_out.build(spatial + (self.filters + extra,))

    def call(self, h, t=None):
        x = self.activation(self.norm_in(h))
        x = self.conv_hidden(_with_time(x, t) if self.time_dependent else x)
        x = self.activation(self.norm_hidden(x))
        return self.conv_out(_with_time(x, t) if self.time_dependent else x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters, kernel_size=self.kernel_size, time_dependent=self.time_dependent,
            activation=keras.activations.serialize(self.activation), groups=self.groups,
            final_initializer=keras.initializers.serialize(self.final_initializer),
        )
        return config


def _with_time(x, t):
    """Append `t` (a scalar) to `x` as one more feature/channel."""
    if t is None:
        t = 0.0
    t = ops.cast(t, x.dtype)
    return ops.concatenate([x, ops.ones_like(x[..., :1]) * t], axis=-1)
