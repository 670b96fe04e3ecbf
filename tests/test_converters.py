"""Model converters understand the inference path (issue 19).

Without a gradient tape the solver loop carries its outputs as tensors in
the loop state (no TensorArray, whose element shape has an unknown batch
dimension), so TFLite converts a solve with builtin ops only and a dynamic
batch: one converted model serves batch sizes 1 and 7. Checked against the
same solve run by TensorFlow.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras_node

pytestmark = pytest.mark.slow

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
        return keras_node.odeint(field, x, [0.0, 0.5, 1.0], method=method, jit_compile=False,
                                 **options)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], serve)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    run = _interpreter(converter.convert())
    for batch in (1, 7):
        x = np.random.default_rng(batch).normal(size=(batch, 3)).astype("float32")
        expected = serve(tf.constant(x)).numpy()
        got = run(x)
        assert got.shape == (3, batch, 3)
        np.testing.assert_allclose(got, expected, atol=1e-5)
