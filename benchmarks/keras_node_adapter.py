"""keras_node on the shared benchmark problems, with the peers' result format.

`run_keras_node(problem, T, dtype, rtol, atol, mode, variant=...)` mirrors the
adapters in `peers.py` and returns the same dict, so one harness can print
keras_node next to torchdiffeq, tfp.math.ode and diffrax.

Variants:
- "auto": the default user experience: the step runs in a `tf.function` and
  keras_node's `jit_compile="auto"` compiles the solver loops with XLA;
- "graph": the same with `jit_compile=False` (plain TF graph loops);
- "xla": the whole step (solve + gradient) in `tf.function(jit_compile=True)`.

Modes: "forward"; "adjoint" (seminorm); "adjoint_nosemi"; "backprop"
(gradients through `keras_node.odeint`). `checkpoints` sets
`adjoint_checkpoints` (default: keras_node's default).
"""

from __future__ import annotations

import os

import numpy as np

from benchmarks import peers
from benchmarks.problems import Problem

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
VARIANTS = ("auto", "graph", "xla")


def _field(problem: Problem, params):
    import tensorflow as tf

    if problem.kind == "mlp":
        def f(t, y):
            return tf.tanh(y @ params["W1"] + params["b1"]) @ params["W2"] + params["b2"]
    elif problem.kind == "spiral":
        def f(t, y):
            return tf.linalg.matvec(params["A"], y ** 3, transpose_a=True)
    else:
        def f(t, y):
            s = tf.tanh(tf.nn.conv2d(y, params["K1"], 1, "SAME") + params["b1"])
            return tf.nn.conv2d(s, params["K2"], 1, "SAME") + params["b2"]
    return f


def run_keras_node(problem, T=None, dtype="float32", rtol=1e-5, atol=1e-7, mode="forward", *,
                   variant="auto", checkpoints=None, repeats=20, warmup=2) -> dict:
    """Time keras_node on `problem` (see the module docstring)."""
    import tensorflow as tf

    import keras_node

    problem, T, dtype = peers._resolve(problem, T, dtype, mode)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    params = {k: tf.Variable(v) for k, v in problem.params_as(dtype).items()}
    f = _field(problem, params)
    ts = tf.constant(problem.times(T, dtype))
    y0 = tf.constant(problem.y0_as(dtype))
    solver_jit = {"auto": "auto", "graph": False, "xla": "auto"}[variant]
    stats = keras_node.AdjointStats()
    k = keras_node.DEFAULT_CHECKPOINTS if checkpoints is None else checkpoints
    options = dict(rtol=rtol, atol=atol, return_stats=True, jit_compile=solver_jit)

    def loss_of(ys):
        return tf.reduce_sum(ys ** 2) if problem.loss_over_all_times else tf.reduce_sum(ys[-1] ** 2)

    if mode == "forward":
        def step(y0):
            ys, s = keras_node.odeint(f, y0, ts, **options)
            return ys, s["nfe"]
    else:
        def step(y0):
            with tf.GradientTape() as tape:
                tape.watch(y0)
                if mode == "backprop":
                    ys, s = keras_node.odeint(f, y0, ts, **options)
                else:
                    ys, s = keras_node.odeint_adjoint(
                        f, y0, ts, adjoint_seminorm=(mode == "adjoint"),
                        adjoint_checkpoints=k, backward_stats=stats, **options)
                loss = loss_of(ys)
            grads = tape.gradient(loss, [y0] + list(params.values()))
            return ys, s["nfe"], grads

    fn = tf.function(step, jit_compile=(variant == "xla"), autograph=False)

    def call():
        out = fn(y0)
        out[0].numpy()  # block until done
        return out

    timing = peers._time_calls(call, repeats, warmup)
    out = timing[0]
    grads = None if mode == "forward" else [g.numpy() for g in out[2]]
    return peers._result(
        "keras_node", variant, problem, T, dtype, rtol, atol, mode,
        seminorm=(mode == "adjoint") if mode.startswith("adjoint") else None,
        nfe_forward=int(out[1]),
        nfe_backward=int(stats.nfe.numpy()) if mode.startswith("adjoint") else None,
        timing=timing, output=out[0].numpy(),
        grad_h0=None if grads is None else grads[0],
        grad_params=None if grads is None else dict(zip(params, grads[1:])),
        stats={"adjoint_checkpoints": k},
        notes="NFE from keras_node's own stats (return_stats / AdjointStats)",
    )
