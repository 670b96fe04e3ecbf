"""Recover Robertson's three rate constants from noisy data with `method="rodas4"`.

Robertson's reactions (A -> B at k1, B + B -> C + B at k2, B + C -> A + C at
k3; k1 = 0.04, k2 = 3e7, k3 = 1e4) are the classic stiff problem: the
intermediate B lives on a time scale of ~1e-4 while the whole reaction
takes ~1e5. The script:

1. simulates the true system and observes all three concentrations at
   log-spaced times with 1% multiplicative noise;
2. shows that `dopri5` cannot even solve it (a clear `max_num_steps` error);
3. fits log(k1), log(k2), log(k3) from a wrong first guess with Adam, by
   backpropagation through `rodas4` (each concentration's error is scaled
   by its largest observed value: B is 1e5 times smaller than A);
4. prints the fitted constants and writes a figure (`--output`): data and
   fit on a log time axis, and the loss per iteration.

Run:

    python examples/stiff_kinetics.py
    python examples/stiff_kinetics.py --steps 300 --output robertson.png
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
import tensorflow as tf  # noqa: E402

import keras_node  # noqa: E402

TRUE_K = (0.04, 3e7, 1e4)
Y0 = (1.0, 0.0, 0.0)
SOLVER = dict(method="rodas4", rtol=1e-6, atol=1e-10, jit_compile=False)


def parse_args(argv=None):
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="gradient-descent iterations")
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--observations", type=int, default=16, help="log-spaced times")
    parser.add_argument("--t-max", type=float, default=1e4, help="last observation time")
    parser.add_argument("--noise", type=float, default=0.01, help="relative noise")
    parser.add_argument("--dopri5-steps", type=int, default=2000,
                        help="max_num_steps of the dopri5 attempt")
    parser.add_argument("--output", default="stiff_kinetics.png", help="figure path")
    parser.add_argument("--smoke", action="store_true", help="a quick run (tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.observations, args.t_max, args.dopri5_steps = 3, 6, 10.0, 200
    return args


def robertson(log_k):
    """`func(t, y)` of Robertson's reactions with rate constants exp(log_k)."""
    def func(t, y):
        k = tf.exp(log_k)
        r1, r2, r3 = k[0] * y[0], k[1] * y[1] ** 2, k[2] * y[1] * y[2]
        return tf.stack([-r1 + r3, r1 - r2 - r3, r2])

    return func


# One variable and one function for every solve: eager `odeint` calls
# compile once per function, so a new closure per solve would retrace.
LOG_K = tf.Variable(np.log(TRUE_K), dtype=tf.float64, name="log_k")
ROBERTSON = robertson(LOG_K)


def solve(times, **options):
    """Concentrations at `times` (from Y0 at t = 0) with the current LOG_K,
    shape (len(times), 3)."""
    y0 = tf.constant(Y0, tf.float64)
    return keras_node.odeint(ROBERTSON, y0, np.concatenate([[0.0], times]),
                             **{**SOLVER, **options})[1:]


def show_dopri5_fails(times, max_num_steps):
    """The explicit default method on the same problem."""
    LOG_K.assign(np.log(TRUE_K))
    try:
        solve(times, method="dopri5", max_num_steps=max_num_steps)
        print("dopri5 solved it (unexpected on a stiff problem)")
    except tf.errors.InvalidArgumentError as error:
        print(f"dopri5 fails as expected: {error.message.splitlines()[0]}")


def fit(times, observed, args):
    """Adam on log k from a wrong first guess; returns log k and the losses."""
    log_k = LOG_K
    log_k.assign(np.log(TRUE_K) + np.array([0.7, -0.7, 0.7]))  # the first guess
    scale = tf.reduce_max(tf.abs(observed), axis=0)
    optimizer = keras.optimizers.Adam(args.learning_rate)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(((solve(times) - observed) / scale) ** 2)
        optimizer.apply_gradients([(tape.gradient(loss, log_k), log_k)])
        return loss

    history = []
    for i in range(args.steps):
        history.append(float(step()))
        if i % 50 == 0 or i == args.steps - 1:
            k = np.exp(log_k.numpy())
            print(f"step {i:4d}: loss {history[-1]:.3e}, k = {np.array2string(k, precision=4)}")
    return log_k, history


def plot(args, times, observed, history):
    """Data and the fit (the current LOG_K) on a log time axis, and the loss
    curve, to `args.output`."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    dense = np.logspace(np.log10(times[0]), np.log10(times[-1]), 200)
    curves = solve(dense).numpy()
    for i, (name, factor) in enumerate((("A", 1.0), ("B x 1e4", 1e4), ("C", 1.0))):
        left.semilogx(times, observed[:, i] * factor, f"C{i}o", label=f"{name} data")
        left.semilogx(dense, curves[:, i] * factor, f"C{i}-", label=f"{name} fit")
    left.set_xlabel("t")
    left.set_ylabel("concentration")
    left.legend(fontsize=8)
    right.semilogy(history)
    right.set_xlabel("iteration")
    right.set_ylabel("scaled mean squared error")
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"Wrote {args.output}")


def main(argv=None):
    """Simulate, observe, show dopri5 failing, fit, report, plot."""
    args = parse_args(argv)
    rng = np.random.default_rng(0)
    times = np.logspace(-4, np.log10(args.t_max), args.observations)
    LOG_K.assign(np.log(TRUE_K))
    true = solve(times).numpy()
    observed = true * (1.0 + args.noise * rng.standard_normal(true.shape))
    show_dopri5_fails(times, args.dopri5_steps)
    log_k, history = fit(times, tf.constant(observed), args)
    fitted = np.exp(log_k.numpy())
    for name, k, true_k in zip(("k1", "k2", "k3"), fitted, TRUE_K):
        print(f"{name}: fitted {k:.4g}, true {true_k:.4g} ({100 * (k / true_k - 1):+.1f}%)")
    plot(args, times, observed, history)


if __name__ == "__main__":
    main()
