"""Latent ODE with an ODE-RNN encoder: fit irregular periodic series, extrapolate.

The model of Rubanova, Chen & Duvenaud (2019), without the variational
part: an ODE-RNN (`keras_node.ODERNN`) reads each series backward in time,
from its last observation to its first, and its final state gives the
latent initial state z(0); an ODE (`keras_node.ODELayer` with
`per_sample_steps=True`) carries z forward to the series' own observation
times, and a linear decoder reads the value off z.

Data: x(t) = a sin(w t + p) with a random amplitude a and phase p per
series and one frequency w, observed with noise at `--num-obs` random times
in [0, --t-obs] (different times for every series). After training, the
script decodes test series on a fine grid up to --t-obs + --t-extra and
reports the mean squared error against the noise-free truth inside the
observed window and beyond it (next to what predicting zero there scores),
and plots a few series (--output).

Run:

    python examples/latent_ode.py
    python examples/latent_ode.py --quick      # tiny, for tests
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


def parse_args(argv=None):
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40, help="training epochs")
    parser.add_argument("--num-train", type=int, default=512, help="training series")
    parser.add_argument("--num-test", type=int, default=64, help="test series")
    parser.add_argument("--num-obs", type=int, default=20, help="observations per series")
    parser.add_argument("--t-obs", type=float, default=6.0, help="end of the observed window")
    parser.add_argument("--t-extra", type=float, default=6.0, help="extrapolation beyond t_obs")
    parser.add_argument("--omega", type=float, default=1.2, help="angular frequency w")
    parser.add_argument("--noise", type=float, default=0.05, help="observation noise std")
    parser.add_argument("--latent", type=int, default=4, help="latent state size")
    parser.add_argument("--units", type=int, default=16, help="ODE-RNN state size")
    parser.add_argument("--batch-size", type=int, default=32, help="series per batch")
    parser.add_argument("--learning-rate", type=float, default=1e-2, help="Adam learning rate")
    parser.add_argument("--output", default="latent_ode.png", help="path of the figure")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--quick", action="store_true",
                        help="tiny configuration for tests: 1 epoch on 32 series")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.num_train, args.num_test, args.num_obs = 1, 32, 8, 8
    return args


def make_series(num, args, rng):
    """`(times, values, amplitude, phase)`: sorted random times `(num,
    num_obs)` in (0, t_obs) (random gaps, none below 1/19 of the largest),
    and noisy values of a sin(w t + p)."""
    gaps = rng.uniform(0.1, 1.9, (num, args.num_obs + 1))
    times = (np.cumsum(gaps, axis=1) / gaps.sum(axis=1, keepdims=True))[:, :-1] * args.t_obs
    amplitude = rng.uniform(0.5, 1.5, (num, 1))
    phase = rng.uniform(0.0, 2 * np.pi, (num, 1))
    values = amplitude * np.sin(args.omega * times + phase)
    values = values + args.noise * rng.standard_normal(values.shape)
    return times.astype("float32"), values.astype("float32"), amplitude, phase


class LatentODE(keras.Model):
    """ODE-RNN encoder (backward in time) -> latent ODE -> linear decoder.

    Call arguments:
        inputs: `(times, values, grid)`: the observations `(batch, n)` each,
            and the times to decode at, `(batch, m)` increasing from 0.

    Output: the decoded values `(batch, m, 1)`.
    """

    def __init__(self, latent=4, units=16, **kwargs):
        super().__init__(**kwargs)
        self.encoder = keras_node.ODERNN(
            keras.layers.GRUCell(units),
            keras_node.dynamics.MLP(units=(units,), time_dependent=False), name="encoder")
        self.to_latent = keras.layers.Dense(latent, name="to_latent")
        self.ode = keras_node.ODELayer(
            keras_node.dynamics.MLP(units=(32,), time_dependent=False), rtol=1e-3, atol=1e-4,
            return_sequences=True, per_sample_steps=True, name="ode")
        self.decoder = keras.layers.Dense(1, name="decoder")

    def call(self, inputs):
        """Encode backward in time, integrate from 0 to `grid`, decode."""
        times, values, grid = inputs
        # Reversed: the ODE-RNN starts at the last observation and ends at
        # the first, near t = 0 (decreasing times solve backward).
        h = self.encoder([values[:, ::-1, None], times[:, ::-1]])
        z = self.ode(self.to_latent(h), t=grid)
        return self.decoder(z)


def with_start(times):
    """Each series' times with t = 0 first (where its latent state starts)."""
    return np.concatenate([np.zeros((len(times), 1), times.dtype), times], axis=1)


