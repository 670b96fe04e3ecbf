"""Fit and extrapolate irregularly sampled time series with a latent ODE.

Each series is a damped oscillator x'' = -w^2 x - 2 z w x' (the same w and
z for all series, a random initial position and velocity per series),
observed with Gaussian noise at `--num-obs` random times in [0, --t-obs].
No two series share an observation time.

The model is encoder -> ODE -> decoder:

- the encoder maps the first `--encode` observations (values and their
  times) to a latent state h(0);
- `keras_node.ODELayer(MLP, per_sample_steps=True, return_sequences=True)`
  integrates each series' h from 0 to that series' own observation times,
  passed at call time as a (batch, n) grid: `ode(h0, t=times)`;
- a linear decoder reads x(t) off each latent state.

Each series is solved on its own times with its own steps: no union grid of
the batch's times (the way to batch irregular series with a joint solver,
torchdiffeq#86/#122), which would write batch x num_obs outputs per series
instead of num_obs. After training the script measures what that saves on a
test batch (outputs, func evaluations, time), integrates test series on a
fine grid up to --t-obs + --t-extra, beyond the observed window, and plots
(--output) observations, fit and extrapolation against the noise-free truth.

Run:

    python examples/irregular_series.py
    python examples/irregular_series.py --epochs 5 --output series.png
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
import tensorflow as tf  # noqa: E402

import keras_node  # noqa: E402


def parse_args(argv=None):
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30, help="training epochs")
    parser.add_argument("--num-train", type=int, default=1024, help="training series")
    parser.add_argument("--num-test", type=int, default=64, help="test series")
    parser.add_argument("--num-obs", type=int, default=20, help="observations per series in [0, t_obs]")
    parser.add_argument("--encode", type=int, default=5, help="first observations the encoder sees")
    parser.add_argument("--t-obs", type=float, default=10.0, help="end of the observed window")
    parser.add_argument("--t-extra", type=float, default=5.0, help="extrapolation beyond t_obs")
    parser.add_argument("--omega", type=float, default=1.5, help="angular frequency w")
    parser.add_argument("--zeta", type=float, default=0.05, help="damping ratio z")
    parser.add_argument("--noise", type=float, default=0.05, help="observation noise std")
    parser.add_argument("--latent", type=int, default=4, help="latent state size")
    parser.add_argument("--hidden", type=int, default=32, help="hidden width of the dynamics MLP")
    parser.add_argument("--batch-size", type=int, default=16, help="series per batch")
    parser.add_argument("--learning-rate", type=float, default=1e-2, help="initial Adam learning rate")
    parser.add_argument("--gradient", default="adjoint", choices=("adjoint", "backprop"),
                        help="how gradients of the ODE solve are computed")
    parser.add_argument("--output", default="irregular_series.png", help="path of the figure")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny configuration for tests: 1 epoch on 32 series")
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.num_train, args.num_test = 1, 32, 8
    return args


# -- data -----------------------------------------------------------------------


def oscillator(t, x0, v0, omega, zeta):
    """Exact x(t) of the under-damped oscillator; `t` of shape (k,) or (len(x0), k)."""
    decay = zeta * omega
    omega_d = omega * np.sqrt(1.0 - zeta ** 2)
    t = np.asarray(t)
    a = x0[:, None]
    b = ((v0 + decay * x0) / omega_d)[:, None]
    return np.exp(-decay * t) * (a * np.cos(omega_d * t) + b * np.sin(omega_d * t))


def distinct_times(num, num_obs, t_max, rng):
    """Random observation times in (0, t_max], sorted per series, all distinct.

    They are drawn without replacement from a grid 20 times finer than their
    number, so that each series' times (and, for the comparison, the union
    of a batch's) are strictly increasing even in float32.
    """
    slots = 20 * num * num_obs
    chosen = rng.choice(slots, num * num_obs, replace=False) + 1
    return np.sort((chosen * (t_max / slots)).reshape(num, num_obs), axis=1)


def make_series(num, args, rng):
    """Random initial states; sorted random observation times; noisy values.

    Returns `(times, values, x0, v0)`, times and values of shape (num, num_obs).
    """
    x0 = rng.uniform(-1.0, 1.0, num)
    v0 = rng.uniform(-1.0, 1.0, num) * args.omega
    times = distinct_times(num, args.num_obs, args.t_obs, rng)
    exact = oscillator(times, x0, v0, args.omega, args.zeta)
    values = exact + args.noise * rng.standard_normal(exact.shape)
    return times.astype("float32"), values.astype("float32"), x0, v0


def encoder_features(times, values, num_encode):
    """The encoder's input: (value, time) of each series' first observations, flattened."""
    pairs = np.stack([values[:, :num_encode], times[:, :num_encode]], axis=-1)
    return pairs.reshape(len(times), -1).astype("float32")


def with_start(times):
    """Each series' times with t = 0 first: the grid its solve starts on."""
    return np.concatenate([np.zeros((len(times), 1), times.dtype), times], axis=1)


