"""keras_node.ODELayer against the contract (API.md, "Keras layer").

Part 1 runs the layer harness (_layer_harness.py) over inputs of rank 2
(features), 3 (sequences) and 4 (images), with and without
`return_sequences`. Part 2 checks values on dynamics solvable by hand. Part 3
checks argument validation. Part 4 trains small models in the ways the
contract lists (Sequential, functional, subclassed, XLA, images, mixed
precision) and reads the solver counters.

Models are tiny (state 2-4, hidden width 8) and trained for a few epochs:
what is tested is that training works, not how well.

Compile cost: by default (`jit_compile="auto"`) every new layer and input
shape XLA-compiles its solver loops, several times the cost of a plain
trace. conftest.py runs "auto" as a plain graph except in tests marked
`auto_jit`; here the real default is exercised by
`test_default_jit_compile_matches_plain_graph` and by the Sequential
training (`fitted`, a module-scoped fixture built before that patch), and
XLA by the tests that pass `jit_compile=True`.
"""

import types

import keras
import warnings

import numpy as np
import pytest
import tensorflow as tf

import _layer_harness as harness
import keras_node
from conftest import in_regime
from keras_node.dynamics import MLP, ConvBlock
from problems import eps, error_tolerance

# =============================================================================
# Part 1: the layer harness
# =============================================================================

TIMES = (0.0, 0.5, 1.0)
PLUMBING = {"jit_compile": False}  # see the module docstring


def _sequential_dynamics():
    # A plain Keras model as dynamics: autonomous (its call takes no `t`).
    return keras.Sequential([keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)])


# name -> (dynamics factory, input shape). The last projections are not
# zero-initialised, so the layer is not the identity map.
CASES = {
    "features": (lambda: MLP(units=(8,), final_initializer="glorot_uniform"), (16, 3)),
    "sequences": (lambda: MLP(units=(8,), final_initializer="glorot_uniform"), (16, 5, 3)),
    "images": (lambda: ConvBlock(filters=8, groups=4, final_initializer="glorot_uniform"), (4, 8, 8, 4)),
    "keras_model_dynamics": (_sequential_dynamics, (16, 3)),
}


@pytest.fixture(params=sorted(CASES))
def case(request):
    make_dynamics, input_shape = CASES[request.param]
    return make_dynamics, input_shape


@pytest.fixture(params=[False, True], ids=["last", "sequences"])
def return_sequences(request):
    return request.param


def _factory(make_dynamics, return_sequences, **kwargs):
    def make_layer():
        return keras_node.ODELayer(make_dynamics(), t=TIMES, return_sequences=return_sequences,
                                   **PLUMBING, **kwargs)

    return make_layer


def test_eager_and_symbolic_call(case, return_sequences):
    make_dynamics, input_shape = case
    x = harness.sample(input_shape)
    expected = harness.expected_output_shape(input_shape, len(TIMES), return_sequences)
    harness.check_eager_and_symbolic_call(_factory(make_dynamics, return_sequences), x, expected)


def test_build_with_and_without_batch_size(case):
    make_dynamics, input_shape = case
    x = harness.sample(input_shape)
    expected = harness.expected_output_shape(input_shape, len(TIMES), True)
    harness.check_build(_factory(make_dynamics, True), x, expected, batch_sizes=(input_shape[0], 3))


def test_rows_do_not_depend_on_batch(case):
    make_dynamics, input_shape = case
    layer = _factory(make_dynamics, False)()
    harness.check_rows_independent_of_batch(layer, harness.sample(input_shape), sizes=(3,))


def test_config_round_trip(case):
    make_dynamics, input_shape = case
    layer = _factory(make_dynamics, False)()
    harness.check_config_round_trip(layer, harness.sample(input_shape))


def test_config_round_trip_keeps_non_default_arguments():
    settings = dict(
        t=[0.0, 0.25, 2.0], method="bosh3", rtol=1e-4, atol=1e-7, gradient="backprop",
        return_sequences=True, first_step=0.01, max_num_steps=500, adjoint_seminorm=False,
        adjoint_checkpoints=3, jit_compile=False, name="my_ode",
    )
    layer = keras_node.ODELayer(MLP(units=(8,), final_initializer="glorot_uniform"), **settings)
    config = harness.check_config_round_trip(layer, harness.sample((8, 3)))
    for key, value in settings.items():
        assert config[key] == value, key
    assert config["dynamics"]["config"]["units"] == [8]


