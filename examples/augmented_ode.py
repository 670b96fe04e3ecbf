"""Augmented Neural ODEs (Dupont et al. 2019): fit g(x) = -x on [-1, 1].

A 1-D Neural ODE's flow map is increasing (trajectories of a 1-D ODE cannot
cross), so it cannot turn -1 into 1 and 1 into -1: the best it can do is
the isotonic fit of -x, the constant 0, with mean squared error mean(x^2)
= 0.355 on this grid. `ODELayer(augment_dim=1)` solves in two dimensions
(one zero channel appended), where trajectories can go around each other,
and fits the map. The script trains both and writes a figure (`--output`):
the learned maps, and the trajectories in the plane of the augmented flow.

Run:

    python examples/augmented_ode.py
    python examples/augmented_ode.py --epochs 60 --output augmented.png
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_node  # noqa: E402


def parse_args(argv=None):
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=60, help="training epochs")
    parser.add_argument("--points", type=int, default=32, help="training points on [-1, 1]")
    parser.add_argument("--output", default="augmented_ode.png", help="path of the figure")
    parser.add_argument("--smoke", action="store_true", help="a few epochs (for the tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs = 5
    return args


def train(augment_dim, x, epochs):
    """An ODE-flow model x -> first channel of h(1), trained on -x; returns
    (model, the ODE layer, final training MSE)."""
    keras.utils.set_random_seed(0)
    layer = keras_node.ODELayer(keras_node.dynamics.MLP(units=(16,), time_dependent=False),
                                augment_dim=augment_dim, atol=1e-4, gradient="backprop",
                                t=np.linspace(0.0, 1.0, 21), return_sequences=True)
    inputs = keras.Input((1,))
    trajectories = layer(inputs)
    model = keras.Model(inputs, trajectories[:, -1, :1])
    model.compile(keras.optimizers.Adam(0.03), "mse")
    history = model.fit(x, -x, epochs=epochs, batch_size=len(x), verbose=0)
    return model, layer, history.history["loss"][-1]


def plot(x, results, path):
    """Learned maps (left) and the augmented flow's trajectories (right)."""
    fig, (maps, plane) = plt.subplots(1, 2, figsize=(10, 4))
    dense = np.linspace(-1, 1, 101).astype("float32")[:, None]
    maps.plot(dense[:, 0], -dense[:, 0], "k--", label="g(x) = -x")
    for label, (model, _, loss) in results.items():
        maps.plot(dense[:, 0], model.predict(dense, verbose=0)[:, 0], label=f"{label} (MSE {loss:.3f})")
    maps.set_xlabel("x")
    maps.set_ylabel("output")
    maps.legend()
    maps.set_title("learned maps")
    _, layer, _ = results["augmented (augment_dim=1)"]
    paths = layer(x).numpy()  # (points, times, 2)
    for path_xy in paths:
        plane.plot(path_xy[:, 0], path_xy[:, 1], color=plt.cm.coolwarm((path_xy[0, 0] + 1) / 2), lw=1)
    plane.scatter(paths[:, 0, 0], paths[:, 0, 1], s=10, c="k", label="start (x, 0)")
    plane.scatter(paths[:, -1, 0], paths[:, -1, 1], s=10, c="g", label="end")
    plane.set_xlabel("h[0]")
    plane.set_ylabel("h[1] (augmented channel)")
    plane.legend()
    plane.set_title("augmented flow: trajectories go around each other")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None):
    """Train both models, print their errors, write the figure."""
    args = parse_args(argv)
    x = np.linspace(-1, 1, args.points).astype("float32")[:, None]
    results = {label: train(dim, x, args.epochs)
               for label, dim in (("plain 1-D ODE", 0), ("augmented (augment_dim=1)", 1))}
    print(f"isotonic bound (best any increasing map can do): MSE = {float(np.mean(x ** 2)):.3f}")
    for label, (_, _, loss) in results.items():
        print(f"{label}: training MSE = {loss:.4f}")
    plot(x, results, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
