"""Classify irregularly sampled spirals: Neural CDE vs ODE-RNN vs a GRU.

torchcde's spirals task (example/time_series_classification.py there):
2-D spirals x = cos(s + t) / (1 + t/2), y = sin(s + t) / (1 + t/2) over
t in [0, 4 pi] from a random start s, half of them mirrored (clockwise vs
anticlockwise), with a little noise, on a grid of `--num-points` times.
Here the sampling is irregular: each series loses 30% of its points at
random (`--drop`), so every series is observed at its own times.

The models see the same observations:

- `keras_node.NeuralCDE` on the channels (t, x, y) and each series' own
  times (time as a channel, as torchcde recommends, tells the CDE how fast
  time passes);
- `keras_node.ODERNN` (a GRU cell updated at each observation, an MLP ODE
  in between) on (x, y) and the times;
- a `keras.layers.GRU` on (x, y, time since the previous observation), the
  usual baseline for irregular series.

The script prints test accuracy, trainable parameters and seconds per
epoch (median over the epochs after the first, which includes tracing) as
a Markdown table, and plots a few test series with each model's predicted
probability of "clockwise" (--output).

Run:

    python examples/irregular_classification.py
    python examples/irregular_classification.py --quick   # tiny, for tests
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_node  # noqa: E402

MODELS = ("NeuralCDE", "ODERNN", "GRU")


def parse_args(argv=None):
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20, help="training epochs")
    parser.add_argument("--num-train", type=int, default=256, help="training series")
    parser.add_argument("--num-test", type=int, default=256, help="test series")
    parser.add_argument("--num-points", type=int, default=100, help="times drawn per series")
    parser.add_argument("--drop", type=float, default=0.3, help="fraction of points dropped")
    parser.add_argument("--hidden", type=int, default=8, help="hidden state size")
    parser.add_argument("--batch-size", type=int, default=32, help="series per batch")
    parser.add_argument("--learning-rate", type=float, default=1e-2, help="Adam learning rate")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--output", default="irregular_classification.png", help="figure path")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--quick", action="store_true",
                        help="tiny configuration for tests: 1 epoch on 32 short series")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.num_train, args.num_test, args.num_points = 1, 32, 16, 20
        args.batch_size = 16
    return args


# -- data -----------------------------------------------------------------------


def spirals(num, args, rng):
    """`(times, xy, labels)`: each series' sorted observation times
    `(num, m)`, its noisy positions `(num, m, 2)` and 1 = clockwise."""
    keep = int(round(args.num_points * (1.0 - args.drop)))
    grid = np.linspace(0.0, 4 * np.pi, args.num_points)
    drawn = np.broadcast_to(grid, (num, args.num_points))
    kept = np.sort(np.argsort(rng.uniform(size=drawn.shape), axis=1)[:, :keep], axis=1)
    times = np.take_along_axis(drawn, kept, axis=1)
    start = rng.uniform(0.0, 2 * np.pi, (num, 1))
    labels = (np.arange(num) % 2).astype("float32")
    radius = 1.0 / (1.0 + 0.5 * times)
    x = np.cos(start + times) * radius * np.where(labels[:, None] == 1, -1.0, 1.0)
    y = np.sin(start + times) * radius
    xy = np.stack([x, y], axis=-1) + 0.01 * rng.standard_normal((num, keep, 2))
    order = rng.permutation(num)
    return times[order].astype("float32"), xy[order].astype("float32"), labels[order]


def model_inputs(name, times, xy):
    """What model `name` is fed."""
    if name == "NeuralCDE":
        clock = times[..., None] / (4 * np.pi)  # time as a channel, in [0, 1] like x and y
        return [np.concatenate([clock, xy], axis=-1), times]
    if name == "ODERNN":
        return [xy, times]
    gaps = np.diff(times, axis=1, prepend=times[:, :1])
    return np.concatenate([xy, gaps[..., None]], axis=-1)


# -- models ---------------------------------------------------------------------


def build(name, num_obs, args):
    """An uncompiled binary classifier (one logit) of kind `name`."""
    hidden = args.hidden
    if name == "GRU":
        inputs = keras.Input((num_obs, 3))
        features = keras.layers.GRU(4 * hidden)(inputs)
        return keras.Model(inputs, keras.layers.Dense(1)(features), name="gru")
    times = keras.Input((num_obs,))
    if name == "NeuralCDE":
        values = keras.Input((num_obs, 3))
        field = keras.Sequential([
            keras.layers.Dense(32, activation="softplus"),
            keras.layers.Dense(hidden * 3, activation="tanh"),
            keras.layers.Reshape((hidden, 3)),
        ], name="vector_field")
        features = keras_node.NeuralCDE(field, hidden, method="rk4", gradient="backprop")(
            [values, times])
    else:
        values = keras.Input((num_obs, 2))
        dynamics = keras_node.dynamics.MLP(units=(32,), time_dependent=False)
        features = keras_node.ODERNN(keras.layers.GRUCell(2 * hidden), dynamics, method="rk4")(
            [values, times])
    return keras.Model([values, times], keras.layers.Dense(1)(features), name=name.lower())


class EpochTimer(keras.callbacks.Callback):
    """Wall-clock seconds of each epoch."""

    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def train_and_test(name, train, test, args):
    """Train model `name`; returns its results row and test probabilities."""
    model = build(name, train[0].shape[1], args)
    model.compile(keras.optimizers.Adam(args.learning_rate),
                  keras.losses.BinaryCrossentropy(from_logits=True),
                  metrics=[keras.metrics.BinaryAccuracy(threshold=0.0)])
    timer = EpochTimer()
    model.fit(model_inputs(name, *train[:2]), train[2], epochs=args.epochs,
              batch_size=args.batch_size, verbose=2, callbacks=[timer])
    logits = model.predict(model_inputs(name, *test[:2]), batch_size=128, verbose=0)[:, 0]
    accuracy = float(np.mean((logits > 0) == (test[2] == 1)))
    later = timer.seconds[1:] or timer.seconds
    row = dict(model=name, accuracy=accuracy, parameters=model.count_params(),
               epoch_s=float(np.median(later)), first_epoch_s=timer.seconds[0])
    return row, 1.0 / (1.0 + np.exp(-logits))


# -- report ---------------------------------------------------------------------


def table(rows, args):
    """The results as a Markdown table."""
    lines = [f"Spirals: {args.num_train} train / {args.num_test} test series, "
             f"{int(round(args.num_points * (1 - args.drop)))} irregular observations each, "
             f"{args.epochs} epochs, batch {args.batch_size}",
             "",
             "| model | test accuracy | parameters | s / epoch | first epoch (s) |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {100 * r['accuracy']:.1f}% | {r['parameters']:,} | "
                     f"{r['epoch_s']:.2f} | {r['first_epoch_s']:.1f} |")
    return "\n".join(lines)


def plot(test, probabilities, path, count=6):
    """A few test series with each model's P(clockwise)."""
    times, xy, labels = test
    fig, axes = plt.subplots(1, count, figsize=(3 * count, 3.3))
    for i, ax in enumerate(axes):
        ax.scatter(xy[i, :, 0], xy[i, :, 1], c=times[i], cmap="viridis", s=8)
        ax.plot(xy[i, :, 0], xy[i, :, 1], lw=0.5, color="grey")
        truth = "clockwise" if labels[i] == 1 else "anticlockwise"
        guesses = ", ".join(f"{name} {p[i]:.2f}" for name, p in probabilities.items())
        ax.set_title(f"{truth}\nP(cw): {guesses}", fontsize=7)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Irregularly sampled spirals (colour = time)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    """Generate the data, train each model, print the table, plot."""
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    train, test = spirals(args.num_train, args, rng), spirals(args.num_test, args, rng)
    rows, probabilities = [], {}
    for name in args.models:
        row, probabilities[name] = train_and_test(name, train, test, args)
        rows.append(row)
        print(f"{name}: test accuracy {100 * row['accuracy']:.1f}%", flush=True)
    print(table(rows, args))
    plot(test, probabilities, args.output)
    print(f"figure: {args.output}")


if __name__ == "__main__":
    main()
