"""Adapters that run the benchmark problems on the PEER libraries.

keras_node is compared against these; none of them is a dependency of
keras_node (install them with ``benchmarks/requirements.txt``). Each adapter
has the signature::

    run_X(problem, T=None, dtype="float32", rtol=1e-5, atol=1e-7,
          mode="forward", *, repeats=20, warmup=2) -> dict

``problem`` is a :class:`problems.Problem` or its name, ``T`` the horizon
(``None`` = the problem's default), ``dtype`` ``"float32"``/``"float64"``.
Every library solves with Dormand-Prince 5(4) and accepts a step when
``norm(err / (atol + rtol * max(|y_old|, |y_new|))) <= 1``, each with its
own initial step selection and step-size controller constants. torchdiffeq
and diffrax use the RMS norm; TFP 0.25 squares the ratios before its "RMS"
(``dormand_prince.py``: ``sqrt(mean((err / tol)**4))``), then feeds that
into ``ratio**(-1/5)``, which is why it takes more steps at equal
tolerances. TFP also starts from a fixed first step of 1e-3 (no automatic
initial step).

Modes (``MODES``):

``"forward"``        solve only (no gradient bookkeeping).
``"adjoint"``        forward solve + gradient of ``problem.loss`` w.r.t. ``y0``
                     and all parameters by the continuous adjoint (backsolve),
                     with the seminorm (Kidger et al. 2021) where the library
                     has it; ``result["seminorm"]`` says what was used.
``"adjoint_nosemi"`` the same with the full error norm in the backward solve.
``"backprop"``       differentiate through the solver's operations.

Timings cover the call and, for asynchronous libraries, waiting for its
result; they do not include the numpy copies of the outputs. The returned
dict has these keys:

=================  ==========================================================
library, variant   e.g. ``"tfp"``, ``"xla"``
problem, T, dtype, rtol, atol, mode      the arguments (``T`` resolved)
seminorm           ``True``/``False`` for adjoint modes, else ``None``
nfe_forward        vector-field evaluations of the forward solve (int)
nfe_backward       evaluations made during the backward pass (int): one per
                   evaluation of the augmented adjoint field for the adjoint
                   modes (each is one f evaluation plus its VJP); for
                   ``"backprop"`` the f evaluations the backward pass
                   re-runs (0 unless the library recomputes, e.g. diffrax's
                   checkpointing); ``None`` in ``"forward"`` mode
median_ms, min_ms  over the timed calls after the untimed warm-up ones (at
                   least ``repeats`` and ``warmup``; see ``STEADY_STATE``)
first_call_ms      the first call (tracing + compilation for graph/JIT libs)
repeats            number of timed calls
output             solution at ``problem.times(T)``: array (len(t), *y0.shape)
loss               ``problem.loss(output)`` as a Python float
grad_h0            dL/dy0 (numpy) or ``None`` in ``"forward"`` mode
grad_params        {name: dL/dparam} (numpy) or ``None``
stats              library-specific extras (raw step counts, ...)
notes              how the NFEs were counted and anything unusual
=================  ==========================================================

An adapter raises :class:`UnsupportedMode` (a ``NotImplementedError``) for a
mode its library cannot do (TFP has no ``"backprop"``).

The module also gives the float64 scipy reference: :func:`reference_solution`
and :func:`reference_gradient` (DOP853 at rtol = atol = 1e-12).

Heavy imports (torch, tensorflow, jax) happen inside the adapters, so
importing this module is cheap and only needs numpy and scipy.
"""

from __future__ import annotations

import functools
import statistics
import time
from typing import Callable, Dict, Optional, Tuple

import numpy as np

try:  # works both as ``benchmarks.peers`` and as a script-dir import
    from .problems import Problem, as_dtype, get_problem
except ImportError:  # pragma: no cover
    from problems import Problem, as_dtype, get_problem

__all__ = [
    "MODES",
    "UnsupportedMode",
    "run_torchdiffeq",
    "run_tfp",
    "run_tfp_graph",
    "run_tfp_xla",
    "run_diffrax",
    "ADAPTERS",
    "reference_solution",
    "reference_gradient",
    "library_versions",
]

MODES = ("forward", "adjoint", "adjoint_nosemi", "backprop")

# Step budget given to the peers that need one (diffrax, TFP); equal to
# keras_node's default ``max_num_steps``.
MAX_STEPS = 10_000


