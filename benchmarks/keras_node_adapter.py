"""keras_node on the shared benchmark problems, in the peers' result format.

`run_keras_node` has the signature of the adapters in `peers.py` and returns
the same dict, so the harness prints keras_node next to the peers. Variants:
"auto", the default user experience (the step in a `tf.function`, keras_node's
`jit_compile="auto"` compiles the solver loops with XLA); "graph", the same
with `jit_compile=False`; "xla", the whole step (solve + gradient) under
`tf.function(jit_compile=True)`.
"""

from __future__ import annotations

import os

from benchmarks import peers

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
VARIANTS = ("auto", "graph", "xla")


def run_keras_node(problem, T=None, dtype="float32", rtol=1e-5, atol=1e-7, mode="forward", *,
                   variant="auto", checkpoints=None, repeats=20, warmup=2) -> dict:
    """Time `keras_node.odeint` / `odeint_adjoint` on `problem` (dopri5).

    The field is a Keras layer holding the parameters as Keras variables, as
    an `ODELayer`'s dynamics are (it lets a whole-step XLA compile chunk
    the backprop loop, keras_node/solvers/recompute.py).
    "adjoint" uses the seminorm, "adjoint_nosemi" the full norm;
    `checkpoints` sets `adjoint_checkpoints` (None: keras_node's default).
    NFE from keras_node's own counters (`return_stats`, `AdjointStats`).
    """
    import tensorflow as tf

    import keras_node

    problem, T, dtype = peers._resolve(problem, T, dtype, mode)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    f = _KerasField(problem, dtype)
    params = f.params
    ts = tf.constant(problem.times(T, dtype))
    y0 = tf.constant(problem.y0_as(dtype))
    stats = keras_node.AdjointStats()
    options = dict(rtol=rtol, atol=atol, return_stats=True,
                   jit_compile=False if variant == "graph" else "auto")
    if mode.startswith("adjoint"):
        options.update(adjoint_seminorm=mode == "adjoint", backward_stats=stats)
        if checkpoints is not None:
            options["adjoint_checkpoints"] = checkpoints
    solve = keras_node.odeint_adjoint if mode.startswith("adjoint") else keras_node.odeint

    def step(y0):
        if mode == "forward":
            ys, s = solve(f, y0, ts, **options)
            return ys, s["nfe"]
        with tf.GradientTape() as tape:
            tape.watch(y0)
            ys, s = solve(f, y0, ts, **options)
            loss = peers._loss_of(problem, ys, tf.reduce_sum)
        return ys, s["nfe"], tape.gradient(loss, [y0] + list(params.values()))

    fn = tf.function(step, jit_compile=(variant == "xla"), autograph=False)

    def call():
        out = fn(y0)
        out[0].numpy()  # block until done
        return out

    timing = peers._time_calls(call, repeats, warmup)
    out = timing[0]
    grads = None if mode == "forward" else [g.numpy() for g in out[2]]
    return peers._result(
        variant, mode, timing, out[0].numpy(), int(out[1]),
        int(stats.nfe.numpy()) if mode.startswith("adjoint") else None,
        seminorm=mode == "adjoint", grad_h0=None if grads is None else grads[0],
        grad_params=None if grads is None else dict(zip(params, grads[1:])))


def _KerasField(problem, dtype):
    """The problem's field as a Keras layer `layer(t, y)`; `layer.params`
    maps each parameter name to its Keras variable."""
    import keras

    class KerasField(keras.layers.Layer):
        def __init__(self):
            super().__init__(dtype=dtype)
            self.params = {
                name: self.add_weight(shape=value.shape, dtype=dtype, name=name,
                                      initializer=keras.initializers.Constant(value))
                for name, value in problem.params_as(dtype).items()}
            self._field = peers.tf_field(problem, self.params)
            self.built = True

        def call(self, t, y):
            return self._field(t, y)

    return KerasField()
