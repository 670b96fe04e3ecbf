"""Per-sample solves (`batch_axis=0`) against joint solves (issue 15).

Prints, for the bench MLPs (state 256x16, the harness's weights, float32,
dopri5, rtol=1e-5, atol=1e-7), the forward solve's time (median ms of the
step in a `tf.function`, keras_node's default `jit_compile="auto"`) and
NFE with joint stepping and with `batch_axis=0`, and their ratios; then
Van der Pol (mu = 25, float64, rtol = atol = 1e-5, one limit cycle, 256
states spread along it), where samples differ in stiffness: batched `func`
calls with both, and the largest per-sample step count.

Usage (repository root): python benchmarks/per_sample.py [--repeats 200]
"""

import argparse
import os
import sys
import time

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_node  # noqa: E402
from benchmarks import peers  # noqa: E402
from benchmarks.problems import get_problem  # noqa: E402


def median_ms(fn, repeats):
    """Median milliseconds of `fn()` over `repeats` calls, after a warm-up."""
    fn()
    for _ in range(max(20, repeats // 5)):
        fn()
    durations = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        durations.append(time.perf_counter() - start)
    return 1e3 * float(np.median(durations))


def _bench_mlp(name):
    """`(problem, params, field, y0)` of a bench MLP in float32, the
    parameters as variables the field reads."""
    problem = get_problem(name)
    params = {k: tf.Variable(v) for k, v in problem.params_as("float32").items()}
    return problem, params, peers.tf_field(problem, params), tf.constant(problem.y0_as("float32"))


def mlp_rows(repeats):
    """(problem, joint ms, per-sample ms, joint NFE, per-sample NFE)."""
    rows = []
    for name in ("mlp", "mlp_contractive"):
        problem, params, field, y0 = _bench_mlp(name)
        times = tf.constant(problem.times(problem.default_T, "float32"))
        result = []
        for batch_axis in (None, 0):
            @tf.function(autograph=False)
            def solve(y0, batch_axis=batch_axis):
                ys, stats = keras_node.odeint(field, y0, times, rtol=1e-5, atol=1e-7,
                                              batch_axis=batch_axis, return_stats=True)
                return ys, stats["nfe"]

            milliseconds = median_ms(lambda: solve(y0)[0].numpy(), repeats)
            result.append((milliseconds, int(solve(y0)[1])))
        rows.append((name, result[0][0], result[1][0], result[0][1], result[1][1]))
    return rows


def _per_sample_backward(problem, params, y_final, T, rtol, atol):
    """The adjoint's backward solve with its own steps per sample: the
    augmented state [z, a, dL/dtheta] of every sample, the parameter
    gradient per sample (per-example VJPs by `tf.vectorized_map`), solved
    by `odeint(batch_axis=0)` in reversed time s = T - t (full error norm)
    and summed over the samples at the end. Returns (gradients, stats)."""
    names = list(params)
    thetas = [tf.convert_to_tensor(params[k]) for k in names]

    def per_example_vjp(args):
        z, a = args
        with tf.GradientTape() as tape:
            tape.watch(thetas)
            f = peers.tf_field(problem, dict(zip(names, thetas)))(0.0, z[None])
        return tape.gradient(f, thetas, output_gradients=a[None])

    field = peers.tf_field(problem, dict(zip(names, thetas)))

    def augmented(s, state):
        z, a, _ = state
        with tf.GradientTape() as tape:
            tape.watch(z)
            f = field(T - s, z)
        return -f, tape.gradient(f, z, output_gradients=a), tuple(tf.vectorized_map(per_example_vjp, (z, a)))

    start = (y_final, 2.0 * y_final, tuple(tf.zeros((y_final.shape[0],) + t.shape, t.dtype) for t in thetas))
    ys, stats = keras_node.odeint(augmented, start, [0.0, T], rtol=rtol, atol=atol, batch_axis=0,
                                  return_stats=True)
    return [tf.reduce_sum(g[-1], axis=0) for g in ys[2]], stats


def backward_rows(repeats):
    """Joint vs per-sample backward solve of the adjoint, after a per-sample
    forward, loss sum(z(T)^2): (problem, [(label, ms, backward NFE, largest
    gradient error relative to backprop through a tight solve)])."""
    rows = []
    for name in ("mlp", "mlp_contractive"):
        problem, params, field, y0 = _bench_mlp(name)
        T = float(problem.default_T)
        tol = dict(rtol=1e-5, atol=1e-7)
        stats = keras_node.AdjointStats()

        @tf.function(autograph=False)
        def joint(y0, seminorm, checkpoints):
            with tf.GradientTape() as tape:
                ys = keras_node.odeint_adjoint(field, y0, [0.0, T], batch_axis=0, adjoint_seminorm=seminorm,
                                               adjoint_checkpoints=checkpoints, backward_stats=stats, **tol)
                loss = tf.reduce_sum(ys[-1] ** 2)
            return tape.gradient(loss, list(params.values())), stats.nfe.read_value()

        @tf.function(autograph=False)
        def per_sample(y0):
            y_final = keras_node.odeint(field, y0, [0.0, T], batch_axis=0, **tol)[-1]
            grads, s = _per_sample_backward(problem, params, y_final, T, **tol)
            return grads, s["nfe"]

        @tf.function(autograph=False)
        def backprop(y0):
            with tf.GradientTape() as tape:
                ys = keras_node.odeint(field, y0, [0.0, T], batch_axis=0, rtol=1e-7, atol=1e-9)
                loss = tf.reduce_sum(ys[-1] ** 2)
            return tape.gradient(loss, list(params.values()))

        variants = [("joint, seminorm, 16 checkpoints (default)", lambda: joint(y0, True, 16)),
                    ("joint, full norm, backsolve", lambda: joint(y0, False, 0)),
                    ("per sample, full norm, backsolve", lambda: per_sample(y0))]
        reference = backprop(y0)
        result = []
        for label, fn in variants:
            grads, nfe = fn()
            error = max(float(tf.reduce_max(tf.abs(g - r)) / tf.reduce_max(tf.abs(r)))
                        for g, r in zip(grads, reference))
            result.append((label, median_ms(lambda: fn()[1].numpy(), repeats), int(nfe), error))
        rows.append((name, result))
    return rows


def van_der_pol_row():
    """(joint NFE, per-sample NFE, largest per-sample steps, seconds each)."""
    from scipy.integrate import solve_ivp

    mu = 25.0

    def numpy_field(t, y):
        return [y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]]

    def field(t, y):
        return tf.stack([y[:, 1], mu * (1 - y[:, 0] ** 2) * y[:, 1] - y[:, 0]], axis=1)

    settled = solve_ivp(numpy_field, [0, 200], [2.0, 0.0], method="DOP853", rtol=1e-12, atol=1e-12)

    def crossing(t, y):
        return y[1]

    crossing.direction = -1
    cycle = solve_ivp(numpy_field, [0, 120], settled.y[:, -1], method="DOP853", rtol=1e-12,
                      atol=1e-12, events=crossing, dense_output=True)
    first, second = cycle.t_events[0][:2]
    y0 = tf.constant(cycle.sol(first + np.linspace(0, second - first, 256, endpoint=False)).T)
    out = {}
    for batch_axis in (None, 0):
        start = time.perf_counter()
        _, stats = keras_node.odeint(field, y0, [0.0, second - first], rtol=1e-5, atol=1e-5,
                                     max_num_steps=100_000, batch_axis=batch_axis, return_stats=True)
        out[batch_axis] = (int(stats["nfe"]), int(tf.reduce_max(stats["num_steps"])),
                           time.perf_counter() - start)
    return out


def main(argv=None):
    """Print both tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per variant")
    args = parser.parse_args(argv)
    print("| problem | joint ms | batch_axis=0 ms | time ratio | joint NFE | batch_axis=0 NFE | NFE ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, joint_ms, sample_ms, joint_nfe, sample_nfe in mlp_rows(args.repeats):
        print(f"| {name} | {joint_ms:.2f} | {sample_ms:.2f} | {sample_ms / joint_ms:.2f} | "
              f"{joint_nfe} | {sample_nfe} | {sample_nfe / joint_nfe:.2f} |")
    print("\nAdjoint backward solve after a per-sample forward (forward + backward ms, backward NFE,")
    print("largest gradient error relative to backprop through a solve at rtol 1e-7):\n")
    print("| problem | backward | ms | backward NFE | gradient error |")
    print("|---|---|---|---|---|")
    for name, result in backward_rows(max(20, args.repeats // 4)):
        for label, milliseconds, nfe, error in result:
            print(f"| {name} | {label} | {milliseconds:.1f} | {nfe} | {error:.1e} |")
    vdp = van_der_pol_row()
    print("\nVan der Pol mu=25, 256 states on the limit cycle (first call, incl. tracing):")
    print(f"joint: {vdp[None][0]} batched func calls, {vdp[None][1]} steps, {vdp[None][2]:.1f} s; "
          f"batch_axis=0: {vdp[0][0]} calls, largest per-sample steps {vdp[0][1]}, {vdp[0][2]:.1f} s; "
          f"{vdp[None][0] / vdp[0][0]:.1f}x fewer calls")


if __name__ == "__main__":
    main()
