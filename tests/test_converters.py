"""Model converters understand the inference path (issue 19).

Without a gradient tape the solver loop carries its outputs as tensors in
the loop state (no TensorArray, whose element shape has an unknown batch
dimension), so TFLite converts a solve with builtin ops only and a dynamic
batch: one converted model serves batch sizes 1 and 7. With the default
`jit_compile="auto"` (real here: `auto_jit`) an MLP's solver loop is a
nested XLA function in the graph: TFLite's converter inlines it; for ONNX
(tf2onnx, onnxruntime; the [export] extra) the model is exported inside
`keras_node.export.for_converters()`, which traces the loop as plain ops.
Checked against the same model run by TensorFlow (`predict`, with XLA).
"""

import contextlib

import numpy as np
import pytest
import tensorflow as tf

import keras_node

pytestmark = [pytest.mark.slow, pytest.mark.auto_jit]

WEIGHTS = tf.constant(np.random.default_rng(0).normal(size=(3, 3)).astype("float32") * 0.7)


def field(t, y):
    return tf.tanh(tf.matmul(y, WEIGHTS)) - 0.1 * y * t


def _interpreter(model_content):
    interpreter = tf.lite.Interpreter(model_content=model_content)
    details = interpreter.get_input_details()[0]

    def run(x):
        interpreter.resize_tensor_input(details["index"], x.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(details["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

    return run


@pytest.mark.parametrize("method, options", [("dopri5", {"rtol": 1e-6, "atol": 1e-8}),
                                             ("rk4", {"step_size": 0.1})])
def test_tflite_builtin_ops_with_a_dynamic_batch(method, options):
    @tf.function(input_signature=[tf.TensorSpec((None, 3), tf.float32)])
    def serve(x):
        return keras_node.odeint(field, x, [0.0, 0.5, 1.0], method=method, **options)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], serve)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    run = _interpreter(converter.convert())
    for batch in (1, 7):
        x = np.random.default_rng(batch).normal(size=(batch, 3)).astype("float32")
        expected = serve(tf.constant(x)).numpy()
        got = run(x)
        assert got.shape == (3, batch, 3)
        np.testing.assert_allclose(got, expected, atol=1e-5)


def _ode_model(method, dynamics, **layer_options):
    """An exported-shape model: ODELayer alone, non-trivial weights."""
    import keras

    solver = ({"method": "dopri5", "rtol": 1e-6, "atol": 1e-8} if method == "dopri5"
              else {"method": "rk4", "step_size": 0.1})
    keras.utils.set_random_seed(1)
    if dynamics == "mlp":
        inputs, block = keras.Input((3,)), keras_node.dynamics.MLP(units=(8,),
                                                                   final_initializer="glorot_uniform")
    else:
        inputs, block = keras.Input((4, 4, 2)), keras_node.dynamics.ConvBlock(
            4, groups=2, final_initializer="glorot_uniform")
    return keras.Sequential([inputs, keras_node.ODELayer(block, **solver, **layer_options)])


# Two of the four method x dynamics pairs (CI time): the adaptive loop with
# the MLP, the fixed-step loop with convolutions.
@pytest.mark.parametrize("method, dynamics", [("dopri5", "mlp"), ("rk4", "conv")])
def test_exported_ode_layer_converts_to_tflite_builtins(method, dynamics, tmp_path):
    """`model.export` -> TFLiteConverter.from_saved_model, builtin ops only;
    one converted model serves batch sizes 1 and 7 like `predict`."""
    model = _ode_model(method, dynamics)
    model.export(str(tmp_path / "saved"), verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "saved"))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    run = _interpreter(converter.convert())
    for batch in (1, 7):
        x = np.random.default_rng(batch).normal(size=(batch,) + model.input_shape[1:]).astype("float32")
        np.testing.assert_allclose(run(x), model.predict(x, verbose=0), atol=1e-5)


def _xla_functions(function, spec):
    """The XLA-compiled functions in `function`'s graph for `spec`."""
    library = tf.function(function).get_concrete_function(spec).graph.as_graph_def().library
    return [f.signature.name for f in library.function if f.attr["_XlaMustCompile"].b]