def test_return_sequences_last_step_matches_final_state():
    x = harness.sample((8, 3))
    sequences = keras_node.ODELayer(MLP(units=(8,), final_initializer="glorot_uniform"),
                                    t=TIMES, return_sequences=True, **PLUMBING)
    ys = np.asarray(sequences(x))
    config = sequences.get_config()
    config["return_sequences"] = False
    last = keras_node.ODELayer.from_config(config)
    last(x)
    last.set_weights(sequences.get_weights())
    np.testing.assert_array_equal(np.asarray(last(x)), ys[:, -1])


@pytest.mark.auto_jit
def test_default_jit_compile_matches_plain_graph():
    """The default ("auto": XLA-compiled solver loops) computes what a plain graph does."""
    x = harness.sample((8, 3))
    default = keras_node.ODELayer(MLP(units=(8,), final_initializer="glorot_uniform"), t=TIMES)
    assert default.options.jit_compile == "auto"
    y = np.asarray(default(x))
    config = default.get_config()
    config["jit_compile"] = False
    plain = keras_node.ODELayer.from_config(config)
    plain(x)
    plain.set_weights(default.get_weights())
    tol = harness.batch_tolerance(default)  # same steps; XLA may reorder float ops
    np.testing.assert_allclose(np.asarray(plain(x)), y, rtol=tol, atol=tol)


def test_model_predict_with_different_batch_sizes_in_a_row():
    layer = keras_node.ODELayer(MLP(units=(8,), final_initializer="glorot_uniform"), **PLUMBING)
    model = keras.Sequential([keras.Input((3,)), layer])
    x = harness.sample((20, 3))
    reference = np.asarray(layer(x))
    tol = harness.batch_tolerance(layer)
    # Batches of 8, 8, then a partial batch of 4; then one batch of 1.
    for n, batch_size in [(20, 8), (1, 1)]:
        y = model.predict(x[:n], batch_size=batch_size, verbose=0)
        assert y.shape == (n, 3)
        np.testing.assert_allclose(y, reference[:n], rtol=tol, atol=tol)


# =============================================================================
# Part 2: dynamics solvable by hand
# =============================================================================


@keras.saving.register_keras_serializable(package="keras_node_tests")
class Growth(keras.layers.Layer):
    """dh/dt = h (autonomous: `call` takes no `t`), so h(T) = exp(T - t0) h(t0)."""

    def call(self, h):
        return h

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="keras_node_tests")
class CosTime(keras.layers.Layer):
    """dh/dt = cos(t) (time-dependent), so h(T) = h(t0) + sin(T) - sin(t0)."""

    def call(self, h, t):
        return keras.ops.cos(t) * keras.ops.ones_like(h)

    def compute_output_shape(self, input_shape):
        return input_shape


# Tight solver tolerances (the float32 floor of problems.py) so that a wrong
# formula shows, with the project's tolerance policy for the comparison.
RTOL, ATOL = 1e-5, 1e-7


def _tolerance(times):
    return error_tolerance("float32", rtol=RTOL, atol=ATOL, span=abs(times[-1] - times[0]))


def test_linear_autonomous_dynamics_give_exp(regime):
    _check_linear_dynamics((0.0, 1.5), regime)


def test_linear_autonomous_dynamics_backward_in_time():
    _check_linear_dynamics((1.0, 0.0), "eager")


def _check_linear_dynamics(times, regime):
    layer = keras_node.ODELayer(Growth(), t=times, rtol=RTOL, atol=ATOL)
    x = harness.sample((4, 3))
    y = in_regime(lambda h: layer(h), regime)(tf.constant(x))
    expected = np.exp(times[-1] - times[0]) * x
    np.testing.assert_allclose(np.asarray(y), expected, rtol=_tolerance(times), atol=_tolerance(times))


