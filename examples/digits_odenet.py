"""ResNet vs RK-Net vs ODE-Net on 8x8 digits: Table 1 of Chen et al. (2018), small.

Neural Ordinary Differential Equations (Chen, Rubanova, Bettencourt &
Duvenaud, NeurIPS 2018) compares, on MNIST, a ResNet whose feature stage is
several residual blocks with two models whose feature stage is one block
reused continuously over time: an RK-Net (a fixed-step Runge-Kutta solve,
trained by backpropagating through the solver) and an ODE-Net (an adaptive
solve trained with the adjoint method). This script repeats the comparison
on scikit-learn's 8x8 digits (1797 images, shipped with scikit-learn, no
download). All three models share the same downsampling stem and
classification head; only the feature stage differs:

    ResNet   x -> x + block_i(x)           for --res-blocks separate blocks
    RK-Net   ODELayer(ConvBlock, method="rk4", step_size=--rk-step, gradient="backprop")
    ODE-Net  ODELayer(ConvBlock), dopri5, adjoint gradients

Each model is trained in a fresh spawned process (so that its peak memory
is its own), and the script prints and writes a markdown table (--table) with test
error, parameter count, solver function evaluations (NFE) per batch, peak
memory and seconds per epoch, and plots the ODE-Net's NFE over training
(the paper's Fig. 3d) to digits_nfe.png.

Run:

    python examples/digits_odenet.py                      # all three models
    python examples/digits_odenet.py --models odenet --epochs 5
"""

import argparse
import multiprocessing
import os
import resource
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_node  # noqa: E402

MODELS = ("resnet", "rknet", "odenet")
LABELS = {"resnet": "ResNet", "rknet": "RK-Net", "odenet": "ODE-Net"}


def parse_args(argv=None):
    """Parse the command line; the defaults train all three models in ~10 minutes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20, help="training epochs per model")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS,
                        help="which models to train")
    parser.add_argument("--output-dir", default=".", help="where the table and the plot go")
    parser.add_argument("--table", default="digits_results.md", help="markdown table file name")
    parser.add_argument("--plot", default="digits_nfe.png", help="NFE plot file name")
    parser.add_argument("--filters", type=int, default=32, help="channels of the feature stage")
    parser.add_argument("--res-blocks", type=int, default=4, help="residual blocks of the ResNet")
    parser.add_argument("--rk-step", type=float, default=0.25, help="RK-Net rk4 step size over t in [0, 1]")
    parser.add_argument("--rtol", type=float, default=1e-3, help="ODE-Net relative tolerance")
    parser.add_argument("--atol", type=float, default=1e-4, help="ODE-Net absolute tolerance")
    parser.add_argument("--adjoint-checkpoints", type=int, default=None,
                        help="ODE-Net adjoint checkpoints (default: keras_node.DEFAULT_CHECKPOINTS)")
    parser.add_argument("--regularize", type=float, default=0.0,
                        help="ODE-Net: kinetic + Jacobian-Frobenius regularisers at this weight")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size")
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="initial Adam learning rate")
    parser.add_argument("--seed", type=int, default=0, help="random seed (split, init, batches)")
    parser.add_argument("--no-isolate", dest="isolate", action="store_false",
                        help="train every model in this process (faster start; memory is then shared)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny configuration for tests: 1 epoch on 256 images, 8 filters")
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.filters = 1, 8
    return args


# -- data -----------------------------------------------------------------------


def load_data(seed, smoke=False):
    """8x8 digits scaled to [0, 1], shape (n, 8, 8, 1); a stratified 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")[..., None]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.25, stratify=digits.target, random_state=seed)
    if smoke:
        return x_train[:256], x_test[:128], y_train[:256], y_test[:128]
    return x_train, x_test, y_train, y_test


# -- models ---------------------------------------------------------------------


def stem(filters):
    """Shared downsampling stem: 8x8x1 -> 4x4xfilters."""
    return [
        keras.layers.Conv2D(filters, 3, padding="same", name="stem_conv"),
        keras.layers.GroupNormalization(min(8, filters), name="stem_norm"),
        keras.layers.Activation("relu", name="stem_relu"),
        keras.layers.Conv2D(filters, 4, strides=2, padding="same", name="stem_down"),
    ]


def head(filters):
    """Shared classification head: norm, ReLU, global average pooling, dense softmax."""
    return [
        keras.layers.GroupNormalization(min(8, filters), name="head_norm"),
        keras.layers.Activation("relu", name="head_relu"),
        keras.layers.GlobalAveragePooling2D(name="head_pool"),
        keras.layers.Dense(10, activation="softmax", name="head_dense"),
    ]