def test_for_converters_changes_only_graphs_traced_inside():
    """By default an MLP's solve is a nested XLA function in graphs (what
    `predict` and `fit` run, and what tf2onnx cannot convert); inside the
    block the same model and a bare `odeint` trace without one, and after
    it XLA is back."""
    model = _ode_model("dopri5", "mlp")
    spec = tf.TensorSpec((None, 3), tf.float32)

    def solve(x):
        return keras_node.odeint(field, x, [0.0, 1.0])

    assert _xla_functions(model, spec) and _xla_functions(solve, spec)
    with keras_node.export.for_converters():
        assert not _xla_functions(model, spec) and not _xla_functions(solve, spec)
    assert _xla_functions(model, spec)


@pytest.mark.parametrize("method, dynamics", [("dopri5", "mlp"), ("rk4", "conv")])
def test_exported_ode_layer_converts_to_onnx(method, dynamics, tmp_path):
    """SavedModel exported inside `for_converters()` -> tf2onnx ->
    onnxruntime, batch dimension dynamic, default layer settings."""
    tf2onnx = pytest.importorskip("tf2onnx", reason="the [export] extra installs tf2onnx")
    onnxruntime = pytest.importorskip("onnxruntime", reason="the [export] extra installs onnxruntime")
    model = _ode_model(method, dynamics)
    with keras_node.export.for_converters():
        model.export(str(tmp_path / "saved"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "saved"))  # keeps the variables alive
    spec = tf.TensorSpec((None,) + model.input_shape[1:], tf.float32)
    proto, _ = tf2onnx.convert.from_function(loaded.serve, input_signature=[spec], opset=17)
    session = onnxruntime.InferenceSession(proto.SerializeToString())
    name = session.get_inputs()[0].name
    for batch in (1, 7):
        x = np.random.default_rng(batch).normal(size=(batch,) + model.input_shape[1:]).astype("float32")
        np.testing.assert_allclose(session.run(None, {name: x})[0], model.predict(x, verbose=0), atol=1e-5)


@pytest.mark.parametrize("jit_compile", ["auto", False])
def test_keras_export_format_onnx(jit_compile, tmp_path):
    """Keras' own `model.export(path, format="onnx")` (it uses tf2onnx),
    for a model that has been called once, as Keras requires: inside
    `for_converters()` with the default settings, and a layer built with
    `jit_compile=False`, which needs no block."""
    pytest.importorskip("tf2onnx", reason="the [export] extra installs tf2onnx")
    onnxruntime = pytest.importorskip("onnxruntime", reason="the [export] extra installs onnxruntime")
    model = _ode_model("dopri5", "mlp", jit_compile=jit_compile)
    model.predict(np.zeros((2, 3), "float32"), verbose=0)
    with keras_node.export.for_converters() if jit_compile else contextlib.nullcontext():
        model.export(str(tmp_path / "model.onnx"), format="onnx", verbose=False)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    name = session.get_inputs()[0].name
    for batch in (1, 7):
        x = np.random.default_rng(batch).normal(size=(batch, 3)).astype("float32")
        np.testing.assert_allclose(session.run(None, {name: x})[0], model.predict(x, verbose=0), atol=1e-5)


@pytest.mark.parametrize("method", ["dopri5"])  # rk4: test_exported_ode_layer_converts_to_tflite_builtins
def test_keras_export_format_litert(method, tmp_path):
    """Keras' own `model.export(path, format="litert")` (TensorFlow's
    converter, no extra package) with default layer settings: builtin ops
    only (no Flex delegate), one model serving batch sizes 1 and 7."""
    model = _ode_model(method, "mlp")
    model.predict(np.zeros((2, 3), "float32"), verbose=0)
    path = str(tmp_path / "model.tflite")
    model.export(path, format="litert", verbose=False)
    content = open(path, "rb").read()
    interpreter = tf.lite.Interpreter(model_content=content)
    op_names = {op["op_name"] for op in interpreter._get_ops_details()}
    assert not any(name.startswith("Flex") or name == "CUSTOM" for name in op_names), op_names
    run = _interpreter(content)
    for batch in (1, 7):
        x = np.random.default_rng(batch).normal(size=(batch, 3)).astype("float32")
        np.testing.assert_allclose(run(x), model.predict(x, verbose=0), atol=1e-5)