def test_time_dependent_dynamics_give_sin(regime):
    _check_time_dependent_dynamics((-1.0, 0.7, 1.9), regime)


@pytest.mark.parametrize("times", [(0.0, 1.3), (0.5, 2.0)], ids=["from_0", "from_0.5"])
def test_time_dependent_dynamics_give_sin_from(times):
    _check_time_dependent_dynamics(times, "eager")


def _check_time_dependent_dynamics(times, regime):
    layer = keras_node.ODELayer(CosTime(), t=times, rtol=RTOL, atol=ATOL, return_sequences=True)
    x = harness.sample((4, 2, 3))  # rank-3 state: cos(t) broadcast over it
    y = in_regime(lambda h: layer(h), regime)(tf.constant(x))
    sines = np.sin(np.asarray(times)) - np.sin(times[0])
    expected = x[:, None] + sines[None, :, None, None]
    np.testing.assert_allclose(np.asarray(y), expected, rtol=_tolerance(times), atol=_tolerance(times))


@pytest.mark.parametrize("gradient", ["adjoint", "backprop"])
def test_input_gradient_of_linear_dynamics_is_exp(gradient, regime):
    t_end = 1.2
    layer = keras_node.ODELayer(Growth(), t=(0.0, t_end), rtol=RTOL, atol=ATOL, gradient=gradient)

    def input_gradient(h):
        with tf.GradientTape() as tape:
            tape.watch(h)
            loss = tf.reduce_sum(layer(h))
        return tape.gradient(loss, h)

    x = tf.constant(harness.sample((4, 3)))
    grad = in_regime(input_gradient, regime)(x)
    tol = _tolerance((0.0, t_end))
    np.testing.assert_allclose(np.asarray(grad), np.full((4, 3), np.exp(t_end)), rtol=tol, atol=tol)


def test_call_time_override_eager():
    layer = keras_node.ODELayer(Growth(), rtol=RTOL, atol=ATOL, return_sequences=True)
    x = harness.sample((4, 3))
    for times in ([0.0, 0.3, 1.1, 2.0], [0.5, 0.6], [2.0, 1.0, -0.5]):
        y = np.asarray(layer(x, t=tf.constant(times)))
        assert y.shape == (4, len(times), 3)
        expected = np.exp(np.asarray(times) - times[0])[None, :, None] * x[:, None]
        tol = _tolerance(times)
        np.testing.assert_allclose(y, expected, rtol=tol, atol=tol)


def test_call_time_override_without_return_sequences():
    layer = keras_node.ODELayer(Growth(), t=(0.0, 1.0), rtol=RTOL, atol=ATOL)
    x = harness.sample((4, 3))
    y = np.asarray(layer(x, t=tf.constant([0.0, 0.7, 2.0])))
    assert y.shape == (4, 3)
    np.testing.assert_allclose(y, np.exp(2.0) * x, rtol=_tolerance((0.0, 2.0)), atol=_tolerance((0.0, 2.0)))


@pytest.mark.parametrize("num_times", [5, None], ids=["known_length", "unknown_length"])
def test_call_time_override_in_functional_model(num_times):
    h0 = keras.Input((3,))
    times = keras.Input(batch_shape=(num_times,))  # a 1-D symbolic time vector
    layer = keras_node.ODELayer(Growth(), rtol=RTOL, atol=ATOL, return_sequences=True)
    out = layer(h0, t=times)
    assert tuple(out.shape) == (None, num_times, 3)
    model = keras.Model([h0, times], out)

    x = harness.sample((4, 3))
    # Same length twice with different values (no stale traced constants).
    for t_values in ([0.0, 0.1, 0.4, 0.45, 1.3], [0.0, 0.5, 1.0, 1.5, 2.0]):
        y = np.asarray(model([x, np.asarray(t_values, "float32")]))
        assert y.shape == (4, 5, 3)
        expected = np.exp(np.asarray(t_values))[None, :, None] * x[:, None]
        tol = _tolerance(t_values)
        np.testing.assert_allclose(y, expected, rtol=tol, atol=tol)