class UnsupportedMode(NotImplementedError):
    """The library cannot run the requested mode."""


# ---------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------

def _resolve(problem, T, dtype, mode):
    if isinstance(problem, str):
        problem = get_problem(problem)
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a Problem or a name, got {problem!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    T = problem.default_T if T is None else float(T)
    return problem, T, as_dtype(dtype)


BEFORE_FIRST_CALL: Optional[Callable[[], None]] = None
"""Called by every adapter just before its first (compiling) call (the
harness resets the peak-RSS mark there); None: nothing."""


STEADY_STATE: Optional[Tuple[float, int, float, int]] = None
"""`(warmup_s, max_warmup_calls, timed_s, max_timed_calls)` or None.

When set (the harness sets it for its cheap cases), `_time_calls` keeps
warming up until `warmup_s` seconds or `max_warmup_calls` calls have passed,
and keeps timing until `timed_s` seconds or `max_timed_calls` calls, on top of
the `warmup` and `repeats` it is given. Why: a TensorFlow graph function is
not in its steady state after a few calls. TF's executor starts every CPU
kernel with a large cost estimate, runs kernels it believes expensive on its
inter-op thread pool, and lowers the estimate run by run (a moving average
with decay 9/10), so small ops move inline only after ~90 calls: a 0.3 ms
solve measured over calls 4-23 reads 0.35-0.37 ms, over calls 100-400
0.28-0.32 ms (RESULTS.md 2b). JAX and PyTorch have no such transient, and a
training loop makes thousands of calls, so every library is timed in its
steady state; more timed calls also steady the median of sub-millisecond
cases. None: exactly `warmup` and `repeats` calls.
"""


def _time_calls(fn: Callable[[], object], repeats: int, warmup: int):
    """Call ``fn`` once (timed as first call), warm up, then time calls.

    Warm-up: ``warmup`` calls, extended per :data:`STEADY_STATE`; timed:
    ``repeats`` calls, extended likewise. ``fn`` must block until its result
    is ready.

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
    times = []
    started = time.perf_counter()
    while len(times) < max(1, repeats) or (
            len(times) < max_timed and time.perf_counter() - started < timed_s):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return first, first_ms, statistics.median(times), min(times), len(times)


def _result(library, variant, problem, T, dtype, rtol, atol, mode, *,
            seminorm, nfe_forward, nfe_backward, timing, output,
            grad_h0=None, grad_params=None, stats=None, notes=""):
    _, first_ms, median_ms, min_ms, timed_calls = timing
    output = np.asarray(output)
    return {
        "library": library, "variant": variant, "problem": problem.name,
        "T": T, "dtype": dtype.name, "rtol": rtol, "atol": atol, "mode": mode,
        "seminorm": seminorm,
        "nfe_forward": None if nfe_forward is None else int(nfe_forward),
        "nfe_backward": None if nfe_backward is None else int(nfe_backward),
        "median_ms": median_ms, "min_ms": min_ms, "first_call_ms": first_ms,
        "repeats": timed_calls,
        "output": output, "loss": problem.loss(output),
        "grad_h0": None if grad_h0 is None else np.asarray(grad_h0),
        "grad_params": (None if grad_params is None else
                        {k: np.asarray(v) for k, v in grad_params.items()}),
        "stats": stats or {}, "notes": notes,
    }


def library_versions() -> Dict[str, str]:
    """Versions of the peer libraries importable here (missing ones omitted)."""
    import importlib
    out = {}
    for mod in ("numpy", "scipy", "torch", "torchdiffeq", "tensorflow",
                "tensorflow_probability", "jax", "diffrax", "keras"):
        try:
            out[mod] = importlib.import_module(mod).__version__
        except Exception:  # noqa: BLE001 - a missing peer is simply left out
            pass
    return out


# ---------------------------------------------------------------------------
# torchdiffeq
# ---------------------------------------------------------------------------

def _torch_field(problem: Problem, dtype):
    """An ``nn.Module`` computing the problem's field, counting its calls.

    Conv states are kept NCHW inside torch (its native layout); the adapter
    transposes y0 in and the outputs/gradients out, so callers see NHWC.
    The RMS error norm is invariant under this permutation.
    """
    import torch

    tdt = {np.float32: torch.float32, np.float64: torch.float64}[dtype.type]

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            ps = problem.params_as(dtype)
            if problem.kind == "conv":  # HWIO -> OIHW
                ps["K1"] = ps["K1"].transpose(3, 2, 0, 1)
                ps["K2"] = ps["K2"].transpose(3, 2, 0, 1)
            self.names = list(ps)
            for k, v in ps.items():
                self.register_parameter(
                    k, torch.nn.Parameter(torch.tensor(np.ascontiguousarray(v), dtype=tdt)))
            self.nfe = 0

        def forward(self, t, y):  # noqa: D401 - torchdiffeq's func(t, y)
            self.nfe += 1
            if problem.kind == "mlp":
                return torch.tanh(y @ self.W1 + self.b1) @ self.W2 + self.b2
            if problem.kind == "spiral":
                return (y ** 3) @ self.A
            import torch.nn.functional as F
            s = torch.tanh(F.conv2d(y, self.K1, self.b1, padding=1))
            return F.conv2d(s, self.K2, self.b2, padding=1)

    return Field(), tdt


def run_torchdiffeq(problem, T=None, dtype="float32", rtol=1e-5, atol=1e-7,
                    mode="forward", *, repeats=20, warmup=2,
                    num_threads=2) -> dict:
    """torchdiffeq ``odeint``/``odeint_adjoint``, method dopri5, eager CPU.

    Uses ``torch.set_num_threads(num_threads)`` (2 = this machine's cores;
    on a machine shared with other busy processes 2 OpenMP threads can be
    10-100x slower than 1, see PEERS_BASELINE.md). ``"adjoint"`` passes
    ``adjoint_options=dict(norm="seminorm")``; ``"adjoint_nosemi"`` the
    default (full) norm; ``"backprop"`` runs ``odeint`` under autograd.
    The backward solve uses the forward rtol/atol (torchdiffeq's default).
    NFE: a counter in the module's ``forward``; the backward count is the
    counter's increase during ``loss.backward()`` (the adjoint calls the module
    once per augmented-field evaluation, then autograd for the VJP).
    """
    import torch
    import torchdiffeq

    problem, T, dtype = _resolve(problem, T, dtype, mode)
    torch.set_num_threads(num_threads)
    func, tdt = _torch_field(problem, dtype)
    ts = torch.tensor(problem.times(T), dtype=tdt)
    y0_np = problem.y0_as(dtype)
    if problem.kind == "conv":
        y0_np = np.ascontiguousarray(y0_np.transpose(0, 3, 1, 2))
    y0_base = torch.tensor(y0_np, dtype=tdt)
    kw = dict(rtol=rtol, atol=atol, method="dopri5")
    counts = {}

    def loss_of(ys):
        return (ys ** 2).sum() if problem.loss_over_all_times else (ys[-1] ** 2).sum()

    if mode == "forward":
        def call():
            func.nfe = 0
            with torch.no_grad():
                ys = torchdiffeq.odeint(func, y0_base, ts, **kw)
            counts["fwd"] = func.nfe
            return ys, None, None
    else:
        def call():
            func.zero_grad(set_to_none=True)
            y0 = y0_base.clone().requires_grad_(True)
            func.nfe = 0
            if mode == "backprop":
                ys = torchdiffeq.odeint(func, y0, ts, **kw)
            else:
                extra = ({"adjoint_options": dict(norm="seminorm")}
                         if mode == "adjoint" else {})
                ys = torchdiffeq.odeint_adjoint(func, y0, ts, **kw, **extra)
            counts["fwd"] = func.nfe
            loss_of(ys).backward()
            counts["bwd"] = func.nfe - counts["fwd"]
            return ys.detach(), y0.grad, {k: getattr(func, k).grad for k in func.names}

    timing = _time_calls(call, repeats, warmup)
    ys, g_y0, g_p = timing[0]
    ys = ys.numpy()
    if g_y0 is not None:
        g_y0 = g_y0.numpy()
        g_p = {k: v.numpy() for k, v in g_p.items()}
    if problem.kind == "conv":
        ys = ys.transpose(0, 1, 3, 4, 2)
        if g_y0 is not None:
            g_y0 = g_y0.transpose(0, 2, 3, 1)
            g_p["K1"] = g_p["K1"].transpose(2, 3, 1, 0)
            g_p["K2"] = g_p["K2"].transpose(2, 3, 1, 0)
    adj = mode in ("adjoint", "adjoint_nosemi")
    return _result(
        "torchdiffeq", f"eager/{num_threads}thr", problem, T, dtype, rtol, atol, mode,
        seminorm=(mode == "adjoint") if adj else None,
        nfe_forward=counts["fwd"], nfe_backward=counts.get("bwd"),
        timing=timing, output=ys, grad_h0=g_y0,
        grad_params=g_p,
        notes="NFE counted by a counter in nn.Module.forward (last timed call)")


# ---------------------------------------------------------------------------
# TensorFlow Probability
# ---------------------------------------------------------------------------

def _tf_field(problem: Problem):
    """``ode_fn(t, y, **params)`` in TensorFlow (NHWC conv)."""
    import tensorflow as tf

    if problem.kind == "mlp":
        def f(t, y, W1, b1, W2, b2):
            return tf.tanh(y @ W1 + b1) @ W2 + b2
    elif problem.kind == "spiral":
        def f(t, y, A):
            return tf.linalg.matvec(A, y ** 3, transpose_a=True)
    else:
        def f(t, y, K1, b1, K2, b2):
            s = tf.tanh(tf.nn.conv2d(y, K1, 1, "SAME") + b1)
            return tf.nn.conv2d(s, K2, 1, "SAME") + b2
    return f


def run_tfp(problem, T=None, dtype="float32", rtol=1e-5, atol=1e-7,
            mode="forward", *, jit_compile=False, repeats=20, warmup=2) -> dict:
    """``tfp.math.ode.DormandPrince`` inside ``tf.function``.

    ``jit_compile=True`` compiles the whole call with XLA. Solver options are
    TFP's defaults except rtol/atol and ``max_num_steps=MAX_STEPS`` (notably
    a fixed ``first_step_size=1e-3``: TFP has no automatic initial step).
    Gradients come from TFP's built-in adjoint (``solve`` always uses it;
    parameters are passed as ``constants``); its backward solve is a
    DormandPrince with the same tolerances and the FULL norm over the
    augmented state -- TFP has no seminorm, so ``"adjoint"`` and
    ``"adjoint_nosemi"`` run the same computation (``seminorm=False``).
    ``"backprop"`` raises :class:`UnsupportedMode`.

    NFE: forward from ``results.diagnostics.num_ode_fn_evaluations``; the
    backward count comes from an extra, untimed run of a copy of the
    function whose ``ode_fn`` increments a ``tf.Variable`` (total minus
    forward; one increment per augmented-field evaluation).
    """
    import tensorflow as tf
    import tensorflow_probability as tfp

    problem, T, dtype = _resolve(problem, T, dtype, mode)
    if mode == "backprop":
        raise UnsupportedMode(
            "tfp.math.ode always differentiates with its adjoint; no backprop mode")
    f = _tf_field(problem)
    ts = tf.constant(problem.times(T, dtype))
    y0 = tf.constant(problem.y0_as(dtype))
    params = {k: tf.constant(v) for k, v in problem.params_as(dtype).items()}
    solver = tfp.math.ode.DormandPrince(rtol=rtol, atol=atol,
                                        max_num_steps=MAX_STEPS)

    def build(ode_fn):
        if mode == "forward":
            def step(y0, params):
                res = solver.solve(ode_fn, ts[0], y0, solution_times=ts,
                                   constants=params)
                return (res.states, res.diagnostics.num_ode_fn_evaluations,
                        res.diagnostics.status)
        else:
            def step(y0, params):
                with tf.GradientTape() as tape:
                    tape.watch((y0, params))
                    res = solver.solve(ode_fn, ts[0], y0, solution_times=ts,
                                       constants=params)
                    ys = res.states
                    loss = (tf.reduce_sum(ys ** 2) if problem.loss_over_all_times
                            else tf.reduce_sum(ys[-1] ** 2))
                g_y0, g_p = tape.gradient(loss, (y0, params))
                return (ys, res.diagnostics.num_ode_fn_evaluations,
                        res.diagnostics.status, g_y0, g_p)
        return tf.function(step, jit_compile=jit_compile)

    fn = build(f)

    def call():
        return fn(y0, params)  # eager tensors: the call blocks until done

    timing = _time_calls(call, repeats, warmup)
    out = timing[0]
    status = int(out[2])
    if status != 0:
        raise RuntimeError(f"TFP solve failed with status {status}")
    nfe_fwd = int(out[1])
    nfe_bwd = None
    if mode != "forward":
        counter = tf.Variable(0, dtype=tf.int64, trainable=False)

        def counted(t, y, **kw):
            counter.assign_add(1)
            return f(t, y, **kw)

        fn_count = build(counted)
        fn_count(y0, params)
        nfe_bwd = int(counter.numpy()) - nfe_fwd
    adj = mode in ("adjoint", "adjoint_nosemi")
    return _result(
        "tfp", "xla" if jit_compile else "graph", problem, T, dtype, rtol,
        atol, mode, seminorm=False if adj else None, nfe_forward=nfe_fwd,
        nfe_backward=nfe_bwd, timing=timing,
        output=out[0].numpy(),
        grad_h0=None if mode == "forward" else out[3].numpy(),
        grad_params=(None if mode == "forward" else
                     {k: v.numpy() for k, v in out[4].items()}),
        stats={"first_step_size": 1e-3},
        notes=("forward NFE from diagnostics.num_ode_fn_evaluations; backward "
               "NFE from a tf.Variable counter in a separate untimed run"
               + ("; TFP has no seminorm (full norm used)" if adj else "")))


def run_tfp_graph(problem, T=None, dtype="float32", rtol=1e-5, atol=1e-7,
                  mode="forward", *, repeats=20, warmup=2) -> dict:
    """:func:`run_tfp` with ``tf.function`` (graph mode, no XLA)."""
    return run_tfp(problem, T, dtype, rtol, atol, mode, jit_compile=False,
                   repeats=repeats, warmup=warmup)


def run_tfp_xla(problem, T=None, dtype="float32", rtol=1e-5, atol=1e-7,
                mode="forward", *, repeats=20, warmup=2) -> dict:
    """:func:`run_tfp` with ``tf.function(jit_compile=True)`` (XLA)."""
    return run_tfp(problem, T, dtype, rtol, atol, mode, jit_compile=True,
                   repeats=repeats, warmup=warmup)


# ---------------------------------------------------------------------------
# diffrax (JAX)
# ---------------------------------------------------------------------------

def _jax_setup():
    import jax
    # float64 runs need x64; float32 runs stay float32 because every array
    # (states, parameters AND times) is created with an explicit dtype.
    jax.config.update("jax_enable_x64", True)
    return jax


def _jax_field(problem: Problem):
    """``vf(t, y, params)`` in JAX (NHWC conv)."""
    import jax
    import jax.numpy as jnp

    if problem.kind == "mlp":
        def vf(t, y, p):
            return jnp.tanh(y @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]
    elif problem.kind == "spiral":
        def vf(t, y, p):
            return (y ** 3) @ p["A"]
    else:
        def conv(x, k):
            return jax.lax.conv_general_dilated(
                x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

        def vf(t, y, p):
            return conv(jnp.tanh(conv(y, p["K1"]) + p["b1"]), p["K2"]) + p["b2"]
    return vf


def run_diffrax(problem, T=None, dtype="float32", rtol=1e-5, atol=1e-7,
                mode="forward", *, repeats=20, warmup=2) -> dict:
    """diffrax ``diffeqsolve`` with ``Dopri5`` + ``PIDController(rtol, atol)``,
    ``dt0=None`` (automatic initial step), ``SaveAt(ts=problem.times(T))``,
    under ``jax.jit`` (parameters passed as ``args``).

    ``"adjoint"``: ``BacksolveAdjoint(solver=Dopri5(),
    stepsize_controller=PIDController(rtol, atol, norm=adjoint_rms_seminorm))``
    (diffrax's seminorm leaves the parameter-adjoint out of the norm);
    ``"adjoint_nosemi"``: the same with the default RMS norm;
    ``"backprop"``: ``RecursiveCheckpointAdjoint()`` (diffrax's default,
    discretise-then-optimise with checkpointed recomputation).

    NFE: diffrax reports steps, not evaluations, and nothing for the
    backward solve of ``BacksolveAdjoint``. So the counts come from an
    extra, untimed run of the same computation whose vector field calls
    ``jax.debug.callback`` to bump a Python counter: forward = count after
    ``jax.vjp`` (primal pass), backward = increase during the VJP call.
    Measured: a forward Dopri5 solve costs ``6 * num_steps + 1``
    evaluations (``num_steps`` = attempted steps; 6 new stages per attempt
    thanks to FSAL, plus one extra for the initial step size), e.g. 31 for 5
    steps and 931 for 155. ``stats`` holds diffrax's raw step counts of the
    forward solve. In ``"backprop"`` mode the backward count is the forward
    evaluations that ``RecursiveCheckpointAdjoint`` re-runs while
    differentiating, as seen by the callback.
    """
    jax = _jax_setup()
    import jax.numpy as jnp
    import diffrax

    problem, T, dtype = _resolve(problem, T, dtype, mode)
    vf = _jax_field(problem)
    ts = jnp.asarray(problem.times(T, dtype))
    y0 = jnp.asarray(problem.y0_as(dtype))
    params = {k: jnp.asarray(v) for k, v in problem.params_as(dtype).items()}
    controller = diffrax.PIDController(rtol=rtol, atol=atol)
    if mode == "adjoint":
        adjoint = diffrax.BacksolveAdjoint(
            solver=diffrax.Dopri5(),
            stepsize_controller=diffrax.PIDController(
                rtol=rtol, atol=atol, norm=diffrax.adjoint_rms_seminorm))
    elif mode == "adjoint_nosemi":
        adjoint = diffrax.BacksolveAdjoint(
            solver=diffrax.Dopri5(),
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol))
    else:
        adjoint = diffrax.RecursiveCheckpointAdjoint()

    def make_solve(field):
        def solve(y0, params):
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(field), diffrax.Dopri5(), t0=ts[0], t1=ts[-1],
                dt0=None, y0=y0, args=params, saveat=diffrax.SaveAt(ts=ts),
                stepsize_controller=controller, adjoint=adjoint,
                max_steps=MAX_STEPS)
            return sol.ys, sol.stats
        return solve

    def loss_of(ys):
        return jnp.sum(ys ** 2) if problem.loss_over_all_times else jnp.sum(ys[-1] ** 2)

    solve = make_solve(vf)
    if mode == "forward":
        fn = jax.jit(solve)
    else:
        def loss_and_grad(y0, params):
            def lossf(y0, params):
                ys, stats = solve(y0, params)
                return loss_of(ys), (ys, stats)
            (_, (ys, stats)), grads = jax.value_and_grad(
                lossf, argnums=(0, 1), has_aux=True)(y0, params)
            return ys, stats, grads
        fn = jax.jit(loss_and_grad)

    def call():
        return jax.block_until_ready(fn(y0, params))

    timing = _time_calls(call, repeats, warmup)
    out = timing[0]
    ys, stats = out[0], out[1]
    stats = {k: int(v) for k, v in stats.items() if np.ndim(v) == 0}

    # --- untimed counting run -------------------------------------------
    count = [0]

    def bump():
        count[0] += 1

    def counted_vf(t, y, p):
        jax.debug.callback(bump)
        return vf(t, y, p)

    csolve = make_solve(counted_vf)
    if mode == "forward":
        jax.block_until_ready(csolve(y0, params))
        jax.effects_barrier()
        nfe_fwd, nfe_bwd = count[0], None
    else:
        closs = lambda y0, p: loss_of(csolve(y0, p)[0])  # noqa: E731
        val, vjp_fn = jax.vjp(closs, y0, params)
        jax.block_until_ready(val)
        jax.effects_barrier()
        nfe_fwd = count[0]
        jax.block_until_ready(vjp_fn(jnp.ones_like(val)))
        jax.effects_barrier()
        nfe_bwd = count[0] - nfe_fwd

    grads = None if mode == "forward" else out[2]
    adj = mode in ("adjoint", "adjoint_nosemi")
    return _result(
        "diffrax", "jit", problem, T, dtype, rtol, atol, mode,
        seminorm=(mode == "adjoint") if adj else None,
        nfe_forward=nfe_fwd, nfe_backward=nfe_bwd, timing=timing,
        output=np.asarray(ys),
        grad_h0=None if grads is None else np.asarray(grads[0]),
        grad_params=(None if grads is None else
                     {k: np.asarray(v) for k, v in grads[1].items()}),
        stats=stats,
        notes=("NFE counted with jax.debug.callback in a separate untimed run; "
               "stats = diffrax's step counts of the forward solve"))


ADAPTERS: Dict[str, Callable[..., dict]] = {
    "torchdiffeq": run_torchdiffeq,
    "tfp_graph": run_tfp_graph,
    "tfp_xla": run_tfp_xla,
    "diffrax": run_diffrax,
}
"""Peer adapters by short name, all with the common signature."""


# ---------------------------------------------------------------------------
# scipy float64 reference
# ---------------------------------------------------------------------------

REF_RTOL = 1e-12
REF_ATOL = 1e-12


@functools.lru_cache(maxsize=16)
def _reference_forward(name: str, T: float):
    from scipy.integrate import solve_ivp

    problem = get_problem(name)
    ts = problem.times(T)
    params = problem.params_as("float64")
    shape = problem.y0.shape

    def fun(t, y):
        return problem.f(y.reshape(shape), params).ravel()

    sol = solve_ivp(fun, (ts[0], ts[-1]), problem.y0_as("float64").ravel(),
                    method="DOP853", rtol=REF_RTOL, atol=REF_ATOL,
                    t_eval=ts, dense_output=True)
    if not sol.success:
        raise RuntimeError(f"reference solve failed for {name}, T={T}: {sol.message}")
    ys = sol.y.T.reshape((len(ts),) + shape)
    ys.setflags(write=False)
    return ys, sol.sol, sol.nfev


def reference_solution(problem, T: Optional[float] = None) -> np.ndarray:
    """float64 solution at ``problem.times(T)``, shape ``(len(t), *y0.shape)``.

    ``scipy.integrate.solve_ivp(method="DOP853", rtol=1e-12, atol=1e-12)``
    on the flattened state (the whole batch in one solve). Results are
    cached per (problem, T); the returned array is read-only.
    """
    problem, T, _ = _resolve(problem, T, "float64", "forward")
    return _reference_forward(problem.name, T)[0]


@functools.lru_cache(maxsize=16)
def _reference_gradient(name: str, T: float):
    from scipy.integrate import solve_ivp

    problem = get_problem(name)
    ys, dense, _ = _reference_forward(name, T)
    ts = problem.times(T)
    params = problem.params_as("float64")
    shape = problem.y0.shape
    n_y = problem.state_size
    names = list(params)
    sizes = [params[k].size for k in names]

    def unpack_params(v):
        out, i = {}, 0
        for k, s in zip(names, sizes):
            out[k] = v[i:i + s].reshape(params[k].shape)
            i += s
        return out

    def aug(t, z):
        # z = [a (adjoint of y), g (running parameter gradient)].
        # da/dt = -a df/dy,  dg/dt = -a df/dtheta, integrated from T down to 0
        # with y(t) from the forward dense output.
        y = dense(t).reshape(shape)
        a_y, a_p = problem.vjp(y, z[:n_y].reshape(shape), params)
        return -np.concatenate([a_y.ravel()] + [a_p[k].ravel() for k in names])

    g_out = problem.loss_grad_at_outputs(ys)
    z = np.concatenate([g_out[-1].ravel(), np.zeros(sum(sizes))])
    for i in range(len(ts) - 1, 0, -1):
        sol = solve_ivp(aug, (ts[i], ts[i - 1]), z, method="DOP853",
                        rtol=REF_RTOL, atol=REF_ATOL)
        if not sol.success:
            raise RuntimeError(f"reference adjoint failed for {name}, T={T}: "
                               f"{sol.message}")
        z = sol.y[:, -1].copy()
        z[:n_y] += g_out[i - 1].ravel()
    grads = {"h0": z[:n_y].reshape(shape)}
    grads.update(unpack_params(z[n_y:]))
    for v in grads.values():
        v.setflags(write=False)
    return grads


def reference_gradient(problem, T: Optional[float] = None) -> Dict[str, np.ndarray]:
    """float64 gradient of ``problem.loss`` by the continuous adjoint.

    Returns ``{"h0": dL/dy0, <param name>: dL/dparam, ...}`` (read-only
    arrays, cached per (problem, T)). The adjoint ``a(t)`` and the parameter
    integral are solved backward, vectorised over the batch, with
    DOP853 at rtol = atol = 1e-12 interval by interval between output times
    (adding ``dL/dy(t_i)`` at each), reading ``y(t)`` from the forward
    solve's dense output (no backward reconstruction of ``y``).
    """
    problem, T, _ = _resolve(problem, T, "float64", "forward")
    return _reference_gradient(problem.name, T)
