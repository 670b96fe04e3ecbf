"""keras_node.CNF vs tfp's FFJORD bijector: one training iteration (issue 16).

The same problem for both: FFJORD's 8 gaussians (a batch of `--batch`
points), the same dynamics (a `keras_node.dynamics.MLP` 2-64-64-2, tanh,
time as an input, copied weights), the exact trace, dopri5 / DormandPrince
at rtol = atol = `--tol`, adjoint gradients (tfp's solvers differentiate by
the adjoint method), Adam. tfp's `FFJORD` puts the data at its final time:
`keras_node.CNF(dynamics, t=(1.0, 0.0))` is the same flow, so the two
log-likelihoods agree to the solvers' tolerance before training (printed).
Each side's training step is one `tf.function`; the first call (tracing)
is not timed; then `--iterations` steps each, alternating, the median
reported, with the NLL after the last step. Prints a markdown table.

    python benchmarks/cnf_vs_tfp.py --iterations 10
"""

import argparse
import time

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

import keras_node


def eight_gaussians(n, rng):
    angles = np.pi / 4 * rng.integers(0, 8, n)
    centers = 4.0 * np.stack([np.cos(angles), np.sin(angles)], 1)
    return ((centers + 0.5 * rng.normal(size=(n, 2))) / np.sqrt(2)).astype("float32")


def mlp(weights=None):
    layer = keras_node.dynamics.MLP(units=(64, 64), final_initializer="glorot_uniform")
    layer.build((None, 2))
    if weights is not None:
        layer.set_weights(weights)
    return layer


def keras_node_nll(dynamics, tol):
    cnf = keras_node.CNF(dynamics, t=(1.0, 0.0), trace="exact", rtol=tol, atol=tol)
    cnf.build((None, 2))
    return lambda x: -tf.reduce_mean(cnf(x, training=True))


def tfp_nll(dynamics, tol):
    solver = tfp.math.ode.DormandPrince(rtol=tol, atol=tol)
    bijector = tfp.bijectors.FFJORD(
        state_time_derivative_fn=lambda t, state: dynamics(state, t=t),
        ode_solve_fn=solver.solve, trace_augmentation_fn=tfp.bijectors.ffjord.trace_jacobian_exact)
    base = tfp.distributions.MultivariateNormalDiag(loc=tf.zeros(2))
    flow = tfp.distributions.TransformedDistribution(distribution=base, bijector=bijector)
    return lambda x: -tf.reduce_mean(flow.log_prob(x))


def training_step(nll, dynamics, learning_rate):
    optimizer = keras.optimizers.Adam(learning_rate)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = nll(x)
        optimizer.apply_gradients(zip(tape.gradient(loss, dynamics.trainable_variables),
                                      dynamics.trainable_variables))
        return loss

    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--tol", type=float, default=1e-5)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    x = tf.constant(eight_gaussians(args.batch, np.random.default_rng(0)))
    reference = mlp()
    sides = {}
    for name, make in (("keras_node CNF", keras_node_nll), ("tfp FFJORD", tfp_nll)):
        dynamics = mlp(reference.get_weights())
        nll = make(dynamics, args.tol)
        sides[name] = dict(nll=nll, step=training_step(nll, dynamics, args.learning_rate), times=[])
        print(f"{name}: NLL before training {float(tf.function(nll)(x)):.6f}")
    for side in sides.values():
        side["step"](x)  # trace (and compile)
    for _ in range(args.iterations):
        for side in sides.values():
            start = time.perf_counter()
            side["loss"] = float(side["step"](x))
            side["times"].append(time.perf_counter() - start)
    print(f"\n| {args.batch} points, tol {args.tol:g}, exact trace, adjoint | s / iteration "
          f"(median of {args.iterations}) | NLL at the last step |")
    print("| --- | --- | --- |")
    for name, side in sides.items():
        print(f"| {name} | {np.median(side['times']):.3f} | {side['loss']:.4f} |")
    ratio = np.median(sides["keras_node CNF"]["times"]) / np.median(sides["tfp FFJORD"]["times"])
    print(f"\nkeras_node / tfp time ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