def test_nfe_counters_match_the_functional_solvers():
    x = tf.constant(harness.sample((4, 3)))
    layer = keras_node.ODELayer(Growth(), t=(0.0, 1.0))
    assert layer.nfe_forward == 0 and layer.nfe_backward == 0  # before any call
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x))
    tape.gradient(loss, x)

    _, stats = keras_node.odeint(lambda t, h: h, x, [0.0, 1.0], return_stats=True)
    backward = keras_node.AdjointStats()
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(keras_node.odeint_adjoint(lambda t, h: h, x, [0.0, 1.0],
                                                        backward_stats=backward)[-1])
    tape.gradient(loss, x)
    assert isinstance(layer.nfe_forward, int) and isinstance(layer.nfe_backward, int)
    assert layer.nfe_forward == int(stats["nfe"]) > 0
    assert layer.nfe_backward == int(backward.nfe) > 0


# =============================================================================
# Part 3: argument validation
# =============================================================================


@pytest.mark.parametrize(
    "dynamics, input_shape, output_shape",
    [
        (lambda: keras.layers.Dense(5), (None, 3), (None, 5)),
        (lambda: keras.layers.Conv2D(2, 3, padding="same"), (None, 8, 8, 4), (None, 8, 8, 2)),
        (lambda: keras.layers.Conv2D(4, 3), (None, 8, 8, 4), (None, 6, 6, 4)),
    ],
    ids=["dense_width", "conv_channels", "conv_valid_padding"],
)
def test_dynamics_shape_mismatch_raises_at_build(dynamics, input_shape, output_shape):
    with pytest.raises(ValueError) as info:
        keras_node.ODELayer(dynamics()).build(input_shape)
    assert str(input_shape) in str(info.value) and str(output_shape) in str(info.value)
    # The same through a symbolic call.
    with pytest.raises(ValueError, match=r"shape") as info:
        keras_node.ODELayer(dynamics())(keras.Input(input_shape[1:]))
    assert str(input_shape) in str(info.value) and str(output_shape) in str(info.value)


@pytest.mark.parametrize(
    "dynamics",
    [lambda t, h: h, None, "mlp", keras.activations.tanh],
    ids=["python_function", "none", "string", "activation_function"],
)
def test_non_layer_dynamics_raise_type_error(dynamics):
    with pytest.raises(TypeError, match="dynamics"):
        keras_node.ODELayer(dynamics)


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError) as info:
        keras_node.ODELayer(MLP(), method="rk45")
    message = str(info.value)
    assert "rk45" in message
    for method in keras_node.METHODS:
        assert method in message


@pytest.mark.parametrize("gradient,error", [("autodiff", ValueError), ("Adjoint", ValueError),
                                            (None, TypeError)])
def test_bad_gradient_mode_raises(gradient, error):
    with pytest.raises(error) as info:
        keras_node.ODELayer(MLP(), gradient=gradient)
    assert "adjoint" in str(info.value) and "backprop" in str(info.value)
    assert repr(gradient) in str(info.value)


@pytest.mark.parametrize(
    "t",
    [[1.0], [[0.0, 1.0]], [0.0, 1.0, 0.5], [0.0, 0.0], [0.0, float("nan")], 1.0, "abc"],
    ids=["one_time", "2d", "not_monotonic", "repeated", "nan", "scalar", "string"],
)
def test_bad_t_raises(t):
    with pytest.raises((ValueError, TypeError), match="t"):
        keras_node.ODELayer(MLP(), t=t)


@pytest.mark.parametrize(
    "kwargs",
    [{"rtol": -1e-3}, {"atol": -1.0}, {"max_num_steps": 0}, {"step_size": -0.1},
     {"adjoint_checkpoints": -1}, {"return_sequences": "yes"}, {"jit_compile": "yes"}],
    ids=["rtol", "atol", "max_num_steps", "step_size", "adjoint_checkpoints", "return_sequences",
         "jit_compile"],
)
def test_bad_solver_arguments_raise(kwargs):
    (name,) = kwargs
    with pytest.raises((ValueError, TypeError), match=name):
        keras_node.ODELayer(MLP(), **kwargs)


# =============================================================================
# Part 4: training
# =============================================================================


