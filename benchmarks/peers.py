"""Adapters that run the benchmark problems on the PEER libraries, and the
float64 scipy references (:func:`reference_solution`, :func:`reference_gradient`).

None of torchdiffeq, tfp.math.ode or diffrax is a keras_node dependency
(``benchmarks/requirements.txt``); each is imported inside its adapter. Every
adapter, and ``keras_node_adapter.run_keras_node``, is called as
``run_X(problem, T=None, dtype="float32", rtol=1e-5, atol=1e-7, mode="forward",
*, repeats=20, warmup=2)`` (``problem``: a Problem or its name). All solve with
Dormand-Prince 5(4) and accept a step when
``norm(err / (atol + rtol * max(|y_old|, |y_new|))) <= 1``, each with its own
initial step and controller constants. torchdiffeq and diffrax use the RMS
norm; TFP 0.25 squares the ratios before its "RMS" (``dormand_prince.py``)
and feeds that into ``ratio**(-1/5)``, hence more steps at equal tolerances,
and starts from a fixed first step of 1e-3.

Modes (``MODES``): ``"forward"``; ``"adjoint"`` (forward + gradient of the
problem's loss w.r.t. ``y0`` and the parameters by the continuous adjoint,
with the seminorm where the library has it); ``"adjoint_nosemi"`` (full
norm); ``"backprop"`` (through the solver's operations). A mode the library
lacks raises :class:`UnsupportedMode`. The result dict is :func:`_result`'s.
"""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import os
import platform
import statistics
import time
from typing import Callable, Optional, Tuple

import numpy as np

from benchmarks.problems import as_dtype, field, get_problem

MODES = ("forward", "adjoint", "adjoint_nosemi", "backprop")
MAX_STEPS = 10_000  # step budget of diffrax and TFP; keras_node's default max_num_steps


class UnsupportedMode(NotImplementedError):
    """The library cannot run the requested mode."""


def _resolve(problem, T, dtype, mode):
    """``(Problem, T as float, np.dtype)`` from an adapter's arguments."""
    problem = get_problem(problem) if isinstance(problem, str) else problem
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return problem, problem.default_T if T is None else float(T), as_dtype(dtype)


def _loss_of(problem, ys, reduce_sum):
    """The problem's loss of a solution, with the library's ``reduce_sum``."""
    return reduce_sum(ys ** 2) if problem.loss_over_all_times else reduce_sum(ys[-1] ** 2)


BEFORE_FIRST_CALL: Optional[Callable[[], None]] = None
"""Called just before each adapter's first (compiling) call; the harness
resets the peak-RSS mark there. None: nothing."""

STEADY_STATE: Optional[Tuple[float, int, float, int]] = None
"""``(warmup_s, max_warmup_calls, timed_s, max_timed_calls)`` or None.

When set (the harness sets it for its cheap cases), :func:`_time_calls`
keeps warming up until ``warmup_s`` seconds or ``max_warmup_calls`` calls
have passed, and keeps timing until ``timed_s`` seconds or
``max_timed_calls`` calls, on top of the ``warmup`` and ``repeats`` it is
given. Why: a TensorFlow graph function is not in its steady state after a
few calls. TF's executor starts every CPU kernel with a large cost estimate,
runs kernels it believes expensive on its inter-op thread pool, and lowers
the estimate run by run (a moving average with decay 9/10), so small ops move
inline only after ~90 calls: a 0.3 ms solve measured over calls 4-23 reads
0.35-0.37 ms, over calls 100-400 0.28-0.32 ms (RESULTS.md 2b). JAX and
PyTorch have no such transient, and a training loop makes thousands of calls,
so every library is timed in its steady state; more timed calls also steady
the median of sub-millisecond cases. None: exactly ``warmup`` and
``repeats`` calls.
"""


def _time_calls(fn, repeats, warmup):
    """Call ``fn`` once (the first call), warm up, then time calls.

    ``warmup`` untimed and ``repeats`` timed calls, each extended per
    :data:`STEADY_STATE`. ``fn`` must block until its result is ready.
    Returns ``(first_result, first_call_ms, median_ms, min_ms, timed_calls)``.
    """
    warmup_s, max_warmup, timed_s, max_timed = STEADY_STATE or (0.0, 0, 0.0, 0)
    if BEFORE_FIRST_CALL is not None:
        BEFORE_FIRST_CALL()
    t0 = time.perf_counter()
    first = fn()
    first_ms = (time.perf_counter() - t0) * 1e3
    calls, started = 0, time.perf_counter()
    while calls < warmup or (calls < max_warmup and time.perf_counter() - started < warmup_s):
        fn()
        calls += 1
    times, started = [], time.perf_counter()
    while len(times) < max(1, repeats) or (
            len(times) < max_timed and time.perf_counter() - started < timed_s):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return first, first_ms, statistics.median(times), min(times), len(times)


