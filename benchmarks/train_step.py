"""One training step of a whole model: keras_node vs torch + torchdiffeq and JAX + diffrax.

Issue 20, build item 3. Two models, identical in every library:

``quickstart``
    The README's quick start: input ``(64, 2)`` -> ``ODELayer(MLP(units=(32,)),
    t=(0, 1))`` -> ``Dense(1)``, mse loss, Adam(0.01). The field is
    ``W2 tanh(W1 [h, t] + b1) + b2`` (``keras_node.dynamics.MLP``: time as an
    extra input feature, tanh). ODELayer defaults: dopri5, rtol 1e-3, atol
    1e-6, adjoint gradients with the seminorm.
``digits``
    The ODE-Net of ``examples/digits_odenet.py`` (32 filters): stem conv3x3,
    GroupNorm(8), ReLU, conv4x4/2 -> ``ODELayer(ConvBlock(32))`` (GroupNorm,
    softplus, conv3x3 of ``[x, t]``, GroupNorm, softplus, conv3x3 of ``[x, t]``;
    dopri5, rtol 1e-3, atol 1e-4, adjoint) -> GroupNorm(8), ReLU, global
    average pooling, Dense(10) softmax; sparse categorical crossentropy,
    Adam(3e-3) (constant: the example's cosine schedule is left out), on the
    first 64 of scikit-learn's 8x8 digits.

Every library gets the SAME weights, drawn once with numpy (``weights``):
Keras zero-initialises the last projection of the dynamics, which makes the
first solve trivial, so here every kernel is Glorot-uniform (the last
projection included, the dynamics' kernels scaled up: ``DYNAMICS_GAIN``) and
the normalisation scales/offsets are perturbed.
Every timed step starts from those weights again (they are restored,
untimed, before each step; the optimizer state keeps evolving), so every
step of every library solves the same ODE: the forward NFE must agree with
torchdiffeq's (same dopri5 decisions) and the loss of the first step must
agree across libraries (the check that the models are the same).

Each library runs in its own worker subprocess (thread pools and JIT caches
never interfere), torch on 1 thread (see ``peers.run_torchdiffeq``):

- keras_node: ``model.train_on_batch(x, y)`` on a fixed batch (tf tensors):
  Keras' compiled train step, the one ``fit`` runs (``fit`` reaches it
  through a ``tf.data`` iterator, ``train_on_batch`` directly);
  ``model.compile`` with its default ``jit_compile="auto"``, which Keras
  resolves to False on a CPU-only machine (printed); ``keras_node_xla``: the
  same with ``model.compile(jit_compile=True)`` (whole step under XLA). The
  rows ``.../train_function`` time the compiled step ``train_on_batch``
  calls, alone (the cost of Keras' per-call Python is the difference).
- torchdiffeq: ``odeint_adjoint(..., adjoint_options=dict(norm="seminorm"))``
  (keras_node's default seminorm), backward tolerances = forward ones (both
  libraries' default), ``torch.optim.Adam``.
- diffrax: plain JAX functions of a parameter dict (no equinox needed),
  ``diffeqsolve(Dopri5, PIDController(rtol, atol), dt0=None)`` with
  ``BacksolveAdjoint`` (the continuous adjoint solved backward, as keras_node
  and torchdiffeq do; backward ``PIDController`` with
  ``adjoint_rms_seminorm``), ``optax.adam``; the whole step under ``jax.jit``.

All Adams use beta1 0.9, beta2 0.999, eps 1e-7 (Keras' default eps).

Usage (repository root; peers from benchmarks/requirements.txt):
    python benchmarks/train_step.py --processes 3        # both models, all libraries
    python benchmarks/train_step.py                      # one process per library
    python benchmarks/train_step.py --models quickstart --libraries keras_node,torchdiffeq
    python benchmarks/train_step.py --steps 20 --warmup 5   # quicker, noisier
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from benchmarks import peers  # noqa: E402
from benchmarks.run_benchmarks import merge_processes  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

MODELS = ("quickstart", "digits")
LIBRARIES = ("keras_node", "keras_node_xla", "torchdiffeq", "diffrax")
PEERS = ("torchdiffeq", "diffrax")
# Acceptance (issue 20): keras_node / peer per step at most this.
TARGETS = {"torchdiffeq": 0.3, "diffrax": 1.0}
SEED = 20261207
BATCH = 64
FILTERS = 32
# (rtol, atol, learning rate) per model.
SETTINGS = {"quickstart": (1e-3, 1e-6, 0.01), "digits": (1e-3, 1e-4, 3e-3)}
ADAM = dict(beta_1=0.9, beta_2=0.999, epsilon=1e-7)
# (warm-up steps, timed steps) per model; --warmup/--steps override.
STEPS = {"quickstart": (100, 200), "digits": (20, 40)}
# Gain on the dynamics' kernels (both layers of the field): Glorot-sized fields
# are solved in 3 dopri5 steps; these make the solves take 5 (torchdiffeq:
# forward NFE 32 and 26, backward 56 and 50) without changing the models.
DYNAMICS_GAIN = {"quickstart": 3.0, "digits": 4.0}
WORKER_TIMEOUT_S = 900


# --- shared weights and data ---------------------------------------------------

def _glorot(rng, shape):
    """Glorot-uniform draw; kernels in Keras layout ((in, out) or HWIO)."""
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    limit = np.sqrt(6.0 / (receptive * (shape[-2] + shape[-1])))
    return rng.uniform(-limit, limit, shape)


def weights(model):
    """The model's weights as float32 numpy arrays in Keras layout, by name.

    One fixed seed; kernels Glorot-uniform (the dynamics' last projection
    too; the dynamics' two kernels times ``DYNAMICS_GAIN``), biases N(0, 0.1^2), GroupNorm scales 1 + N(0, 0.1^2) and offsets
    N(0, 0.1^2).
    """
    rng = np.random.default_rng(SEED + MODELS.index(model))
    w = {}

    def dense(name, shape):
        w[name + "/kernel"] = _glorot(rng, shape)
        w[name + "/bias"] = 0.1 * rng.standard_normal(shape[-1])

    def norm(name, channels):
        w[name + "/gamma"] = 1.0 + 0.1 * rng.standard_normal(channels)
        w[name + "/beta"] = 0.1 * rng.standard_normal(channels)

    if model == "quickstart":
        dense("hidden_0", (3, 32))  # [h, t] -> 32
        dense("output", (32, 2))
        dense("dense", (2, 1))
    else:
        f = FILTERS
        dense("stem_conv", (3, 3, 1, f))
        norm("stem_norm", f)
        dense("stem_down", (4, 4, f, f))
        norm("norm_in", f)
        dense("conv_hidden", (3, 3, f + 1, f))
        norm("norm_hidden", f)
        dense("conv_out", (3, 3, f + 1, f))
        norm("head_norm", f)
        dense("head_dense", (f, 10))
    for name in ("hidden_0/kernel", "output/kernel", "conv_hidden/kernel", "conv_out/kernel"):
        if name in w:
            w[name] = w[name] * DYNAMICS_GAIN[model]
    return {k: v.astype(np.float32) for k, v in w.items()}


def data(model):
    """A fixed batch ``(x, y)``: the README's regression target for the quick
    start, the first 64 scikit-learn digits (NHWC, scaled to [0, 1]) otherwise."""
    if model == "quickstart":
        x = np.random.default_rng(SEED).standard_normal((BATCH, 2)).astype(np.float32)
        return x, (np.sin(x[:, :1]) + x[:, 1:] ** 2).astype(np.float32)
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[:BATCH] / 16.0).astype(np.float32)[..., None]
    return x, digits.target[:BATCH].astype(np.int64)


def time_steps(step, reset, warmup, repeats):
    """Run ``step`` (which must block until its update is done) once, then
    ``warmup`` untimed and ``repeats`` timed times, calling ``reset`` (untimed)
    before each. Returns ``(first_result, first_ms, median_ms, min_ms)``."""
    reset()
    t0 = time.perf_counter()
    first = step()
    first_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(warmup):
        reset()
        step()
    times = []
    for _ in range(repeats):
        reset()
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return first, first_ms, statistics.median(times), min(times)


# --- keras_node ------------------------------------------------------------------

def build_keras(model):
    """The Keras model (uncompiled) and its ODELayer; weights still Keras' own."""
    import keras

    import keras_node

    rtol, atol, _ = SETTINGS[model]
    if model == "quickstart":
        ode = keras_node.ODELayer(keras_node.dynamics.MLP(units=(32,)), t=(0.0, 1.0), name="ode")
        return keras.Sequential([keras.Input((2,)), ode, keras.layers.Dense(1, name="dense")]), ode
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "examples"))
    import digits_odenet  # the example's own stem and head

    ode = keras_node.ODELayer(keras_node.dynamics.ConvBlock(FILTERS, name="ode_block"),
                              method="dopri5", rtol=rtol, atol=atol, gradient="adjoint",
                              name="ode")
    layers = [keras.Input((8, 8, 1))] + digits_odenet.stem(FILTERS) + [ode] + digits_odenet.head(FILTERS)
    return keras.Sequential(layers), ode