def training_dataset(times, values, args):
    """A tf.data pipeline of `((features, times), targets, weights)` per
    series, batched and reshuffled every epoch. `times` starts at 0 (the
    encoder's state); its weight 0 keeps that entry out of the loss."""
    grid = with_start(times)
    targets = np.concatenate([np.zeros_like(values[:, :1]), values], axis=1)[..., None]
    weights = np.concatenate([np.zeros_like(values[:, :1]), np.ones_like(values)], axis=1)
    data = tf.data.Dataset.from_tensor_slices(
        ((encoder_features(times, values, args.encode), grid), targets, weights))
    data = data.shuffle(len(times), seed=args.seed, reshuffle_each_iteration=True)
    return data.batch(args.batch_size, drop_remainder=True)


# -- model ----------------------------------------------------------------------


class LatentODE(keras.Model):
    """Encoder -> ODE over the given times -> linear decoder.

    Args:
        latent: latent state size.
        hidden: hidden width of the dynamics MLP.
        gradient: `"adjoint"` or `"backprop"`, passed to the ODELayer.
        **kwargs: standard model arguments.

    Call arguments:
        inputs: `(features, times)`: encoder features `(batch, 2 * encode)`
            and the times, `(batch, n)` (each series' own, increasing from
            0) or 1-D (shared).

    Output: the decoded series `(batch, n, 1)`.
    """

    def __init__(self, latent=4, hidden=32, gradient="adjoint", **kwargs):
        super().__init__(**kwargs)
        self.encoder = keras.Sequential(
            [keras.layers.Dense(64, activation="tanh"), keras.layers.Dense(latent)], name="encoder")
        dynamics = keras_node.dynamics.MLP(units=(hidden,), activation="tanh", time_dependent=False)
        self.ode = keras_node.ODELayer(dynamics, rtol=1e-3, atol=1e-4, gradient=gradient,
                                       return_sequences=True, per_sample_steps=True, name="ode")
        self.decoder = keras.layers.Dense(1, name="decoder")

    def call(self, inputs):
        """Encode, integrate to `times`, decode."""
        features, times = inputs
        h0 = self.encoder(features)
        return self.decoder(self.ode(h0, t=times))