def _regression_data(n=64, features=2):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, features)).astype("float32")
    y = (np.sin(x[:, :1]) + 0.5 * x[:, 1:2] ** 2).astype("float32")
    return x, y


def _mse(model, x, y):
    return float(np.mean((np.asarray(model(x), dtype=np.float64) - y) ** 2))


def _weights(layer):
    return [np.array(w) for w in layer.trainable_weights]


def _changed(before, layer):
    return any(not np.array_equal(b, np.asarray(a)) for b, a in zip(before, layer.trainable_weights))


@pytest.fixture(scope="module", params=["adjoint", "backprop"])
def fitted(request):
    """A Sequential regression model with an ODELayer, trained for 5 epochs."""
    keras.utils.set_random_seed(0)
    x, y = _regression_data()
    layer = keras_node.ODELayer(MLP(units=(16,)), gradient=request.param)
    model = keras.Sequential([keras.Input((2,)), layer, keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(0.05), "mse")
    initial_loss = _mse(model, x, y)
    before = _weights(layer.dynamics)
    history = model.fit(x, y, epochs=5, batch_size=32, verbose=0)
    counts_after_fit = (layer.nfe_forward, layer.nfe_backward)
    return types.SimpleNamespace(
        gradient=request.param, layer=layer, history=history.history, counts_after_fit=counts_after_fit,
        initial_loss=initial_loss, final_loss=_mse(model, x, y), before=before,
    )


def test_fit_lowers_the_loss(fitted):
    assert np.all(np.isfinite(fitted.history["loss"]))
    assert fitted.final_loss < 0.5 * fitted.initial_loss, (fitted.initial_loss, fitted.final_loss)
    assert _changed(fitted.before, fitted.layer.dynamics), "the dynamics were not trained"


def test_nfe_counters_after_fit(fitted):
    nfe_forward, nfe_backward = fitted.counts_after_fit
    assert isinstance(nfe_forward, int) and nfe_forward > 0
    assert isinstance(nfe_backward, int)
    if fitted.gradient == "adjoint":
        assert nfe_backward > 0
    else:
        assert nfe_backward == 0
    # The last call (a predict) computed no gradient: no backward count.
    assert fitted.layer.nfe_forward > 0 and fitted.layer.nfe_backward == 0


@pytest.mark.parametrize("gradient", ["adjoint", "backprop"])
def test_fit_with_jit_compile(gradient):
    keras.utils.set_random_seed(0)
    x, y = _regression_data()
    layer = keras_node.ODELayer(MLP(units=(8,)), gradient=gradient)
    model = keras.Sequential([keras.Input((2,)), layer, keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(0.05), "mse", jit_compile=True)
    losses = model.fit(x, y, epochs=2, batch_size=32, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[1] < losses[0], losses
    assert layer.nfe_forward > 0


class SubclassedRegressor(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.lift = keras.layers.Dense(4)
        self.ode = keras_node.ODELayer(MLP(units=(8,)), **PLUMBING)
        self.head = keras.layers.Dense(1)

    def call(self, inputs):
        return self.head(self.ode(self.lift(inputs)))


def test_fit_subclassed_model():
    keras.utils.set_random_seed(0)
    x, y = _regression_data()
    model = SubclassedRegressor()
    model.compile(keras.optimizers.Adam(0.05), "mse")
    initial_loss = _mse(model, x, y)
    # The dynamics' variables are tracked by the model.
    tracked = {id(v) for v in model.trainable_weights}
    assert model.ode.dynamics.trainable_weights
    assert all(id(v) in tracked for v in model.ode.dynamics.trainable_weights)
    before = _weights(model.ode.dynamics)
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    assert _mse(model, x, y) < 0.5 * initial_loss
    assert _changed(before, model.ode.dynamics)


def test_unbuilt_subclassed_model_builds_without_warnings():
    """Keras builds an unbuilt subclassed model by tracing it symbolically;
    the layer's counters must not break that trace (it used to warn of
    'unbuilt state' because a counter update had no variable to assign)."""
    class TimesAsInput(keras.Model):  # (x, times) in: Keras traces it to build
        def __init__(self):
            super().__init__()
            self.ode = keras_node.ODELayer(MLP(units=(8,)), **PLUMBING)
            self.head = keras.layers.Dense(1)

        def call(self, inputs):
            x, times = inputs
            return self.head(self.ode(x, t=times))

    x, y = _regression_data()
    model = TimesAsInput()
    model.compile(keras.optimizers.Adam(0.05), "mse")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    data = data.map(lambda x, y: ((x, tf.constant([0.0, 1.0])), y))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(data, epochs=1, verbose=0)
    assert not [w for w in caught if "unbuilt state" in str(w.message)]


def test_fit_functional_model():
    """Functional API, reading the state at several times (return_sequences)."""
    keras.utils.set_random_seed(0)
    x, y = _regression_data()
    inputs = keras.Input((2,))
    lifted = keras.layers.Dense(4)(inputs)
    path = keras_node.ODELayer(MLP(units=(8,)), t=(0.0, 0.3, 1.0), return_sequences=True,
                               **PLUMBING)(lifted)
    outputs = keras.layers.Dense(1)(keras.layers.Flatten()(path))
    model = keras.Model(inputs, outputs)
    assert tuple(path.shape) == (None, 3, 4)
    model.compile(keras.optimizers.Adam(0.05), "mse")
    initial_loss = _mse(model, x, y)
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    assert _mse(model, x, y) < 0.5 * initial_loss


def test_image_model_fits_one_step():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(16, 8, 8, 4)).astype("float32")
    labels = rng.integers(0, 3, size=(16,))
    layer = keras_node.ODELayer(ConvBlock(filters=8, groups=4), **PLUMBING)
    model = keras.Sequential([
        keras.Input((8, 8, 4)), layer, keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3),
    ])
    model.compile(keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = _weights(layer.dynamics)
    history = model.fit(images, labels, epochs=1, batch_size=16, verbose=0).history
    assert np.isfinite(history["loss"][0])
    assert _changed(before, layer.dynamics), "no gradient reached the ConvBlock"
    assert all(np.all(np.isfinite(w)) for w in layer.dynamics.trainable_weights)
    assert layer.nfe_forward > 0 and layer.nfe_backward > 0


# --- mixed precision ---------------------------------------------------------


@pytest.fixture(params=["mixed_float16", "mixed_bfloat16"])
def mixed_policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    try:
        yield keras.mixed_precision.global_policy()
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_mixed_precision_trains_and_outputs_compute_dtype(mixed_policy):
    keras.utils.set_random_seed(0)
    x, y = _regression_data()
    layer = keras_node.ODELayer(MLP(units=(8,), final_initializer="glorot_uniform"))
    model = keras.Sequential([keras.Input((2,)), layer, keras.layers.Dense(1)])
    compute_dtype = mixed_policy.compute_dtype
    assert layer.compute_dtype == compute_dtype
    assert all(w.dtype == "float32" for w in layer.trainable_weights)  # variables stay float32

    out = layer(x)
    assert out.dtype == compute_dtype
    assert model(x).dtype == compute_dtype
    # Same weights in float32: the low-precision dynamics change the result
    # only at the level of the compute dtype's rounding.
    config = layer.get_config()
    config["dtype"] = "float32"
    config["dynamics"]["config"]["dtype"] = "float32"
    reference = keras_node.ODELayer.from_config(config)
    assert reference.compute_dtype == reference.dynamics.compute_dtype == "float32"
    reference(x)
    reference.set_weights(layer.get_weights())
    tol = 20 * eps(compute_dtype)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(reference(x)), rtol=tol, atol=tol)

    model.compile(keras.optimizers.Adam(0.01), "mse")
    before = _weights(layer.dynamics)
    # Batches of 8: the loss-scaling optimizer skips the first steps of
    # mixed_float16 training (it starts at a scale that overflows and halves
    # it), so a two-step epoch may leave the weights untouched.
    history = model.fit(x, y, epochs=1, batch_size=8, verbose=0).history
    assert np.isfinite(history["loss"][0])
    assert _changed(before, layer.dynamics)
    assert all(np.all(np.isfinite(w)) for w in layer.trainable_weights)
