"""rodas4 vs scipy's Radau and BDF on two stiff problems (issue 18).

Robertson on [0, 40] (rtol 1e-6, atol 1e-10) and Van der Pol mu = 1000 on
[0, 3000] (rtol = atol = 1e-6), float64: steps, function evaluations,
Jacobians, wall time (keras_node: the best of `--repeats` calls after the
first, which traces and compiles; scipy: the best of as many calls, with the
analytic Jacobian). Prints a markdown table.

    python benchmarks/stiff.py --repeats 3
"""

import argparse
import time

import tensorflow as tf
from scipy.integrate import solve_ivp

import keras_node

MU = 1000.0
PROBLEMS = {
    "robertson": dict(y0=[1.0, 0.0, 0.0], span=(0.0, 40.0), rtol=1e-6, atol=1e-10),
    "vdp_mu1000": dict(y0=[2.0, 0.0], span=(0.0, 3000.0), rtol=1e-6, atol=1e-6),
}


def tf_func(name):
    if name == "robertson":
        return lambda t, y: tf.stack([-0.04 * y[0] + 1e4 * y[1] * y[2],
                                      0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2,
                                      3e7 * y[1] ** 2])
    return lambda t, y: tf.stack([y[1], MU * (1.0 - y[0] ** 2) * y[1] - y[0]])


def np_func_and_jac(name):
    if name == "robertson":
        def f(t, y):
            return [-0.04 * y[0] + 1e4 * y[1] * y[2],
                    0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2, 3e7 * y[1] ** 2]

        def jac(t, y):
            return [[-0.04, 1e4 * y[2], 1e4 * y[1]],
                    [0.04, -1e4 * y[2] - 6e7 * y[1], -1e4 * y[1]],
                    [0.0, 6e7 * y[1], 0.0]]
        return f, jac

    def f(t, y):
        return [y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]]

    def jac(t, y):
        return [[0.0, 1.0], [-2 * MU * y[0] * y[1] - 1.0, MU * (1 - y[0] ** 2)]]
    return f, jac


def best_time(run, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return min(times), result


def keras_node_row(name, spec, repeats):
    y0 = tf.constant(spec["y0"], tf.float64)
    func = tf_func(name)  # one function: compiled once

    def run():
        ys, stats = keras_node.odeint(func, y0, list(spec["span"]), method="rodas4",
                                      rtol=spec["rtol"], atol=spec["atol"], return_stats=True)
        return {k: int(v) for k, v in stats.items()}

    run()  # trace and compile
    seconds, stats = best_time(run, repeats)
    attempts = stats["num_steps"] + stats["num_rejected"]
    return ("keras_node rodas4", stats["num_steps"], stats["num_rejected"], stats["nfe"],
            attempts, seconds)


def scipy_row(name, spec, method, repeats):
    f, jac = np_func_and_jac(name)

    def run():
        return solve_ivp(f, spec["span"], spec["y0"], method=method, rtol=spec["rtol"],
                         atol=spec["atol"], jac=jac)

    seconds, sol = best_time(run, repeats)
    return (f"scipy {method}", len(sol.t) - 1, None, sol.nfev, sol.njev, seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("| problem | solver | steps | rejected | f evaluations | Jacobians | time (s) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, spec in PROBLEMS.items():
        rows = [keras_node_row(name, spec, args.repeats)]
        rows += [scipy_row(name, spec, method, args.repeats) for method in ("Radau", "BDF")]
        for solver, steps, rejected, nfe, njac, seconds in rows:
            rejected = "-" if rejected is None else rejected
            print(f"| {name} | {solver} | {steps} | {rejected} | {nfe} | {njac} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
