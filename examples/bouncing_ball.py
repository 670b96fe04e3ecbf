"""Learn a bouncing ball's restitution from its bounce times, with `odeint_event`.

A ball of radius 0.2 falls from height 10 under gravity 9.8. Each time it
hits the ground (the event: height - radius crosses zero, falling) it keeps
(1 - a) of its speed and flies up again. The simulation is a Python loop of
`keras_node.odeint_event` calls and state resets; the event times are
differentiable (implicit function theorem), so gradient descent can fit `a`
to observed bounce times. The script:

1. simulates the true ball (a = 0.2) and takes its bounce times as the data;
2. starts from a wrong guess (a = 0.5) and fits `a` with Adam on the mean
   squared error of the bounce times (`--gradient adjoint` or `backprop`);
3. prints the fit and writes a figure (`--output`): heights over time of
   the true, initial and fitted balls, and the loss per iteration.

Run:

    python examples/bouncing_ball.py
    python examples/bouncing_ball.py --bounces 4 --steps 60 --output ball.png
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

RADIUS, GRAVITY, HEIGHT = 0.2, 9.8, 10.0
TOLERANCES = dict(rtol=1e-8, atol=1e-8)


def parse_args(argv=None):
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bounces", type=int, default=5, help="bounces simulated and observed")
    parser.add_argument("--steps", type=int, default=150, help="gradient-descent iterations")
    parser.add_argument("--learning-rate", type=float, default=0.02)
    parser.add_argument("--true-loss", type=float, default=0.2, help="the a that made the data")
    parser.add_argument("--initial-loss", type=float, default=0.5, help="the first guess of a")
    parser.add_argument("--gradient", choices=("adjoint", "backprop"), default="adjoint")
    parser.add_argument("--output", default="bouncing_ball.png", help="figure path")
    parser.add_argument("--smoke", action="store_true", help="a quick run (tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.bounces, args.steps = 3, 8
    return args


def fall(t, y):
    """Free fall: y = [height, velocity]."""
    return tf.stack([y[1], tf.constant(-GRAVITY, y.dtype) + 0.0 * y[0]])


def ground(t, y):
    """Zero when the ball touches the ground."""
    return y[0] - RADIUS


def bounce_times(speed_loss, bounces, gradient):
    """Impact times of `bounces` bounces, and the (time, state) after each."""
    state = tf.constant([HEIGHT, 0.0], tf.float64)
    t = tf.constant(0.0, tf.float64)
    times, starts = [], [(t, state)]
    for _ in range(bounces):
        t, state = keras_node.odeint_event(fall, state, t, ground, direction=-1,
                                           gradient=gradient, **TOLERANCES)
        times.append(t)
        state = tf.stack([state[0], -(1.0 - speed_loss) * state[1]])  # the bounce
        starts.append((t, state))
    return tf.stack(times), starts


def trajectory(starts, points=60):
    """Heights on a fine grid from the drop to the last bounce (for the figure)."""
    ts, hs = [], []
    for (t0, y0), (t1, _) in zip(starts[:-1], starts[1:]):
        grid = np.linspace(float(t0), float(t1), points)
        ys = keras_node.odeint(fall, y0, grid, **TOLERANCES)
        ts.append(grid)
        hs.append(ys[:, 0].numpy())
    return np.concatenate(ts), np.concatenate(hs)


def fit(observed, args):
    """Adam on the restitution loss `a`; returns it and the loss history."""
    speed_loss = tf.Variable(args.initial_loss, dtype=tf.float64)
    optimizer = keras.optimizers.Adam(args.learning_rate)
    history = []
    for step in range(args.steps):
        with tf.GradientTape() as tape:
            times, _ = bounce_times(speed_loss, args.bounces, args.gradient)
            loss = tf.reduce_mean((times - observed) ** 2)
        optimizer.apply_gradients([(tape.gradient(loss, speed_loss), speed_loss)])
        speed_loss.assign(tf.clip_by_value(speed_loss, 0.0, 0.95))
        history.append(float(loss))
        if step % 25 == 0 or step == args.steps - 1:
            print(f"step {step:4d}: loss {float(loss):.3e}, a = {float(speed_loss):.5f}")
    return float(speed_loss), history


def plot(args, curves, history):
    """Heights over time and the loss curve, to `args.output`."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for label, (ts, hs), style in curves:
        left.plot(ts, hs, style, label=label)
    left.set_xlabel("t")
    left.set_ylabel("height")
    left.legend()
    right.semilogy(history)
    right.set_xlabel("iteration")
    right.set_ylabel("mean squared bounce-time error")
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"Wrote {args.output}")


def main(argv=None):
    """Simulate, fit, report, plot."""
    args = parse_args(argv)
    observed, true_starts = bounce_times(tf.constant(args.true_loss, tf.float64), args.bounces,
                                         args.gradient)
    print("observed bounce times:", np.round(observed.numpy(), 6).tolist())
    print(f"first impact {float(observed[0]):.8f} (exact sqrt(2) = {np.sqrt(2.0):.8f})")
    _, initial_starts = bounce_times(tf.constant(args.initial_loss, tf.float64), args.bounces,
                                     args.gradient)
    learned, history = fit(observed, args)
    print(f"fitted a = {learned:.6f} (true {args.true_loss}, first guess {args.initial_loss})")
    fitted_times, fitted_starts = bounce_times(tf.constant(learned, tf.float64), args.bounces,
                                               args.gradient)
    print(f"max |bounce time error| after fitting: "
          f"{float(tf.reduce_max(tf.abs(fitted_times - observed))):.3e}")
    plot(args, [("true", trajectory(true_starts), "k-"),
                (f"first guess a={args.initial_loss}", trajectory(initial_starts), "C1--"),
                (f"fitted a={learned:.4f}", trajectory(fitted_starts), "C0:")], history)


if __name__ == "__main__":
    main()