def _result(variant, mode, timing, output, nfe_forward, nfe_backward, seminorm=None,
            grad_h0=None, grad_params=None):
    """The adapters' result: ``timing`` is :func:`_time_calls`'s (times cover
    the call and waiting for its result, not numpy copies); ``output`` the
    solution at ``problem.times(T)``; ``nfe_backward`` counts evaluations of
    the augmented adjoint field (f and its VJP) in adjoint modes, the f
    evaluations the backward pass re-runs in backprop, None in forward mode."""
    _, first_ms, median_ms, min_ms, timed_calls = timing
    adjoint = mode in ("adjoint", "adjoint_nosemi")
    return {
        "variant": variant, "seminorm": seminorm if adjoint else None,
        "nfe_forward": int(nfe_forward),
        "nfe_backward": None if nfe_backward is None else int(nfe_backward),
        "median_ms": median_ms, "min_ms": min_ms, "first_call_ms": first_ms,
        "repeats": timed_calls, "output": np.asarray(output),
        "grad_h0": None if grad_h0 is None else np.asarray(grad_h0),
        "grad_params": (None if grad_params is None else
                        {k: np.asarray(v) for k, v in grad_params.items()}),
    }


def _first_line(path, prefix=""):
    try:
        with open(path) as fh:
            return next((line for line in fh if line.startswith(prefix)), "")
    except OSError:
        return ""


def load_average() -> str:
    """The 1/5/15-minute load averages (other jobs on a 2-core box skew times)."""
    return " ".join(_first_line("/proc/loadavg").split()[:3]) or "unknown"


def machine_info() -> str:
    """One line: date, cores, CPU model, load average, Python and library versions
    (read from the installed packages' metadata, so nothing heavy is imported)."""
    versions = []
    for dist in ("numpy", "scipy", "tensorflow", "keras", "torch", "torchdiffeq",
                 "tensorflow-probability", "jax", "diffrax"):
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:  # a missing peer is left out
            pass
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cpu = _first_line("/proc/cpuinfo", "model name").partition(":")[2].strip()
    return (f"{date}; {os.cpu_count()} cores, {cpu}, load {load_average()}; Python "
            f"{platform.python_version()}, " + ", ".join(versions))


def tf_field(problem, params):
    """The problem's field ``f(t, y)`` in TensorFlow (NHWC conv), reading ``params``
    (tensors or variables); keras_node's adapter uses it too."""
    import tensorflow as tf

    return field(problem.kind, params, tf.tanh, lambda x, k, b: tf.nn.conv2d(x, k, 1, "SAME") + b,
                 lambda y, A: tf.linalg.matvec(A, y ** 3, transpose_a=True))


# --- torchdiffeq -------------------------------------------------------------