def keras_variables(model, net, ode):
    """``{weight name: keras variable}`` matching :func:`weights`'s names."""
    layers = {layer.name: layer for layer in net.layers}
    dyn = ode.dynamics
    if model == "quickstart":
        layers.update(hidden_0=dyn.hidden[0], output=dyn.output_layer)
    else:
        layers.update(norm_in=dyn.norm_in, conv_hidden=dyn.conv_hidden,
                      norm_hidden=dyn.norm_hidden, conv_out=dyn.conv_out)
    out = {}
    for name in weights(model):
        layer, attr = name.split("/")
        out[name] = getattr(layers[layer], attr)
    return out


def run_keras(model, warmup, repeats, jit_compile="auto"):
    """Time ``model.train_on_batch`` of the Keras model, then the compiled
    ``model.train_function`` it calls, alone; NFE from the ODELayer.

    Returns two rows: train_on_batch (what a user's loop pays per step) and
    ``/train_function`` (the same compiled step without train_on_batch's
    Python: metric reset, data checks, conversion of the logs).
    """
    import keras
    import tensorflow as tf

    _, _, lr = SETTINGS[model]
    net, ode = build_keras(model)
    loss = "mse" if model == "quickstart" else "sparse_categorical_crossentropy"
    net.compile(keras.optimizers.Adam(lr, **ADAM), loss, jit_compile=jit_compile)
    variables = keras_variables(model, net, ode)
    w0 = weights(model)
    x, y = (tf.constant(a) for a in data(model))

    def reset():
        for k, v in variables.items():
            v.assign(w0[k])

    def step():
        return net.train_on_batch(x, y)  # returns Python floats: blocks

    def function_step():  # the batch as train_on_batch passes it: no retracing
        return float(net.train_function([(x, y, None)])["loss"])

    rows = []
    for label, fn in (("", step), ("/train_function", function_step)):
        first, first_ms, median_ms, min_ms = time_steps(fn, reset, warmup, repeats)
        rows.append({"label": label, "first_loss": float(np.ravel(first)[0]), "first_ms": first_ms,
                     "median_ms": median_ms, "min_ms": min_ms, "nfe_forward": ode.nfe_forward,
                     "nfe_backward": ode.nfe_backward,
                     "variant": f"{'train_on_batch' if not label else 'train_function'}, "
                                f"compile(jit_compile={jit_compile!r}) -> "
                                f"model.jit_compile={net.jit_compile}"})
    rows[1]["first_loss"] = None  # the loss tracker's running mean, not the step's loss
    return rows


