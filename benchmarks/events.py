"""`odeint_event` with its gradient, against torchdiffeq's `odeint_event` (issue 15).

The bench MLP (`mlp`, state 256x16, the harness's weights, float32, dopri5,
rtol=1e-5, atol=1e-7) runs until the mean square of its state crosses the
value it has at T = 1 (found by a plain solve first). One step: the event
search, then the gradient of `t_event + sum(y_event**2)` with respect to y0
and the weights, with the adjoint and with backprop. Prints the median ms
per step (keras_node in a `tf.function`, default `jit_compile="auto"`, and
the whole step under XLA; torchdiffeq eager, 1 thread), the event time,
the search's NFE and every evaluation of the field during the step (a
counter in the field).

Usage (repository root): python benchmarks/events.py [--repeats 50]
"""

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_node  # noqa: E402
from benchmarks import peers  # noqa: E402
from benchmarks.per_sample import median_ms  # noqa: E402
from benchmarks.problems import field, get_problem  # noqa: E402

TOLERANCES = dict(rtol=1e-5, atol=1e-7)


def _level(problem):
    """Mean square of the state at T = 1: the event's level."""
    params = {k: tf.constant(v) for k, v in problem.params_as("float32").items()}
    ys = keras_node.odeint(peers.tf_field(problem, params), tf.constant(problem.y0_as("float32")),
                           [0.0, 1.0], **TOLERANCES)
    return float(tf.reduce_mean(ys[-1] ** 2))


class BenchField(keras.layers.Layer):
    """The bench MLP's field as a Keras layer (its variables are the
    layer's, so a whole-step XLA compile can checkpoint the search loop)."""

    def __init__(self, problem):
        super().__init__()
        self.field_params = {
            k: self.add_weight(shape=v.shape, initializer=keras.initializers.Constant(v), name=k)
            for k, v in problem.params_as("float32").items()}
        self.problem = problem

    def call(self, t, y):
        return peers.tf_field(self.problem, self.field_params)(t, y)


def keras_node_rows(problem, level, repeats):
    layer = BenchField(problem)
    params = list(layer.field_params.values())
    inner = layer
    calls = tf.Variable(0, dtype=tf.int64)

    def counted(t, y):  # for the count only: a stateful op keeps "auto" off XLA
        calls.assign_add(1)
        return inner(t, y)

    def crossing(t, y):
        return tf.reduce_mean(y ** 2) - level

    def step_of(func, gradient, jit_compile=None):
        @tf.function(autograph=False, jit_compile=jit_compile)
        def step(y0):
            with tf.GradientTape() as tape:
                tape.watch(y0)
                t_event, y_event, stats = keras_node.odeint_event(
                    func, y0, 0.0, crossing, gradient=gradient, variables=params,
                    return_stats=True, **TOLERANCES)
                loss = t_event + tf.reduce_sum(y_event ** 2)
            return t_event, stats["nfe"], tape.gradient(loss, [y0] + params)
        return step

    rows = []
    y0 = tf.constant(problem.y0_as("float32"))
    for gradient in ("adjoint", "backprop"):
        step = step_of(inner, gradient)
        ms = median_ms(lambda: step(y0), repeats)
        t_event, nfe, _ = step(y0)
        step_of(counted, gradient)(y0)
        rows.append(("keras_node", gradient, ms, float(t_event), int(nfe), int(calls.numpy())))
        calls.assign(0)
    for gradient in ("adjoint", "backprop"):
        step = step_of(inner, gradient, jit_compile=True)
        ms = median_ms(lambda: step(y0), repeats)
        t_event, nfe, _ = step(y0)
        rows.append(("keras_node, whole step XLA", gradient, ms, float(t_event), int(nfe), None))
    return rows


def torchdiffeq_rows(problem, level, repeats):
    try:
        import torch
        import torchdiffeq
    except ImportError:
        return []
    torch.set_num_threads(1)
    params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in problem.params_as("float32").items()}
    inner = field(problem.kind, params, torch.tanh)
    calls = [0]

    def counted(t, y):
        calls[0] += 1
        return inner(t, y)

    class Field(torch.nn.Module):  # odeint_adjoint needs a module holding the parameters
        def __init__(self):
            super().__init__()
            for name, p in params.items():
                self.register_parameter(name, p)

        def forward(self, t, y):
            return counted(t, y)

    func = Field()
    rows = []
    for gradient, interface in (("adjoint", torchdiffeq.odeint_adjoint),
                                ("backprop", torchdiffeq.odeint)):
        def step(interface=interface):
            y0 = torch.tensor(problem.y0_as("float32"), requires_grad=True)
            t_event, y_event = torchdiffeq.odeint_event(
                func, y0, torch.tensor(0.0), event_fn=lambda t, y: torch.mean(y ** 2) - level,
                odeint_interface=interface, method="dopri5", **TOLERANCES)
            loss = t_event + torch.sum(y_event[-1] ** 2)
            loss.backward()
            return float(t_event.detach())

        ms = median_ms(step, repeats)
        calls[0] = 0
        t_event = step()
        rows.append(("torchdiffeq", gradient, ms, t_event, None, calls[0]))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    problem = get_problem("mlp")
    level = _level(problem)
    print(peers.machine_info())
    print(f"event: mean(y**2) = {level:.6f}; loss t_event + sum(y_event**2); fwd + gradient\n")
    print("| library | gradient | ms per step | t_event | search NFE | field evaluations |")
    print("|---|---|---|---|---|---|")
    rows = keras_node_rows(problem, level, args.repeats) + torchdiffeq_rows(problem, level,
                                                                          args.repeats)
    for library, gradient, ms, t_event, nfe, calls in rows:
        nfe = "-" if nfe is None else nfe
        calls = "-" if calls is None else calls
        print(f"| {library} | {gradient} | {ms:.1f} | {t_event:.5f} | {nfe} | {calls} |")


if __name__ == "__main__":
    main()