def run_torchdiffeq(problem, T=None, dtype="float32", rtol=1e-5, atol=1e-7, mode="forward", *,
                    repeats=20, warmup=2, num_threads=1) -> dict:
    """torchdiffeq ``odeint``/``odeint_adjoint``, method dopri5, eager CPU.

    ``torch.set_num_threads(num_threads)``: 1 by default, because on a 2-core
    machine shared with other busy processes torch's two OpenMP threads wait
    for each other at every op (10-100x slower). ``"adjoint"`` passes
    ``adjoint_options=dict(norm="seminorm")``; the backward solve uses the
    forward tolerances (torchdiffeq's default). NFE: a counter in the
    module's ``forward``; backward = its increase during ``loss.backward()``.
    Conv states are NCHW inside torch; outputs and gradients come back NHWC
    (the RMS error norm does not depend on the layout).
    """
    import torch
    import torch.nn.functional as F
    import torchdiffeq

    problem, T, dtype = _resolve(problem, T, dtype, mode)
    torch.set_num_threads(num_threads)
    tdt = {np.float32: torch.float32, np.float64: torch.float64}[dtype.type]
    conv = problem.kind == "conv"

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            ps = problem.params_as(dtype)
            if conv:  # HWIO -> OIHW
                ps["K1"], ps["K2"] = ps["K1"].transpose(3, 2, 0, 1), ps["K2"].transpose(3, 2, 0, 1)
            self.p = {k: torch.nn.Parameter(torch.tensor(np.ascontiguousarray(v))) for k, v in ps.items()}
            for k, v in self.p.items():
                self.register_parameter(k, v)
            self.f = field(problem.kind, self.p, torch.tanh,
                           lambda x, k, b: F.conv2d(x, k, b, padding=1))
            self.nfe = 0

        def forward(self, t, y):
            self.nfe += 1
            return self.f(t, y)

    func = Field()
    ts = torch.tensor(problem.times(T), dtype=tdt)
    y0_np = problem.y0_as(dtype)
    y0_base = torch.tensor(np.ascontiguousarray(y0_np.transpose(0, 3, 1, 2)) if conv else y0_np)
    kw = dict(rtol=rtol, atol=atol, method="dopri5")
    counts = {}

    def call():
        func.nfe = 0
        if mode == "forward":
            with torch.no_grad():
                ys = torchdiffeq.odeint(func, y0_base, ts, **kw)
            counts["fwd"] = func.nfe
            return ys, None, None
        func.zero_grad(set_to_none=True)
        y0 = y0_base.clone().requires_grad_(True)
        if mode == "backprop":
            ys = torchdiffeq.odeint(func, y0, ts, **kw)
        else:
            extra = {"adjoint_options": dict(norm="seminorm")} if mode == "adjoint" else {}
            ys = torchdiffeq.odeint_adjoint(func, y0, ts, **kw, **extra)
        counts["fwd"] = func.nfe
        _loss_of(problem, ys, torch.sum).backward()
        counts["bwd"] = func.nfe - counts["fwd"]
        return ys.detach(), y0.grad, {k: v.grad for k, v in func.p.items()}

    timing = _time_calls(call, repeats, warmup)
    ys, g_y0, g_p = timing[0]
    ys = ys.numpy()
    if g_y0 is not None:
        g_y0, g_p = g_y0.numpy(), {k: v.numpy() for k, v in g_p.items()}
    if conv:
        ys = ys.transpose(0, 1, 3, 4, 2)
        if g_y0 is not None:
            g_y0 = g_y0.transpose(0, 2, 3, 1)
            g_p["K1"], g_p["K2"] = g_p["K1"].transpose(2, 3, 1, 0), g_p["K2"].transpose(2, 3, 1, 0)
    return _result(f"eager/{num_threads}thr", mode, timing, ys, counts["fwd"], counts.get("bwd"),
                   seminorm=mode == "adjoint", grad_h0=g_y0, grad_params=g_p)


# --- TensorFlow Probability --------------------------------------------------

def run_tfp(problem, T=None, dtype="float32", rtol=1e-5, atol=1e-7, mode="forward", *,
            jit_compile=False, repeats=20, warmup=2) -> dict:
    """``tfp.math.ode.DormandPrince`` inside ``tf.function`` (``jit_compile=True``: XLA).

    TFP's defaults except rtol/atol and ``max_num_steps=MAX_STEPS`` (notably
    a fixed ``first_step_size=1e-3``). Gradients come from TFP's built-in
    adjoint (parameters passed as ``constants``), whose backward solve uses
    the same tolerances and the FULL norm: TFP has no seminorm, so both
    adjoint modes run the same computation (``seminorm=False``).
    NFE: forward from ``diagnostics.num_ode_fn_evaluations``; backward from
    an extra, untimed run whose ``ode_fn`` increments a ``tf.Variable``.
    """
    import tensorflow as tf
    import tensorflow_probability as tfp

    problem, T, dtype = _resolve(problem, T, dtype, mode)
    if mode == "backprop":
        raise UnsupportedMode("tfp.math.ode always differentiates with its adjoint; no backprop mode")
    f = lambda t, y, **params: tf_field(problem, params)(t, y)  # noqa: E731 - TFP's constants=
    ts = tf.constant(problem.times(T, dtype))
    y0 = tf.constant(problem.y0_as(dtype))
    params = {k: tf.constant(v) for k, v in problem.params_as(dtype).items()}
    solver = tfp.math.ode.DormandPrince(rtol=rtol, atol=atol, max_num_steps=MAX_STEPS)

    def build(ode_fn):
        def solve(y0, params):
            res = solver.solve(ode_fn, ts[0], y0, solution_times=ts, constants=params)
            return res.states, res.diagnostics.num_ode_fn_evaluations, res.diagnostics.status

        def step(y0, params):
            if mode == "forward":  # no tape: nothing recorded for a backward pass
                return solve(y0, params)
            with tf.GradientTape() as tape:
                tape.watch((y0, params))
                out = solve(y0, params)
                loss = _loss_of(problem, out[0], tf.reduce_sum)
            return out + tuple(tape.gradient(loss, (y0, params)))
        return tf.function(step, jit_compile=jit_compile)

    fn = build(f)
    timing = _time_calls(lambda: fn(y0, params), repeats, warmup)  # eager results: blocks
    out = timing[0]
    if int(out[2]) != 0:
        raise RuntimeError(f"TFP solve failed with status {int(out[2])}")
    nfe_bwd = None
    if mode != "forward":
        counter = tf.Variable(0, dtype=tf.int64, trainable=False)

        def counted(t, y, **kw):
            counter.assign_add(1)
            return f(t, y, **kw)

        build(counted)(y0, params)
        nfe_bwd = int(counter.numpy()) - int(out[1])
    return _result("xla" if jit_compile else "graph", mode, timing, out[0].numpy(), int(out[1]),
                   nfe_bwd, seminorm=False,
                   grad_h0=None if mode == "forward" else out[3].numpy(),
                   grad_params=None if mode == "forward" else out[4])