def build_model(args):
    """The latent ODE, compiled with a masked (sample-weighted) MSE."""
    model = LatentODE(args.latent, args.hidden, args.gradient, name="latent_ode")
    steps = args.epochs * (args.num_train // args.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(args.learning_rate, steps, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="mse")
    return model


# -- evaluation and plot --------------------------------------------------------


def union_comparison(model, test, args):
    """What solving each series on its own times saves, on one test batch:
    the union-grid alternative (a joint solve over the sorted union of the
    batch's times) writes batch x num_obs outputs per series. Returns a
    dict of output counts, func evaluations and median ms per forward solve."""
    times, values, _, _ = test
    size = min(args.batch_size, len(times))
    features = tf.constant(encoder_features(times[:size], values[:size], args.encode))
    own = tf.constant(with_start(times[:size]))
    union = tf.constant(np.concatenate([[0.0], np.sort(times[:size].ravel())]).astype("float32"))
    h0 = model.encoder(features)
    joint = keras_node.ODELayer(model.ode.dynamics, rtol=1e-3, atol=1e-4, return_sequences=True)
    results = {}
    for label, layer, grid in (("own times", model.ode, own), ("union grid", joint, union)):
        solve = tf.function(lambda h, layer=layer, grid=grid: layer(h, t=grid))
        solve(h0)
        durations = []
        for _ in range(20):
            begin = time.perf_counter()
            solve(h0)
            durations.append(1e3 * (time.perf_counter() - begin))
        results[label] = {"outputs per series": int(grid.shape[-1]), "nfe": layer.nfe_forward,
                          "ms": float(np.median(durations))}
    return results


def predict_on_grid(model, features, grid):
    """Decoded trajectories of a batch of series on the time grid `grid`."""
    return model((tf.constant(features), tf.constant(grid, tf.float32)))[..., 0].numpy()


def evaluate(model, test, args, grid):
    """MSE vs the noise-free truth inside the observed window and beyond it."""
    times, values, x0, v0 = test
    prediction = predict_on_grid(model, encoder_features(times, values, args.encode), grid)
    truth = oscillator(grid, x0, v0, args.omega, args.zeta)
    inside = grid <= args.t_obs
    return prediction, truth, {
        "fit": float(np.mean((prediction[:, inside] - truth[:, inside]) ** 2)),
        "extrapolation": float(np.mean((prediction[:, ~inside] - truth[:, ~inside]) ** 2)),
        "zero": float(np.mean(truth[:, ~inside] ** 2)),
    }


def plot_series(path, test, prediction, truth, grid, args, count=4):
    """Observations, truth, fit and extrapolation of the first `count` test series."""
    times, values, _, _ = test
    fig, axes = plt.subplots(count, 1, figsize=(10, 2.1 * count), sharex=True)
    for i, ax in enumerate(axes):
        ax.axvspan(args.t_obs, grid[-1], color="0.93")
        ax.plot(grid, truth[i], color="0.4", lw=1, label="truth (noise-free)")
        ax.plot(times[i], values[i], "o", ms=4, color="tab:blue", label="observations")
        ax.plot(times[i, :args.encode], values[i, :args.encode], "o", ms=7, mfc="none",
                color="tab:orange", label="seen by the encoder")
        inside = grid <= args.t_obs
        ax.plot(grid[inside], prediction[i, inside], color="tab:red", lw=1.4, label="latent ODE fit")
        ax.plot(grid[~inside], prediction[i, ~inside], "--", color="tab:red", lw=1.4, label="extrapolation")
        ax.set_ylabel("x")
    axes[0].legend(fontsize=7, ncol=5, loc="upper right")
    axes[0].set_title("Irregularly sampled damped oscillators (grey: beyond the observed window)")
    axes[-1].set_xlabel("t")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    """Generate series, train the latent ODE, report and plot fit and extrapolation."""
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    train_times, train_values, _, _ = make_series(args.num_train, args, rng)
    test = make_series(args.num_test, args, rng)
    model = build_model(args)
    model.fit(training_dataset(train_times, train_values, args), epochs=args.epochs, verbose=2,
              shuffle=False, callbacks=[keras_node.callbacks.NFELogger()])
    for label, numbers in union_comparison(model, test, args).items():
        print(f"Forward solve of a test batch on {label}: {numbers['outputs per series']} outputs "
              f"per series, {numbers['nfe']} func evaluations, {numbers['ms']:.1f} ms")
    grid = np.linspace(0.0, args.t_obs + args.t_extra, 301).astype("float32")
    prediction, truth, mse = evaluate(model, test, args, grid)
    print(f"Test MSE vs noise-free truth: fit on [0, {args.t_obs:g}] = {mse['fit']:.4f}, "
          f"extrapolation on ({args.t_obs:g}, {grid[-1]:g}] = {mse['extrapolation']:.4f} "
          f"(predicting 0 there: {mse['zero']:.4f}; noise variance {args.noise ** 2:.4f})")
    plot_series(args.output, test, prediction, truth, grid, args)
    print(f"Wrote {args.output} ({time.perf_counter() - start:.0f} s in total)")
    return mse


if __name__ == "__main__":
    main()
