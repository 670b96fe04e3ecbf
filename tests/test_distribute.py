"""ODELayer under tf.distribute.MirroredStrategy (API.md, "Keras layer").

Two logical CPU devices stand in for two GPUs. Logical devices must be
configured before TensorFlow initialises its runtime, which the test process
has long done, so the training runs in a fresh Python and reports JSON.
"""

import json
import textwrap

import numpy as np

import _background

_SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    import keras_node
    from keras_node.dynamics import MLP

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 2)).astype("float32")
    y = (np.sin(x[:, :1]) + 0.5 * x[:, 1:] ** 2).astype("float32")
    keras.utils.set_random_seed(0)
    with strategy.scope():
        layer = keras_node.ODELayer(MLP(units=(8,)))
        model = keras.Sequential([keras.Input((2,)), layer, keras.layers.Dense(1)])
        model.compile(keras.optimizers.Adam(0.05), "mse")
    variable_types = sorted({type(v.value).__name__ for v in layer.dynamics.trainable_weights})
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0,
                        callbacks=[keras_node.callbacks.NFELogger()]).history
    predictions = model.predict(x[:8], verbose=0)
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "variable_types": variable_types,
        "loss": history["loss"],
        "nfe_forward": history["nfe_forward"],
        "nfe_backward": history["nfe_backward"],
        "predictions_finite": bool(np.all(np.isfinite(predictions))),
    }))
    """
)


# Runs in the background from the end of collection (_background.py).
_background.declare(f"{__name__}::test_mirrored_strategy_on_two_logical_cpus", ["-c", _SCRIPT],
                    cwd=None, env={"TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"})


def test_mirrored_strategy_on_two_logical_cpus():
    result = _background.result(f"{__name__}::test_mirrored_strategy_on_two_logical_cpus")
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert report["replicas"] == 2
    assert any("Mirrored" in name for name in report["variable_types"]), report["variable_types"]
    loss = report["loss"]
    assert len(loss) == 2 and np.all(np.isfinite(loss)) and loss[1] < loss[0], loss
    assert all(n > 0 for n in report["nfe_forward"] + report["nfe_backward"]), report
    assert report["predictions_finite"]
