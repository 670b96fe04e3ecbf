"""Continuous normalizing flows on FFJORD's 2-D toy densities.

`keras_node.CNF` (FFJORD, Grathwohl et al. 2019) is trained by maximum
likelihood (`compile(optimizer)` + `fit(x)`, no loss argument) on samples of
FFJORD's toy densities, generated here in numpy:

- `8gaussians`: eight Gaussians (std 0.5 / sqrt 2) on a circle of radius
  4 / sqrt 2; entropy 2.838 nats (the modes barely overlap: ln 8 plus a
  Gaussian's entropy),
- `checkerboard`: uniform on 8 squares of side 2; entropy ln 32 = 3.466,
- `moons`: two interleaved half circles with noise (no closed form).

For each dataset the script prints the test NLL in nats next to the
entropy (the best any model can do), and with `--regularize W` trains a
second flow with the RNODE kinetic + Jacobian-Frobenius regularisers at
weight W (Finlay et al. 2020) and compares the NFE per training iteration.
The figure (`--output`) has a row per dataset: data, learned density,
samples, and NFE per iteration with and without regularisation.

Run:

    python examples/cnf_toy.py --datasets 8gaussians checkerboard --regularize 0.01
    python examples/cnf_toy.py --smoke      # seconds: the smoke test's run
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

ENTROPY = {"8gaussians": 1.0 + np.log(2 * np.pi * 0.125) + np.log(8.0),
           "checkerboard": np.log(32.0), "moons": None}


def sample_data(name, n, rng):
    """`n` points of FFJORD's toy density `name`, float32 `(n, 2)`."""
    if name == "8gaussians":
        angles = np.pi / 4 * rng.integers(0, 8, n)
        centers = 4.0 * np.stack([np.cos(angles), np.sin(angles)], 1)
        return ((centers + 0.5 * rng.normal(size=(n, 2))) / np.sqrt(2)).astype("float32")
    if name == "checkerboard":
        x1 = rng.uniform(-2, 2, n)
        x2 = rng.uniform(0, 1, n) - 2 * rng.integers(0, 2, n) + np.floor(x1) % 2
        return (2.0 * np.stack([x1, x2], 1)).astype("float32")
    if name == "moons":
        angles = rng.uniform(0, np.pi, n)
        upper = rng.integers(0, 2, n).astype(bool)
        x = np.where(upper, np.cos(angles), 1 - np.cos(angles))
        y = np.where(upper, np.sin(angles), 0.5 - np.sin(angles))
        return ((np.stack([x, y], 1) - [0.5, 0.25]) * 2 + 0.1 * rng.normal(size=(n, 2))).astype("float32")
    raise ValueError(f"unknown dataset {name!r}")


class NFEPerIteration(keras.callbacks.Callback):
    """The CNF's forward NFE after every training batch."""

    def __init__(self):
        super().__init__()
        self.nfe = []

    def on_train_batch_end(self, batch, logs=None):
        self.nfe.append(self.model.nfe_forward)


def train(data, args, regularize):
    """A CNF trained on `data`; returns it and its NFE per iteration."""
    keras.utils.set_random_seed(args.seed)
    regularizers = {"kinetic": regularize, "jacobian_frobenius": regularize} if regularize else None
    cnf = keras_node.CNF(keras_node.dynamics.MLP(units=(args.hidden,) * 2),
                         rtol=args.tol, atol=args.tol, regularizers=regularizers)
    cnf.build((None, 2))
    cnf.compile(keras.optimizers.Adam(args.learning_rate))
    nfe = NFEPerIteration()
    cnf.fit(data, epochs=args.epochs, batch_size=args.batch_size, verbose=0, callbacks=[nfe])
    return cnf, nfe.nfe


def plot_row(axes, name, data, cnf, nfe, nfe_regularized):
    """Data, learned density, samples and NFE per iteration for one dataset."""
    lim = 4.5
    axes[0].scatter(data[:2000, 0], data[:2000, 1], s=1)
    grid = np.linspace(-lim, lim, 60, dtype="float32")
    xx, yy = np.meshgrid(grid, grid)
    points = np.stack([xx.ravel(), yy.ravel()], 1)
    density = np.exp(cnf.log_prob(points).numpy())
    axes[1].imshow(density.reshape(xx.shape), origin="lower", extent=(-lim, lim, -lim, lim))
    samples = cnf.sample(2000, seed=0).numpy()
    axes[2].scatter(samples[:, 0], samples[:, 1], s=1)
    axes[3].plot(nfe, label="plain")
    if nfe_regularized is not None:
        axes[3].plot(nfe_regularized, label="regularised")
    axes[3].legend()
    for ax, title in zip(axes, ("data", "learned density", "samples", "NFE per iteration")):
        ax.set_title(f"{name}: {title}", fontsize=8)
    for ax in axes[:3]:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)


def run(name, args, axes):
    """Train (and with --regularize, train regularised) on `name`; print the report."""
    rng = np.random.default_rng(args.seed)
    data, test = sample_data(name, args.num_train, rng), sample_data(name, args.num_test, rng)
    start = time.time()
    cnf, nfe = train(data, args, 0.0)
    nll = -float(np.mean(cnf.log_prob(test).numpy()))
    entropy = ENTROPY[name]
    reference = f"entropy {entropy:.3f}, gap {nll - entropy:.3f}" if entropy else "no closed form"
    print(f"{name}: test NLL {nll:.3f} nats ({reference}); mean NFE per iteration "
          f"{np.mean(nfe[-10:]):.1f} at the end; {time.time() - start:.0f} s")
    nfe_regularized = None
    if args.regularize:
        regularized, nfe_regularized = train(data, args, args.regularize)
        nll_regularized = -float(np.mean(regularized.log_prob(test).numpy()))
        print(f"{name} regularised (kinetic + Frobenius, weight {args.regularize}): test NLL "
              f"{nll_regularized:.3f} nats; mean NFE per iteration "
              f"{np.mean(nfe_regularized[-10:]):.1f} at the end")
    plot_row(axes, name, data, cnf, nfe, nfe_regularized)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["8gaussians", "checkerboard", "moons"],
                        choices=sorted(ENTROPY))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--num-train", type=int, default=20_000)
    parser.add_argument("--num-test", type=int, default=5_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--hidden", type=int, default=64, help="width of the two hidden layers")
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--tol", type=float, default=1e-5, help="rtol = atol of the solver")
    parser.add_argument("--regularize", type=float, default=0.0,
                        help="also train with kinetic + Frobenius regularisers at this weight")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="cnf_toy.png")
    parser.add_argument("--smoke", "--quick", action="store_true",
                        help="tiny run (seconds), for the smoke test")
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.num_train, args.num_test, args.hidden = 1, 256, 256, 16
        args.datasets = args.datasets[:1]
        args.batch_size, args.tol = 128, 1e-3
        args.regularize = args.regularize or 0.01
    return args


def main(argv=None):
    args = parse_args(argv)
    fig, axes = plt.subplots(len(args.datasets), 4, figsize=(13, 3.2 * len(args.datasets)),
                             squeeze=False)
    for name, row in zip(args.datasets, axes):
        run(name, args, row)
    fig.tight_layout()
    fig.savefig(args.output, dpi=100)
    print(f"Figure written to {args.output}")


if __name__ == "__main__":
    main()
