"""Save, export, reload and fine-tune a model with an ODELayer.

Trains a small `keras.Sequential` model whose middle layer is a
`keras_node.ODELayer`, then:

1. `model.save("ode_model.keras")` and `keras.models.load_model(...,
   safe_mode=True)`: the Keras format, with the optimizer state;
2. `model.export("ode_saved_model")`: a TensorFlow SavedModel, reloaded
   with `tf.saved_model.load(...).serve` and as a Keras layer with
   `keras.layers.TFSMLayer(path, call_endpoint="serve")` (neither needs
   keras_node to be importable);
3. reloads the SavedModel once more in a separate Python process in which
   `import keras_node` is blocked, to show that serving needs only
   TensorFlow;
4. prints the largest difference between each reloaded model's
   predictions and the original's, and between input gradients taken
   through the SavedModel and through the original (the ODE layer's custom
   adjoint gradient is saved with the graph);
5. fine-tunes the reloaded `.keras` model for one more epoch.

Run:

    python examples/export.py                        # files in a temporary directory
    python examples/export.py --output-dir exported  # keep them
"""

import argparse
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_node  # noqa: E402


def parse_args(argv=None):
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5, help="training epochs before saving")
    parser.add_argument("--samples", type=int, default=2048, help="training samples")
    parser.add_argument("--output-dir", default=None,
                        help="where to write the .keras file and the SavedModel "
                             "(default: a temporary directory)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny configuration for tests: 1 epoch, 256 samples")
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.samples = 1, 256
    return args


def make_data(samples, seed):
    """Two-moons-like regression: target sin(x0) * cos(x1) for x in [-2, 2]^2."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2.0, 2.0, (samples, 2)).astype("float32")
    y = (np.sin(x[:, 0]) * np.cos(x[:, 1]))[:, None].astype("float32")
    return x, y


def build_model():
    """Dense -> ODELayer(MLP) -> Dense, compiled with Adam and MSE."""
    model = keras.Sequential([
        keras.Input((2,)),
        keras.layers.Dense(8, name="lift"),
        keras_node.ODELayer(keras_node.dynamics.MLP(units=(32,)), rtol=1e-4, atol=1e-6, name="ode"),
        keras.layers.Dense(1, name="readout"),
    ], name="ode_regressor")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    return model


def input_gradient(predict, x):
    """d(sum of predictions)/dx through `predict`."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(predict(x))
    return tape.gradient(total, x).numpy()


def max_diff(a, b):
    """Largest absolute difference between two arrays."""
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def save_and_reload(model, directory):
    """Save in both formats and reload three ways; return the reloaded objects."""
    keras_path = os.path.join(directory, "ode_model.keras")
    export_path = os.path.join(directory, "ode_saved_model")
    model.save(keras_path)
    model.export(export_path, verbose=False)
    print(f"Saved {keras_path} and exported {export_path}")
    return {
        "keras": keras.models.load_model(keras_path, safe_mode=True),
        "saved_model": tf.saved_model.load(export_path),
        "tfsm_layer": keras.layers.TFSMLayer(export_path, call_endpoint="serve"),
    }


STANDALONE_CHECK = """
import sys
sys.modules["keras_node"] = None  # any attempt to import keras_node now fails
import numpy as np, tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])  # keep a reference: it owns the variables
prediction = loaded.serve(np.load(sys.argv[2])).numpy()
print(float(np.max(np.abs(prediction - np.load(sys.argv[3])))))
"""


def serve_without_keras_node(export_path, x, reference, directory):
    """Max |difference| of the SavedModel's predictions in a process without keras_node.

    `x` and the `reference` predictions are handed over as .npy files in `directory`.
    """
    x_path, reference_path = os.path.join(directory, "x.npy"), os.path.join(directory, "reference.npy")
    np.save(x_path, x)
    np.save(reference_path, reference)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", STANDALONE_CHECK, export_path, x_path, reference_path],
                            capture_output=True, text=True, env=env, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def compare(model, reloaded, x):
    """Print prediction and gradient differences of each reloaded model vs the original."""
    reference = model(x).numpy()
    predictions = {
        "keras.models.load_model": reloaded["keras"](x).numpy(),
        "tf.saved_model.load(...).serve": reloaded["saved_model"].serve(x).numpy(),
        "keras.layers.TFSMLayer": keras.ops.convert_to_numpy(reloaded["tfsm_layer"](x)),
    }
    for name, prediction in predictions.items():
        print(f"  {name:32s} max |prediction difference| = {max_diff(prediction, reference):.3g}")
    gradient = max_diff(input_gradient(reloaded["saved_model"].serve, x), input_gradient(model, x))
    print(f"  {'gradient through the SavedModel':32s} max |d prediction / d x difference| = {gradient:.3g}")
    return predictions


def main(argv=None):
    """Train, save, export, reload, compare and fine-tune."""
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    x, y = make_data(args.samples, args.seed)
    model = build_model()
    model.fit(x, y, batch_size=64, epochs=args.epochs, verbose=2,
              callbacks=[keras_node.callbacks.NFELogger()])
    with tempfile.TemporaryDirectory() as scratch:
        directory = args.output_dir or scratch
        os.makedirs(directory, exist_ok=True)
        reloaded = save_and_reload(model, directory)
        print("Reloaded predictions vs the original on 256 training inputs:")
        compare(model, reloaded, x[:256])
        standalone = serve_without_keras_node(os.path.join(directory, "ode_saved_model"), x[:256],
                                              model(x[:256]).numpy(), scratch)
        print(f"  {'SavedModel, keras_node blocked':32s} max |prediction difference| = {standalone:.3g}")
        print("Fine-tuning the reloaded .keras model (optimizer state restored) for one epoch:")
        before = reloaded["keras"].evaluate(x, y, verbose=0)
        history = reloaded["keras"].fit(x, y, batch_size=64, epochs=1, verbose=2)
        print(f"  loss before {before:.4f}, after {reloaded['keras'].evaluate(x, y, verbose=0):.4f}")
    return history


if __name__ == "__main__":
    main()