def train(args, rng):
    """The trained model."""
    times, values, _, _ = make_series(args.num_train, args, rng)
    model = LatentODE(args.latent, args.units, name="latent_ode")
    model.compile(keras.optimizers.Adam(args.learning_rate), "mse")
    # Target at t = 0 is not observed: weight 0.
    targets = with_start(values)[..., None]
    weights = np.concatenate([np.zeros_like(values[:, :1]), np.ones_like(values)], axis=1)
    model.fit((times, values, with_start(times)), targets, sample_weight=weights,
              epochs=args.epochs, batch_size=args.batch_size, verbose=2)
    return model


def evaluate(model, args, rng):
    """Decoded test series on a fine grid, the truth, and the two MSEs."""
    times, values, amplitude, phase = make_series(args.num_test, args, rng)
    grid = np.linspace(0.0, args.t_obs + args.t_extra, 241).astype("float32")
    grids = np.broadcast_to(grid, (len(times), grid.size))
    prediction = model.predict((times, values, grids), verbose=0)[..., 0]
    truth = amplitude * np.sin(args.omega * grid + phase)
    inside = grid <= args.t_obs
    mse = {"fit": float(np.mean((prediction[:, inside] - truth[:, inside]) ** 2)),
           "extrapolation": float(np.mean((prediction[:, ~inside] - truth[:, ~inside]) ** 2)),
           "zero": float(np.mean(truth[:, ~inside] ** 2))}
    return (times, values, grid, prediction, truth), mse


def plot(path, series, args, count=4):
    """Observations, truth, fit and extrapolation of a few test series."""
    times, values, grid, prediction, truth = series
    inside = grid <= args.t_obs
    fig, axes = plt.subplots(count, 1, figsize=(9, 1.9 * count), sharex=True)
    for i, ax in enumerate(axes):
        ax.axvspan(args.t_obs, grid[-1], color="0.93")
        ax.plot(grid, truth[i], color="0.45", lw=1, label="truth")
        ax.plot(times[i], values[i], "o", ms=4, color="tab:blue", label="observations")
        ax.plot(grid[inside], prediction[i, inside], color="tab:red", lw=1.4, label="fit")
        ax.plot(grid[~inside], prediction[i, ~inside], "--", color="tab:red", lw=1.4,
                label="extrapolation")
    axes[0].legend(fontsize=7, ncol=4, loc="upper right")
    axes[0].set_title("Latent ODE, ODE-RNN encoder (grey: beyond the observed window)")
    axes[-1].set_xlabel("t")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    """Train, evaluate, report, plot."""
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    model = train(args, rng)
    series, mse = evaluate(model, args, rng)
    print(f"Test MSE vs noise-free truth: fit on [0, {args.t_obs:g}] = {mse['fit']:.4f}, "
          f"extrapolation on ({args.t_obs:g}, {args.t_obs + args.t_extra:g}] = "
          f"{mse['extrapolation']:.4f} (predicting 0 there: {mse['zero']:.4f})")
    plot(args.output, series, args)
    print(f"Wrote {args.output} ({time.perf_counter() - start:.0f} s in total)")
    return mse


if __name__ == "__main__":
    main()
