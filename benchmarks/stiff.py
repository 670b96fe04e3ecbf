"""rodas4 vs scipy's Radau and BDF on two stiff problems (issue 18).

Robertson on [0, 40] (rtol 1e-6, atol 1e-10) and Van der Pol mu = 1000 on
[0, 3000] (rtol = atol = 1e-6), float64: steps, function evaluations,
Jacobians, wall time (keras_node and diffrax: the best of `--repeats` calls
after the first, which traces and compiles; scipy: the best of as many
calls, with the analytic Jacobian). diffrax (Kvaerno5; PID controller with
its default coefficients, an I controller, and with pcoeff = icoeff = 0.3
as its documentation suggests for stiff problems) only when installed.
Prints a markdown table.

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


def diffrax_row(name, spec, repeats, pid=None):
    import diffrax
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)

    def vector_field(t, y, args):
        if name == "robertson":
            return jnp.stack([-0.04 * y[0] + 1e4 * y[1] * y[2],
                              0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2, 3e7 * y[1] ** 2])
        return jnp.stack([y[1], MU * (1.0 - y[0] ** 2) * y[1] - y[0]])

    @jax.jit
    def solve(y0):
        return diffrax.diffeqsolve(
            diffrax.ODETerm(vector_field), diffrax.Kvaerno5(), spec["span"][0], spec["span"][1],
            None, y0, stepsize_controller=diffrax.PIDController(rtol=spec["rtol"], atol=spec["atol"],
                                                      **(pid or {})),
            max_steps=100_000)

    y0 = jnp.asarray(spec["y0"], jnp.float64)

    def run():
        sol = solve(y0)
        jax.block_until_ready(sol.ys)
        return sol

    run()
    seconds, sol = best_time(run, repeats)
    stats = {k: int(v) for k, v in sol.stats.items()}
    label = "diffrax Kvaerno5" + (f" PID {pid['pcoeff']}/{pid['icoeff']}" if pid else "")
    return (label, stats["num_accepted_steps"], stats["num_rejected_steps"], None,
            None, seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("| problem | solver | steps | rejected | f evaluations | Jacobians | time (s) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, spec in PROBLEMS.items():
        rows = [keras_node_row(name, spec, args.repeats)]
        rows += [scipy_row(name, spec, method, args.repeats) for method in ("Radau", "BDF")]
        try:
            rows.append(diffrax_row(name, spec, args.repeats))
            # diffrax's documentation suggests these for stiff problems.
            rows.append(diffrax_row(name, spec, args.repeats, dict(pcoeff=0.3, icoeff=0.3)))
        except ImportError:
            pass
        for solver, steps, rejected, nfe, njac, seconds in rows:
            rejected, nfe, njac = ("-" if x is None else x for x in (rejected, nfe, njac))
            print(f"| {name} | {solver} | {steps} | {rejected} | {nfe} | {njac} | {seconds:.4f} |")


if __name__ == "__main__":
    main()
