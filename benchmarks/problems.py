"""Benchmark problems shared by every library in the comparison.

Each problem is an autonomous ODE ``dy/dt = f(y; params)`` whose ``y0`` and
``params`` are drawn ONCE from a fixed numpy seed (stored float64, read-only),
with output times ``times(T)``, a scalar loss for the gradient benchmarks, and
a float64 numpy ``f`` and vector-Jacobian product ``vjp`` for the scipy
references in ``peers.py``. Every adapter implements the same ``f`` with the
conventions below, so outputs and gradients compare across libraries.

``"mlp"``
    ``f(h) = tanh(h @ W1 + b1) @ W2 + b2``; state ``(256, 16)``, hidden 64,
    entries ``N(0, 1) / sqrt(fan_in)``, ``h0 ~ N(0, 1)``; loss
    ``sum(h(T)**2)``.
``"mlp_contractive"``
    The same draws scaled by ``6 / sqrt(fan_in)`` (~205 forward NFE at
    T = 1, the cost of the issues' reference numbers); same ``h0``.
``"mlp_large"``
    As ``"mlp"`` with state ``(1024, 64)`` and hidden width 256.
``"spiral"``
    ``f(y) = (y**3) @ A``, ``A = [[-0.1, 2], [-2, -0.1]]``, ``y0 = [2, 0]``,
    outputs at ``linspace(0, T, 1000)``, default ``T = 25``; loss
    ``sum(ys**2)`` over ALL output times.
``"conv"``
    ODE-Net block ``conv3x3(tanh(conv3x3(h, K1) + b1), K2) + b2`` on NHWC
    ``(128, 8, 8, 32)``, 'SAME' zero padding, cross-correlation (as
    ``tf.nn.conv2d``, torch's ``conv2d`` and ``jax.lax.conv_general_dilated``);
    HWIO kernels ``(3, 3, 32, 32)``, entries ``N(0, 1) / sqrt(9 * 32)``.
    No numpy ``f``/``vjp``: a 262k-dimensional scipy reference takes too long.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Dict, Optional

import numpy as np

PROBLEM_NAMES = ("mlp", "mlp_contractive", "mlp_large", "spiral", "conv")

# One seed per problem family; changing these changes every benchmark number.
_SEED_MLP = 20240601
_SEED_MLP_LARGE = 20240602
_SEED_CONV = 20240603


def as_dtype(dtype) -> np.dtype:
    """``np.dtype`` for ``"float32"``/``"float64"`` (or a numpy/TF dtype); nothing else."""
    dt = np.dtype(getattr(dtype, "name", None) or str(dtype))
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


def field(kind, p, tanh, conv=None, cubed_times=lambda y, A: (y ** 3) @ A):
    """The field ``f(t, y)`` of a problem of this ``kind`` in any array library.

    ``p``: the parameters (arrays, variables or tracers); ``tanh`` and
    ``conv(x, kernel, bias)`` (3x3, 'SAME', bias added) are the library's;
    ``cubed_times(y, A)`` is ``(y**3) @ A`` (TensorFlow has no 1-D ``@``).
    One expression for every adapter, so all libraries compute the same ops.
    """
    if kind == "mlp":
        return lambda t, y: tanh(y @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]
    if kind == "spiral":
        return lambda t, y: cubed_times(y, p["A"])
    return lambda t, y: conv(tanh(conv(y, p["K1"], p["b1"])), p["K2"], p["b2"])


def mlp_f(h, p):
    """MLP field ``tanh(h @ W1 + b1) @ W2 + b2`` for ``h`` of shape (B, d)."""
    return np.tanh(h @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]


def mlp_vjp(h, a, p):
    """``(a @ df/dh, {name: a . df/dparam})`` for the MLP field."""
    s = np.tanh(h @ p["W1"] + p["b1"])
    g_u = (a @ p["W2"].T) * (1.0 - s * s)  # cotangent of the pre-activation
    return g_u @ p["W1"].T, {"W1": h.T @ g_u, "b1": g_u.sum(0), "W2": s.T @ a, "b2": a.sum(0)}


def spiral_f(y, p):
    """Spiral field ``(y**3) @ A`` for ``y`` of shape (2,)."""
    return (y ** 3) @ p["A"]


def spiral_vjp(y, a, p):
    """``(a @ df/dy, {"A": a . df/dA})`` for the spiral field."""
    return 3.0 * y * y * (a @ p["A"].T), {"A": np.outer(y ** 3, a)}


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """One benchmark ODE with its data (arrays float64, read-only).

    ``kind`` (``"mlp"`` for every MLP variant, ``"spiral"``, ``"conv"``) is
    what ``field`` dispatches on; ``params`` is ordered (the adapters' gradient
    lists follow it); ``loss_over_all_times``
    picks ``sum(ys**2)`` over every output time instead of ``sum(ys[-1]**2)``.
    """

    name: str
    kind: str
    y0: np.ndarray
    params: Dict[str, np.ndarray]
    default_T: float
    loss_over_all_times: bool
    num_times: int
    f: Optional[Callable] = dataclasses.field(repr=False)
    vjp: Optional[Callable] = dataclasses.field(repr=False)

    def y0_as(self, dtype) -> np.ndarray:
        """A fresh, writable copy of ``y0`` in ``dtype``."""
        return np.array(self.y0, dtype=as_dtype(dtype))

    def params_as(self, dtype) -> Dict[str, np.ndarray]:
        """Fresh, writable copies of the parameters in ``dtype`` (same order)."""
        return {k: np.array(v, dtype=as_dtype(dtype)) for k, v in self.params.items()}

    def times(self, T=None, dtype="float64") -> np.ndarray:
        """Output times: ``linspace(0, T, num_times)`` (``[0, T]`` but for the spiral)."""
        T = self.default_T if T is None else float(T)
        return np.linspace(0.0, T, self.num_times).astype(as_dtype(dtype))

    def loss_grad_at_outputs(self, ys) -> np.ndarray:
        """``dL/dys`` (same shape as ``ys``): ``2 y`` where the loss reads ``y``."""
        ys = np.asarray(ys, dtype=np.float64)
        g = np.zeros_like(ys)
        if self.loss_over_all_times:
            g[:] = 2.0 * ys
        else:
            g[-1] = 2.0 * ys[-1]
        return g


def _frozen(a):
    a = np.ascontiguousarray(a, dtype=np.float64)
    a.setflags(write=False)
    return a


def _make_mlp(name, seed, batch, dim, hidden, scale):
    rng = np.random.default_rng(seed)
    # Drawn in a fixed order so that "mlp" and "mlp_contractive" share draws.
    z_w1, z_b1 = rng.standard_normal((dim, hidden)), rng.standard_normal((hidden,))
    z_w2, z_b2 = rng.standard_normal((hidden, dim)), rng.standard_normal((dim,))
    h0 = rng.standard_normal((batch, dim))
    params = {"W1": z_w1 * scale / np.sqrt(dim), "b1": z_b1 * scale / np.sqrt(dim),
              "W2": z_w2 * scale / np.sqrt(hidden), "b2": z_b2 * scale / np.sqrt(hidden)}
    return Problem(name, "mlp", _frozen(h0), {k: _frozen(v) for k, v in params.items()},
                   1.0, False, 2, mlp_f, mlp_vjp)


def _make_conv():
    rng = np.random.default_rng(_SEED_CONV)
    c, root = 32, np.sqrt(9 * 32)
    params = {"K1": rng.standard_normal((3, 3, c, c)) / root, "b1": rng.standard_normal((c,)) / root,
              "K2": rng.standard_normal((3, 3, c, c)) / root, "b2": rng.standard_normal((c,)) / root}
    h0 = rng.standard_normal((128, 8, 8, c))
    return Problem("conv", "conv", _frozen(h0), {k: _frozen(v) for k, v in params.items()},
                   1.0, False, 2, None, None)


@functools.lru_cache(maxsize=None)
def get_problem(name: str) -> Problem:
    """The (cached, immutable) problem called ``name``, one of ``PROBLEM_NAMES``."""
    if name == "mlp":
        return _make_mlp("mlp", _SEED_MLP, 256, 16, 64, 1.0)
    if name == "mlp_contractive":
        return _make_mlp("mlp_contractive", _SEED_MLP, 256, 16, 64, 6.0)
    if name == "mlp_large":
        return _make_mlp("mlp_large", _SEED_MLP_LARGE, 1024, 64, 256, 1.0)
    if name == "spiral":
        A = _frozen(np.array([[-0.1, 2.0], [-2.0, -0.1]]))
        return Problem("spiral", "spiral", _frozen(np.array([2.0, 0.0])), {"A": A},
                       25.0, True, 1000, spiral_f, spiral_vjp)
    if name == "conv":
        return _make_conv()
    raise ValueError(f"unknown problem {name!r}; valid: {', '.join(PROBLEM_NAMES)}")