def residual_stage(filters, num_blocks):
    """`num_blocks` residual blocks x + ConvBlock(x), each with its own weights."""
    inputs = keras.Input((4, 4, filters))
    x = inputs
    for i in range(num_blocks):
        block = keras_node.dynamics.ConvBlock(filters, time_dependent=False, name=f"res_block_{i}")
        x = keras.layers.Add(name=f"res_add_{i}")([x, block(x)])
    return keras.Model(inputs, x, name="residual_stage")


def feature_stage(name, args):
    """The part that differs between the three models."""
    if name == "resnet":
        return residual_stage(args.filters, args.res_blocks)
    block = keras_node.dynamics.ConvBlock(args.filters, name="ode_block")
    if name == "rknet":
        return keras_node.ODELayer(block, method="rk4", step_size=args.rk_step, gradient="backprop",
                                   name="rk_stage")
    options = {} if args.adjoint_checkpoints is None else {"adjoint_checkpoints": args.adjoint_checkpoints}
    if args.regularize:  # RNODE (Finlay et al. 2020): fewer NFE as training goes on
        options["regularizers"] = {"kinetic": args.regularize, "jacobian_frobenius": args.regularize}
    return keras_node.ODELayer(block, method="dopri5", rtol=args.rtol, atol=args.atol,
                               gradient="adjoint", name="ode_stage", **options)


def build_model(name, args, steps_per_epoch):
    """Stem + feature stage + head, compiled with Adam and a cosine learning rate."""
    layers = [keras.Input((8, 8, 1))] + stem(args.filters)
    layers += [feature_stage(name, args)] + head(args.filters)
    model = keras.Sequential(layers, name=name)
    schedule = keras.optimizers.schedules.CosineDecay(args.learning_rate, args.epochs * steps_per_epoch)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


# -- measurements ---------------------------------------------------------------


def count_trainable(model):
    """Number of trainable parameters (the ODE layers' int32 NFE counters are not)."""
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def peak_rss_mb():
    """Peak resident set size of this process so far, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class NFERecorder(keras.callbacks.Callback):
    """Keeps each batch's `nfe_forward`/`nfe_backward` and each epoch's duration.

    The counts are read from the batch logs, where `keras_node.callbacks.NFELogger`
    (listed before this callback) puts them.
    """

    def __init__(self):
        super().__init__()
        self.nfe = []  # (epoch, forward, backward) per batch
        self.epoch_seconds = []
        self._epoch, self._start = 0, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        """Start the epoch clock."""
        self._epoch, self._start = epoch, time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        """Store the NFE that NFELogger put into this batch's logs."""
        logs = logs or {}
        self.nfe.append((self._epoch, int(logs.get("nfe_forward", 0)), int(logs.get("nfe_backward", 0))))

    def on_epoch_end(self, epoch, logs=None):
        """Stop the epoch clock."""
        self.epoch_seconds.append(time.perf_counter() - self._start)


def last_epoch_nfe(nfe):
    """Mean forward and backward NFE per batch over the last epoch."""
    last = max(epoch for epoch, _, _ in nfe)
    rows = np.array([(f, b) for epoch, f, b in nfe if epoch == last], dtype=float)
    return float(rows[:, 0].mean()), float(rows[:, 1].mean())


def train_one(name, args):
    """Train and evaluate one model; return its measurements as a plain dict."""
    keras.utils.set_random_seed(args.seed)
    x_train, x_test, y_train, y_test = load_data(args.seed, args.smoke)
    steps = int(np.ceil(len(x_train) / args.batch_size))
    model = build_model(name, args, steps)
    rss_before = peak_rss_mb()
    recorder = NFERecorder()
    print(f"\n== {LABELS[name]}: {count_trainable(model):,} parameters", flush=True)
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=2,
              callbacks=[keras_node.callbacks.NFELogger(), recorder])
    accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0, return_dict=True)["accuracy"]
    forward, backward = last_epoch_nfe(recorder.nfe)
    ode_layers = [layer for layer in model.layers if isinstance(layer, keras_node.ODELayer)]
    return {
        "adjoint_checkpoints": ode_layers[0].adjoint_options.adjoint_checkpoints if name == "odenet" else None,
        "name": name, "test_error": 100.0 * (1.0 - accuracy), "params": count_trainable(model),
        "nfe_forward": forward, "nfe_backward": backward, "nfe_history": recorder.nfe,
        "rss_peak_mb": peak_rss_mb(), "rss_training_mb": peak_rss_mb() - rss_before,
        "seconds_per_epoch": float(np.mean(recorder.epoch_seconds[1:] or recorder.epoch_seconds)),
        "first_epoch_seconds": recorder.epoch_seconds[0],
    }