# --- torch + torchdiffeq -----------------------------------------------------------

def torch_model(model, w):
    """The torch model (an ``nn.Module`` whose ``field.nfe`` counts evaluations)."""
    import torch
    import torch.nn.functional as F
    import torchdiffeq

    rtol, atol, _ = SETTINGS[model]
    P = lambda a: torch.nn.Parameter(torch.tensor(a))  # noqa: E731
    # Keras HWIO kernels -> torch OIHW; dense kernels stay (in, out), used as x @ W.
    C = lambda a: P(np.ascontiguousarray(a.transpose(3, 2, 0, 1)))  # noqa: E731

    def with_time(x, t, dim):
        shape = list(x.shape)
        shape[dim] = 1
        return torch.cat([x, t.to(x.dtype).expand(shape)], dim)

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.nfe = 0
            if model == "quickstart":
                self.W1, self.b1 = P(w["hidden_0/kernel"]), P(w["hidden_0/bias"])
                self.W2, self.b2 = P(w["output/kernel"]), P(w["output/bias"])
            else:
                self.g1, self.be1 = P(w["norm_in/gamma"]), P(w["norm_in/beta"])
                self.K1, self.c1 = C(w["conv_hidden/kernel"]), P(w["conv_hidden/bias"])
                self.g2, self.be2 = P(w["norm_hidden/gamma"]), P(w["norm_hidden/beta"])
                self.K2, self.c2 = C(w["conv_out/kernel"]), P(w["conv_out/bias"])

        def forward(self, t, h):
            self.nfe += 1
            if model == "quickstart":
                return torch.tanh(with_time(h, t, 1) @ self.W1 + self.b1) @ self.W2 + self.b2
            x = F.softplus(F.group_norm(h, FILTERS, self.g1, self.be1, eps=1e-3))
            x = F.conv2d(with_time(x, t, 1), self.K1, self.c1, padding=1)
            x = F.softplus(F.group_norm(x, FILTERS, self.g2, self.be2, eps=1e-3))
            return F.conv2d(with_time(x, t, 1), self.K2, self.c2, padding=1)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.field = Field()
            self.t = torch.tensor([0.0, 1.0])
            for name in w:
                layer = name.split("/")[0]
                if layer in ("dense", "stem_conv", "stem_norm", "stem_down", "head_norm", "head_dense"):
                    conv = w[name].ndim == 4
                    self.register_parameter(name.replace("/", "_"), C(w[name]) if conv else P(w[name]))

        def forward(self, x):
            p = lambda n: getattr(self, n)  # noqa: E731
            if model == "quickstart":
                h = self.ode(x)
                return h @ p("dense_kernel") + p("dense_bias")
            x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
            x = F.conv2d(x, p("stem_conv_kernel"), p("stem_conv_bias"), padding=1)
            x = F.relu(F.group_norm(x, 8, p("stem_norm_gamma"), p("stem_norm_beta"), eps=1e-3))
            # Keras 'same' with kernel 4, stride 2 on 8x8 pads 1 on each side.
            x = F.conv2d(x, p("stem_down_kernel"), p("stem_down_bias"), stride=2, padding=1)
            x = self.ode(x)
            x = F.relu(F.group_norm(x, 8, p("head_norm_gamma"), p("head_norm_beta"), eps=1e-3))
            return x.mean((2, 3)) @ p("head_dense_kernel") + p("head_dense_bias")  # logits

        def ode(self, h):
            return torchdiffeq.odeint_adjoint(
                self.field, h, self.t, rtol=rtol, atol=atol, method="dopri5",
                adjoint_options=dict(norm="seminorm"))[-1]

    return Net()