# --- diffrax (JAX) -----------------------------------------------------------

def run_diffrax(problem, T=None, dtype="float32", rtol=1e-5, atol=1e-7, mode="forward", *,
                repeats=20, warmup=2) -> dict:
    """diffrax ``diffeqsolve`` with ``Dopri5``, ``PIDController(rtol, atol)``,
    ``dt0=None`` (automatic initial step), under ``jax.jit`` (parameters as ``args``).

    ``"adjoint"``: ``BacksolveAdjoint`` with ``Dopri5`` and
    ``PIDController(rtol, atol, norm=adjoint_rms_seminorm)``;
    ``"adjoint_nosemi"``: the same with the default RMS norm; ``"backprop"``:
    ``RecursiveCheckpointAdjoint()`` (diffrax's default, checkpointed
    recomputation). NFE: diffrax reports steps, not evaluations, and nothing
    for the backward solve, so the counts come from an extra, untimed run
    whose field bumps a Python counter through ``jax.debug.callback``:
    forward = the count after ``jax.vjp``, backward = its increase in the VJP
    (a forward solve costs ``6 * attempted steps + 1``, e.g. 931 for 155).
    """
    import jax
    # float64 runs need x64; float32 runs stay float32 because every array
    # (states, parameters AND times) is created with an explicit dtype.
    jax.config.update("jax_enable_x64", True)
    import diffrax
    import jax.numpy as jnp

    problem, T, dtype = _resolve(problem, T, dtype, mode)
    def conv(x, k, b):
        return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")) + b

    def vf(t, y, p):  # parameters as diffrax's `args`, not baked into the jitted code
        return field(problem.kind, p, jnp.tanh, conv)(t, y)
    ts = jnp.asarray(problem.times(T, dtype))
    y0 = jnp.asarray(problem.y0_as(dtype))
    params = {k: jnp.asarray(v) for k, v in problem.params_as(dtype).items()}
    if mode in ("forward", "backprop"):
        adjoint = diffrax.RecursiveCheckpointAdjoint()  # diffrax's default
    else:
        norm = dict(norm=diffrax.adjoint_rms_seminorm) if mode == "adjoint" else {}
        adjoint = diffrax.BacksolveAdjoint(
            solver=diffrax.Dopri5(),
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, **norm))

    def make_loss(field):
        def loss(y0, params):
            ys = diffrax.diffeqsolve(
                diffrax.ODETerm(field), diffrax.Dopri5(), t0=ts[0], t1=ts[-1], dt0=None, y0=y0,
                args=params, saveat=diffrax.SaveAt(ts=ts),
                stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
                adjoint=adjoint, max_steps=MAX_STEPS).ys
            return _loss_of(problem, ys, jnp.sum), ys
        return loss

    loss = make_loss(vf)
    if mode == "forward":
        fn = jax.jit(lambda y0, p: loss(y0, p)[1])
    else:
        fn = jax.jit(lambda y0, p: jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(y0, p))
    timing = _time_calls(lambda: jax.block_until_ready(fn(y0, params)), repeats, warmup)

    count = [0]  # the untimed counting run

    def counted_vf(t, y, p):
        jax.debug.callback(lambda: count.__setitem__(0, count[0] + 1))
        return vf(t, y, p)

    counted = make_loss(counted_vf)
    if mode == "forward":
        jax.block_until_ready(counted(y0, params))
        jax.effects_barrier()
        nfe_fwd, nfe_bwd = count[0], None
        ys, g_y0, g_p = timing[0], None, None
    else:
        value, vjp_fn = jax.vjp(lambda y0, p: counted(y0, p)[0], y0, params)
        jax.block_until_ready(value)
        jax.effects_barrier()
        nfe_fwd = count[0]
        jax.block_until_ready(vjp_fn(jnp.ones_like(value)))
        jax.effects_barrier()
        nfe_bwd = count[0] - nfe_fwd
        (_, ys), (g_y0, g_p) = timing[0]
    return _result("jit", mode, timing, ys, nfe_fwd, nfe_bwd, seminorm=mode == "adjoint",
                   grad_h0=g_y0, grad_params=g_p)