def _train_in_child(name, args, queue):
    """Process target: train one model and send its result (or the error) back."""
    try:
        queue.put(train_one(name, args))
    except Exception as error:  # report any failure to the parent, which re-raises
        queue.put({"name": name, "error": f"{type(error).__name__}: {error}"})
        raise


def run_isolated(name, args):
    """Train one model in a fresh spawned process, so its peak RSS is its own."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_train_in_child, args=(name, args, queue))
    process.start()
    result = queue.get()
    process.join()
    if "error" in result:
        raise RuntimeError(f"training {LABELS[name]} failed: {result['error']}")
    return result


# -- report ---------------------------------------------------------------------


def format_table(results, args):
    """The results as a markdown table, with a note on what each column measures."""
    lines = [
        "| Model | Test error (%) | Parameters | NFE forward / batch | NFE backward / batch "
        "| Peak RSS (MB) | Training RSS (MB) | s / epoch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        forward = "—" if r["name"] == "resnet" else f"{r['nfe_forward']:.1f}"
        backward = f"{r['nfe_backward']:.1f}" if r["name"] == "odenet" else "—"
        lines.append(
            f"| {LABELS[r['name']]} | {r['test_error']:.2f} | {r['params']:,} | {forward} | {backward} "
            f"| {r['rss_peak_mb']:.0f} | {r['rss_training_mb']:.0f} | {r['seconds_per_epoch']:.1f} |"
        )
    lines += ["", notes(args, results)]
    return "\n".join(lines) + "\n"


def notes(args, results):
    """Explain the setup and the columns of the table."""
    isolation = ("each model trained in its own fresh process" if args.isolate
                 else "all models trained in one process, so RSS columns are cumulative")
    checkpoints = next((r["adjoint_checkpoints"] for r in results if r["name"] == "odenet"), None)
    adjoint = "adjoint" if checkpoints is None else f"adjoint with {checkpoints} checkpoints"
    return (
        f"sklearn digits, {args.epochs} epochs, batch {args.batch_size}, {args.filters} filters; "
        f"ResNet: {args.res_blocks} residual blocks; RK-Net: rk4, step {args.rk_step:g}, backprop; "
        f"ODE-Net: dopri5, rtol={args.rtol:g}, atol={args.atol:g}, {adjoint}"
        + (f", kinetic + Frobenius regularisers at {args.regularize:g}" if args.regularize else "")
        + ". Test error after the "
        "last epoch on a held-out 25 % split. NFE: dynamics evaluations per training batch, mean over "
        "the last epoch (RK-Net's backward pass differentiates through its stored forward steps, so "
        "it makes no backward solve; the ODE-Net's backward solve takes at least one step between "
        "consecutive checkpoints, which sets a floor under its NFE). Peak RSS: "
        "`resource.getrusage(RUSAGE_SELF).ru_maxrss`, the peak resident memory of the process "
        f"({isolation}), including the TensorFlow runtime; Training RSS: how much that peak grew "
        "during training and evaluation. s / epoch: mean wall time of the epochs after the first "
        "(which also traces the graphs)."
    )


def plot_nfe(results, path):
    """The paper's Fig. 3d: forward and backward NFE per batch over training."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        if r["name"] == "resnet":
            continue
        history = np.array(r["nfe_history"], dtype=float)
        steps_per_epoch = np.sum(history[:, 0] == history[0, 0])
        epochs = np.arange(len(history)) / steps_per_epoch
        axes[0].plot(epochs, history[:, 1], lw=1, label=f"{LABELS[r['name']]} forward")
        if r["name"] == "odenet":
            axes[0].plot(epochs, history[:, 2], lw=1, label=f"{LABELS[r['name']]} backward")
            axes[1].scatter(history[:, 1], history[:, 2], c=epochs, s=6, cmap="viridis")
    axes[0].set(xlabel="training epoch", ylabel="NFE per batch", title="NFE over training (cf. Fig. 3d)")
    axes[0].legend(fontsize=8)
    axes[1].set(xlabel="forward NFE", ylabel="backward NFE",
                title="ODE-Net backward vs forward NFE (colour: epoch)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    """Train the selected models, then print and write the table and the NFE plot."""
    args = parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    results = []
    for name in args.models:
        results.append(run_isolated(name, args) if args.isolate else train_one(name, args))
    table = format_table(results, args)
    print("\n" + table)
    table_path = os.path.join(args.output_dir, args.table)
    with open(table_path, "w") as handle:
        handle.write(table)
    plot_path = os.path.join(args.output_dir, args.plot)
    plot_nfe(results, plot_path)
    print(f"Wrote {table_path}, {plot_path}")
    return results


if __name__ == "__main__":
    main()