def run_torch(model, warmup, repeats):
    """Time forward + ``loss.backward()`` + ``Adam.step()`` of the torch model."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    _, _, lr = SETTINGS[model]
    w0 = weights(model)
    net = torch_model(model, w0)
    initial = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(ADAM["beta_1"], ADAM["beta_2"]),
                           eps=ADAM["epsilon"])
    x, y = (torch.tensor(a) for a in data(model))
    loss_fn = F.mse_loss if model == "quickstart" else F.cross_entropy
    counts = {}

    def reset():
        with torch.no_grad():
            for p, v in zip(net.parameters(), initial):
                p.copy_(v)

    def step():
        net.field.nfe = 0
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        counts["fwd"] = net.field.nfe
        loss.backward()
        counts["bwd"] = net.field.nfe - counts["fwd"]
        opt.step()
        return loss.item()

    first, first_ms, median_ms, min_ms = time_steps(step, reset, warmup, repeats)
    return {"first_loss": first, "first_ms": first_ms, "median_ms": median_ms, "min_ms": min_ms,
            "nfe_forward": counts["fwd"], "nfe_backward": counts["bwd"],
            "variant": f"eager, {torch.get_num_threads()} thread, odeint_adjoint seminorm"}


# --- JAX + diffrax ----------------------------------------------------------------

def jax_loss_fn(model, count=None):
    """``loss(params, x, y) -> (loss, solver stats)`` in JAX; ``count``: a
    one-element list bumped at every evaluation of the field (untimed runs)."""
    import diffrax
    import jax
    import jax.numpy as jnp

    rtol, atol, _ = SETTINGS[model]

    def conv(x, k, b, stride=1):
        return jax.lax.conv_general_dilated(x, k, (stride, stride), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")) + b

    def group_norm(x, groups, gamma, beta):
        n, h, w_, c = x.shape
        g = x.reshape(n, h, w_, groups, c // groups)
        mean = g.mean((1, 2, 4), keepdims=True)
        var = ((g - mean) ** 2).mean((1, 2, 4), keepdims=True)
        return ((g - mean) * jax.lax.rsqrt(var + 1e-3)).reshape(x.shape) * gamma + beta

    def with_time(x, t):
        return jnp.concatenate([x, jnp.ones_like(x[..., :1]) * t], -1)

    def field(t, h, p):
        if count is not None:
            jax.debug.callback(lambda: count.__setitem__(0, count[0] + 1))
        if model == "quickstart":
            return jnp.tanh(with_time(h, t) @ p["hidden_0/kernel"] + p["hidden_0/bias"]) \
                @ p["output/kernel"] + p["output/bias"]
        x = jax.nn.softplus(group_norm(h, FILTERS, p["norm_in/gamma"], p["norm_in/beta"]))
        x = conv(with_time(x, t), p["conv_hidden/kernel"], p["conv_hidden/bias"])
        x = jax.nn.softplus(group_norm(x, FILTERS, p["norm_hidden/gamma"], p["norm_hidden/beta"]))
        return conv(with_time(x, t), p["conv_out/kernel"], p["conv_out/bias"])

    adjoint = diffrax.BacksolveAdjoint(
        solver=diffrax.Dopri5(),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol,
                                                  norm=diffrax.adjoint_rms_seminorm))

    def ode(h, p):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field), diffrax.Dopri5(), t0=0.0, t1=1.0, dt0=None, y0=h, args=p,
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol), adjoint=adjoint,
            saveat=diffrax.SaveAt(t1=True), max_steps=peers.MAX_STEPS)
        return sol.ys[-1], sol.stats["num_steps"]

    def loss(p, x, y):
        if model == "quickstart":
            h, steps = ode(x, p)
            return jnp.mean((h @ p["dense/kernel"] + p["dense/bias"] - y) ** 2), steps
        h = conv(x, p["stem_conv/kernel"], p["stem_conv/bias"])
        h = jax.nn.relu(group_norm(h, 8, p["stem_norm/gamma"], p["stem_norm/beta"]))
        h, steps = ode(conv(h, p["stem_down/kernel"], p["stem_down/bias"], stride=2), p)
        h = jax.nn.relu(group_norm(h, 8, p["head_norm/gamma"], p["head_norm/beta"]))
        logits = h.mean((1, 2)) @ p["head_dense/kernel"] + p["head_dense/bias"]
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], 1)), steps

    return loss


def run_diffrax(model, warmup, repeats):
    """Time the jitted step (loss, gradient by BacksolveAdjoint, optax Adam update)."""
    import jax
    import jax.numpy as jnp
    import optax

    _, _, lr = SETTINGS[model]
    p0 = {k: jnp.asarray(v) for k, v in weights(model).items()}
    x, y = (jnp.asarray(a) for a in data(model))
    if model == "digits":
        y = y.astype(jnp.int32)
    opt = optax.adam(lr, b1=ADAM["beta_1"], b2=ADAM["beta_2"], eps=ADAM["epsilon"])
    loss = jax_loss_fn(model)

    @jax.jit
    def train_step(p, opt_state, x, y):
        (value, steps), grads = jax.value_and_grad(loss, has_aux=True)(p, x, y)
        updates, opt_state = opt.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, value, steps

    state = {"opt": opt.init(p0)}

    def step():
        # Every step starts from p0 (the reset of the other libraries).
        _, state["opt"], value, steps = jax.block_until_ready(train_step(p0, state["opt"], x, y))
        return float(value), int(steps)

    (first, steps), first_ms, median_ms, min_ms = time_steps(step, lambda: None, warmup, repeats)
    count = [0]  # an untimed, counted run: diffrax reports no backward statistics
    counted = jax_loss_fn(model, count)
    jax.block_until_ready(jax.jit(counted)(p0, x, y))
    jax.effects_barrier()
    nfe_fwd, count[0] = count[0], 0
    jax.block_until_ready(jax.jit(jax.grad(lambda p: counted(p, x, y)[0]))(p0))
    jax.effects_barrier()
    return {"first_loss": first, "first_ms": first_ms, "median_ms": median_ms, "min_ms": min_ms,
            "nfe_forward": nfe_fwd, "nfe_backward": count[0] - nfe_fwd,
            "variant": f"jax.jit whole step, BacksolveAdjoint seminorm ({steps} attempted steps)"}


RUNNERS = {"keras_node": run_keras, "keras_node_xla": lambda m, w, r: run_keras(m, w, r, True),
           "torchdiffeq": run_torch, "diffrax": run_diffrax}


# --- report ---------------------------------------------------------------------

def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def results_table(rows):
    """One markdown row per (model, library)."""
    lines = ["| model | library | median ms / step | min ms | first step ms | NFE fwd | NFE bwd "
             "| loss at step 1 | setup |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['library']} | {r['error'][:120]} |" + " |" * 6)
            continue
        lines.append(f"| {r['model']} | {r['library']} | {r['median_ms']:.2f} | {r['min_ms']:.2f} "
                     f"| {r['first_ms']:.0f} | {r['nfe_forward']} | {r['nfe_backward']} "
                     f"| {_fmt(r['first_loss'], '.6f')} | {r['variant']} |")
    return "\n".join(lines)


def ratio_table(rows):
    """keras_node (and keras_node_xla) median / each peer's, against the targets."""
    by = {(r["model"], r["library"]): r for r in rows if "error" not in r}
    lines = ["| model | keras_node variant | peer | ratio | target | met |", "|---|---|---|---|---|---|"]
    mine_labels = list(dict.fromkeys(r["library"] for r in rows if r["library"].startswith("keras_node")))
    for model in MODELS:
        for mine in mine_labels:
            for peer in PEERS:
                a, b = by.get((model, mine)), by.get((model, peer))
                if a and b:
                    ratio = a["median_ms"] / b["median_ms"]
                    ok = round(ratio, 2) <= TARGETS[peer]
                    lines.append(f"| {model} | {mine} | {peer} | {ratio:.2f}x | <= {TARGETS[peer]}x "
                                 f"| {'yes' if ok else 'NO'} |")
    return "\n".join(lines)