# --- scipy float64 reference -------------------------------------------------

REF_TOL = 1e-12  # DOP853 rtol = atol


@functools.lru_cache(maxsize=16)
def _reference_forward(name: str, T: float):
    from scipy.integrate import solve_ivp

    problem = get_problem(name)
    ts, params, shape = problem.times(T), problem.params_as("float64"), problem.y0.shape
    sol = solve_ivp(lambda t, y: problem.f(y.reshape(shape), params).ravel(), (ts[0], ts[-1]),
                    problem.y0.ravel(), method="DOP853", rtol=REF_TOL, atol=REF_TOL,
                    t_eval=ts, dense_output=True)
    if not sol.success:
        raise RuntimeError(f"reference solve failed for {name}, T={T}: {sol.message}")
    ys = sol.y.T.reshape((len(ts),) + shape)
    ys.setflags(write=False)
    return ys, sol.sol


def reference_solution(problem, T=None) -> np.ndarray:
    """float64 solution at ``problem.times(T)``, shape ``(len(t), *y0.shape)``.

    ``scipy.integrate.solve_ivp(method="DOP853", rtol=atol=1e-12)`` on the
    flattened state (the whole batch in one solve); cached, read-only.
    """
    problem, T, _ = _resolve(problem, T, "float64", "forward")
    return _reference_forward(problem.name, T)[0]


@functools.lru_cache(maxsize=16)
def reference_gradient(name: str, T: float):
    """float64 gradient of the problem's loss by the continuous adjoint.

    ``{"h0": dL/dy0, <param name>: dL/dparam}`` (cached; ``name`` a problem
    name, ``T`` a float). The adjoint ``a(t)`` and the parameter integral are
    solved backward with DOP853 at rtol = atol = 1e-12, interval by interval
    between output times (adding ``dL/dy(t_i)`` at each), reading ``y(t)``
    from the forward solve's dense output (no backward reconstruction of y).
    """
    from scipy.integrate import solve_ivp

    problem = get_problem(name)
    ys, dense = _reference_forward(name, T)
    ts, params, shape, n_y = problem.times(T), problem.params_as("float64"), problem.y0.shape, problem.y0.size
    names = list(params)

    def aug(t, z):
        # z = [a, g]: da/dt = -a df/dy, dg/dt = -a df/dtheta, from T down to 0.
        a_y, a_p = problem.vjp(dense(t).reshape(shape), z[:n_y].reshape(shape), params)
        return -np.concatenate([a_y.ravel()] + [a_p[k].ravel() for k in names])

    g_out = problem.loss_grad_at_outputs(ys)
    z = np.concatenate([g_out[-1].ravel(), np.zeros(sum(v.size for v in params.values()))])
    for i in range(len(ts) - 1, 0, -1):
        sol = solve_ivp(aug, (ts[i], ts[i - 1]), z, method="DOP853", rtol=REF_TOL, atol=REF_TOL)
        if not sol.success:
            raise RuntimeError(f"reference adjoint failed for {name}, T={T}: {sol.message}")
        z = sol.y[:, -1].copy()
        z[:n_y] += g_out[i - 1].ravel()
    grads, i = {"h0": z[:n_y].reshape(shape)}, n_y
    for k in names:
        grads[k] = z[i:i + params[k].size].reshape(params[k].shape)
        i += params[k].size
    return grads
