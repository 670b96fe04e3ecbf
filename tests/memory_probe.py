"""Peak resident memory of one forward + backward solve, measured in this process.

Run as a script in a fresh subprocess (tests/test_adjoint_checkpoints.py
does), never imported by a test process: the peak
RSS (VmHWM on Linux, else `ru_maxrss`) only ever grows, and TensorFlow's own
allocations are invisible to `tracemalloc`, so each measurement needs its own
process.

Protocol, for `--gradient adjoint` (keras_node.odeint_adjoint) or
`--gradient backprop` (keras_node.odeint, differentiating through the steps;
with `--jit-compile false` TensorFlow's own gradient of the uncompiled loop,
else the replay of keras_node/solvers/replay.py):

1. Build the problem and run forward + backward once over a tiny horizon
   (`--warmup-horizon`): this traces and compiles everything (the horizon is
   a tensor argument, so later solves reuse the same compiled functions) and
   loads TensorFlow's kernels. `baseline_mb` = peak RSS after it.
2. For each horizon in `--horizons` (increasing), run forward + backward and
   record `peak_mb` = peak RSS so far and `extra_mb = peak_mb - baseline_mb`,
   the memory the solve needed beyond the warm process, together with the
   forward step count.

The last line printed to stdout is one JSON object:
`{"gradient": ..., "problem": ..., "baseline_mb": ..., "runs": [{"horizon",
"num_steps", "peak_mb", "extra_mb", "seconds"}, ...]}`.

Problems (float64):
- `oscillator`: uncoupled harmonic oscillators x'' = -w^2 x, state
  `(batch, 2)`, w in [1, 2]; dopri5 needs a number of steps proportional to
  the horizon. The loss is sum(y(T)^2).
- `mlp`: f(h) = tanh(h W1 + b1) W2 + b2, state `(batch, 16)`, hidden 64,
  weights N(0, 1)/sqrt(fan_in) (the "mlp" benchmark problem, own seed), loss
  sum(h(T)^2); gradients for h0 and the four weights.
"""

import argparse
import json
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def _peak_rss_mb():
    """Peak resident set size of this process, in MiB.

    On Linux, VmHWM from /proc/self/status: the high-water mark of this
    address space. Not `ru_maxrss`, which Linux carries across execve, so a
    probe started from a big parent (a pytest process with TensorFlow loaded)
    would report the parent's RSS as its own floor.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    scale = 1.0 / 1024.0 if sys.platform != "darwin" else 1.0 / (1024.0 * 1024.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _problem(name, batch, tf, np):
    rng = np.random.default_rng(1234)
    if name == "oscillator":
        omega2 = tf.constant(rng.uniform(1.0, 2.0, size=(batch, 1)) ** 2)

        def func(t, y):
            return tf.concat([y[:, 1:], -omega2 * y[:, :1]], axis=1)

        return func, tf.constant(rng.normal(size=(batch, 2))), []
    if name == "mlp":
        d, h = 16, 64
        variables = [
            tf.Variable(rng.normal(size=(d, h)) / np.sqrt(d)),
            tf.Variable(rng.normal(size=(h,)) / np.sqrt(d)),
            tf.Variable(rng.normal(size=(h, d)) / np.sqrt(h)),
            tf.Variable(rng.normal(size=(d,)) / np.sqrt(h)),
        ]
        w1, b1, w2, b2 = variables

        def func(t, y):
            return tf.matmul(tf.tanh(tf.matmul(y, w1) + b1), w2) + b2

        return func, tf.constant(rng.normal(size=(batch, d))), variables
    raise ValueError(f"unknown problem {name!r}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gradient", choices=("adjoint", "backprop"), required=True)
    parser.add_argument("--problem", choices=("oscillator", "mlp"), default="oscillator")
    parser.add_argument("--batch", type=int, default=16384)
    parser.add_argument("--rtol", type=float, default=1e-6)
    parser.add_argument("--atol", type=float, default=1e-8)
    parser.add_argument("--checkpoints", type=int, default=None,
                        help="adjoint_checkpoints (default: keras_node's default)")
    parser.add_argument("--jit-compile", choices=("auto", "false"), default="auto",
                        help="the solver's jit_compile (\"false\": backprop differentiates the "
                             "uncompiled loop, whose memory grows with the steps)")
    parser.add_argument("--warmup-horizon", type=float, default=0.05)
    parser.add_argument("--horizons", type=float, nargs="+", default=[2.0, 20.0])
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    import keras_node

    func, y0, variables = _problem(args.problem, args.batch, tf, np)
    options = {"rtol": args.rtol, "atol": args.atol,
               "jit_compile": "auto" if args.jit_compile == "auto" else False}
    if args.gradient == "adjoint":
        solve = keras_node.odeint_adjoint
        if args.checkpoints is not None:
            options["adjoint_checkpoints"] = args.checkpoints
    else:
        solve = keras_node.odeint

    def forward_backward(horizon):
        # The horizon is a tensor, so every horizon reuses one compiled solve.
        t = tf.stack([tf.constant(0.0, tf.float64), tf.constant(horizon, tf.float64)])
        with tf.GradientTape() as tape:
            tape.watch(y0)
            ys, stats = solve(func, y0, t, return_stats=True, **options)
            loss = tf.reduce_sum(ys[-1] ** 2)
        grads = tape.gradient(loss, [y0] + variables)
        if any(g is None for g in grads):
            raise RuntimeError("a gradient is None")
        checksum = float(sum(tf.reduce_sum(g) for g in grads))  # forces the computation
        if not np.isfinite(checksum):
            raise RuntimeError("non-finite gradient")
        return int(stats["num_steps"])

    forward_backward(args.warmup_horizon)
    baseline = _peak_rss_mb()
    runs = []
    for horizon in args.horizons:
        start = time.perf_counter()
        num_steps = forward_backward(horizon)
        peak = _peak_rss_mb()
        runs.append({
            "horizon": horizon, "num_steps": num_steps, "peak_mb": round(peak, 1),
            "extra_mb": round(peak - baseline, 1),
            "seconds": round(time.perf_counter() - start, 2),
        })
    result = {
        "gradient": args.gradient, "problem": args.problem, "batch": args.batch,
        "state_mb": round(float(np.prod(y0.shape)) * 8 / 2**20, 3),
        "baseline_mb": round(baseline, 1), "runs": runs,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