def main(argv=None):
    """Run each (model, library) in a worker subprocess and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--libraries", default=",".join(LIBRARIES))
    ap.add_argument("--warmup", type=int, help="untimed steps after the first (default: per model)")
    ap.add_argument("--steps", type=int, help="timed steps (default: per model)")
    ap.add_argument("--processes", type=int, default=1,
                    help="run every worker this many times, round-robin over the libraries "
                         "(load bursts on a shared machine spread over all of them); report the "
                         "median of the per-process medians")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        warmup, steps = STEPS[args.model]
        warmup = warmup if args.warmup is None else args.warmup
        steps = steps if args.steps is None else args.steps
        rows = RUNNERS[args.worker](args.model, warmup, steps)
        for row in rows if isinstance(rows, list) else [rows]:
            print("@@ROW " + json.dumps(row), flush=True)
        return 0
    print(f"# One training step\n\n{peers.machine_info()}\n", flush=True)
    rows = []
    jobs = [(model, lib) for model in args.models.split(",") for lib in args.libraries.split(",")]
    for _ in range(args.processes):
        for model, lib in jobs:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", lib, "--model", model]
            cmd += [] if args.warmup is None else ["--warmup", str(args.warmup)]
            cmd += [] if args.steps is None else ["--steps", str(args.steps)]
            row = {"model": model, "library": lib}
            started = time.perf_counter()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                row["error"] = f"timed out after {WORKER_TIMEOUT_S} s"
            else:
                found = [json.loads(line[6:]) for line in proc.stdout.splitlines()
                         if line.startswith("@@ROW ")]
                for extra in found:
                    rows.append(dict(row, library=lib + extra.pop("label", ""), **extra))
                if not found:
                    tail = [line for line in proc.stderr.splitlines() if line.strip()][-3:]
                    row["error"] = "failed: " + " / ".join(tail)
            if "error" in row:
                rows.append(row)
            print(f"[{model} {lib}: {time.perf_counter() - started:.0f} s]", file=sys.stderr, flush=True)
    rows = merge_processes(rows, key=("model", "library"), median_fields=("first_ms",))
    print(results_table(rows))
    if args.processes > 1:
        print("\nPer-process medians (ms):\n")
        for r in rows:
            if "process_medians" in r:
                print(f"- {r['model']} {r['library']}: "
                      + ", ".join(f"{m:.2f}" for m in r["process_medians"]))
    print("\nRatios of medians (< 1: keras_node faster), against issue 20's targets:\n")
    print(ratio_table(rows))
    print(f"\nload average at end: {peers.load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
