"""Benchmark problem definitions shared by every library in the comparison.

Each problem is an autonomous ODE ``dy/dt = f(y; params)`` with

* an initial state ``y0`` and parameters ``params`` drawn ONCE from a fixed
  numpy seed (stored as float64; :meth:`Problem.y0_as` /
  :meth:`Problem.params_as` give float32/float64 copies),
* output times ``problem.times(T)`` (first value 0),
* a scalar loss of the solution, used for every gradient benchmark,
* a float64 numpy implementation of ``f`` and of its vector-Jacobian product
  (``vjp``), which the scipy reference solutions in ``peers.py`` use.

Every library adapter (torchdiffeq, TFP, diffrax, keras_node) must implement
the same ``f`` with the same conventions, listed per problem below, so that
outputs and gradients can be compared to each other and to the reference.

Problems
--------
``"mlp"``
    ``f(h) = tanh(h @ W1 + b1) @ W2 + b2`` (row-vector form of
    ``W2 tanh(W1 h + b1) + b2``); state ``(256, 16)``, hidden width 64.
    ``W1: (16, 64)``, ``b1: (64,)``, ``W2: (64, 16)``, ``b2: (16,)``, all
    entries ``N(0, 1) / sqrt(fan_in)`` (fan_in 16 for ``W1, b1``, 64 for
    ``W2, b2``); ``h0 ~ N(0, 1)``. Loss ``sum(h(T)**2)``. Default ``T = 1``.
``"mlp_contractive"``
    The same standard-normal draws as ``"mlp"`` scaled by
    ``6 / sqrt(fan_in)`` instead of ``1 / sqrt(fan_in)``; same ``h0``.
    Used for long-horizon adjoint-accuracy tests.
``"mlp_large"``
    As ``"mlp"`` with state ``(1024, 64)`` and hidden width 256.
``"spiral"``
    ``f(y) = (y**3) @ A`` with ``A = [[-0.1, 2.0], [-2.0, -0.1]]``,
    ``y0 = [2, 0]`` (shape ``(2,)``), outputs at ``linspace(0, T, 1000)``,
    default ``T = 25``. Its only parameter is ``A``. Loss
    ``sum(ys**2)`` over ALL output times (including ``t = 0``), the usual
    trajectory-fitting setup.
``"conv"``
    The ODE-Net block ``f(h) = conv3x3(tanh(conv3x3(h, K1) + b1), K2) + b2``
    on NHWC states ``(128, 8, 8, 32)``; 32 hidden channels, 'SAME' zero
    padding, stride 1, cross-correlation (the convention of
    ``tf.nn.conv2d``, ``torch.nn.functional.conv2d`` and
    ``jax.lax.conv_general_dilated``). Kernels are HWIO ``(3, 3, 32, 32)``;
    entries ``N(0, 1) / sqrt(9 * 32)``, biases ``(32,)`` likewise;
    ``h0 ~ N(0, 1)``. Loss ``sum(h(T)**2)``. Default ``T = 1``.

Typical use::

    from benchmarks.problems import get_problem
    p = get_problem("mlp")
    y0 = p.y0_as("float32"); params = p.params_as("float32")
    ts = p.times(1.0)            # array([0., 1.])
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Dict, Mapping, Tuple

import numpy as np

__all__ = [
    "PROBLEM_NAMES",
    "Problem",
    "get_problem",
    "as_dtype",
    "mlp_f",
    "mlp_vjp",
    "spiral_f",
    "spiral_vjp",
    "conv3x3_same",
    "conv_f",
    "conv_vjp",
]

PROBLEM_NAMES = ("mlp", "mlp_contractive", "mlp_large", "spiral", "conv")

# One seed per problem family; changing these changes every benchmark number.
_SEED_MLP = 20240601
_SEED_MLP_LARGE = 20240602
_SEED_CONV = 20240603

SPIRAL_A = np.array([[-0.1, 2.0], [-2.0, -0.1]], dtype=np.float64)
SPIRAL_Y0 = np.array([2.0, 0.0], dtype=np.float64)
SPIRAL_NUM_TIMES = 1000


def as_dtype(dtype) -> np.dtype:
    """Return ``np.dtype`` for ``"float32"``/``"float64"``/numpy/TF/torch names.

    Only float32 and float64 are accepted (the benchmarks use nothing else).
    """
    name = getattr(dtype, "name", None) or str(dtype)
    name = name.replace("torch.", "")
    dt = np.dtype(name)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


# ---------------------------------------------------------------------------
# float64 numpy vector fields and vector-Jacobian products (for the reference)
# ---------------------------------------------------------------------------

def mlp_f(h: np.ndarray, p: Mapping[str, np.ndarray]) -> np.ndarray:
    """MLP field ``tanh(h @ W1 + b1) @ W2 + b2`` for ``h`` of shape (B, d)."""
    return np.tanh(h @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]


def mlp_vjp(h: np.ndarray, a: np.ndarray, p: Mapping[str, np.ndarray]
            ) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Return ``(a @ df/dh, {name: a . df/dparam})`` for the MLP field."""
    s = np.tanh(h @ p["W1"] + p["b1"])
    g_u = (a @ p["W2"].T) * (1.0 - s * s)      # cotangent of the pre-activation
    grads = {"W1": h.T @ g_u, "b1": g_u.sum(0),
             "W2": s.T @ a, "b2": a.sum(0)}
    return g_u @ p["W1"].T, grads


def spiral_f(y: np.ndarray, p: Mapping[str, np.ndarray]) -> np.ndarray:
    """Spiral field ``(y**3) @ A`` for ``y`` of shape (2,)."""
    return (y ** 3) @ p["A"]


def spiral_vjp(y: np.ndarray, a: np.ndarray, p: Mapping[str, np.ndarray]
               ) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Return ``(a @ df/dy, {"A": a . df/dA})`` for the spiral field."""
    return 3.0 * y * y * (a @ p["A"].T), {"A": np.outer(y ** 3, a)}


def conv3x3_same(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """NHWC 3x3 'SAME' cross-correlation of ``x`` with HWIO kernel ``k``."""
    n, hgt, wid, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, hgt, wid, k.shape[3]), dtype=np.result_type(x, k))
    for di in range(3):
        for dj in range(3):
            out += xp[:, di:di + hgt, dj:dj + wid, :] @ k[di, dj]
    return out


def _conv3x3_same_vjp(x: np.ndarray, k: np.ndarray, g: np.ndarray
                      ) -> Tuple[np.ndarray, np.ndarray]:
    """Cotangents ``(dx, dk)`` of :func:`conv3x3_same` for output cotangent g."""
    n, hgt, wid, cin = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    dxp = np.zeros_like(xp)
    dk = np.zeros_like(k)
    g2 = g.reshape(-1, g.shape[-1])
    for di in range(3):
        for dj in range(3):
            win = xp[:, di:di + hgt, dj:dj + wid, :]
            dxp[:, di:di + hgt, dj:dj + wid, :] += g @ k[di, dj].T
            dk[di, dj] = win.reshape(-1, cin).T @ g2
    return dxp[:, 1:-1, 1:-1, :], dk


def conv_f(h: np.ndarray, p: Mapping[str, np.ndarray]) -> np.ndarray:
    """ODE-Net conv block ``conv(tanh(conv(h, K1) + b1), K2) + b2`` (NHWC)."""
    s = np.tanh(conv3x3_same(h, p["K1"]) + p["b1"])
    return conv3x3_same(s, p["K2"]) + p["b2"]


def conv_vjp(h: np.ndarray, a: np.ndarray, p: Mapping[str, np.ndarray]
             ) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Return ``(a @ df/dh, {name: a . df/dparam})`` for the conv block."""
    s = np.tanh(conv3x3_same(h, p["K1"]) + p["b1"])
    ds, dk2 = _conv3x3_same_vjp(s, p["K2"], a)
    g_u = ds * (1.0 - s * s)
    dh, dk1 = _conv3x3_same_vjp(h, p["K1"], g_u)
    grads = {"K1": dk1, "b1": g_u.sum((0, 1, 2)),
             "K2": dk2, "b2": a.sum((0, 1, 2))}
    return dh, grads


# ---------------------------------------------------------------------------
# Problem container
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """One benchmark ODE with its data (all arrays float64, read-only).

    Attributes:
      name: problem name (one of ``PROBLEM_NAMES``).
      kind: ``"mlp"`` (also for the mlp variants), ``"spiral"`` or ``"conv"``;
        adapters dispatch on this to build the vector field.
      y0: initial state, float64.
      params: ordered mapping parameter name -> float64 array (the order is
        the one adapters should use for positional parameter lists).
      default_T: the horizon used when a caller has no reason to pick one.
      loss_over_all_times: if True the loss is ``sum(ys**2)`` over every output
        time, else ``sum(ys[-1]**2)``.
      num_times: number of output times of :meth:`times`.
      f: float64 numpy vector field ``f(y, params)``.
      vjp: float64 numpy VJP ``vjp(y, a, params) -> (a_y, {name: a_param})``.
    """

    name: str
    kind: str
    y0: np.ndarray
    params: Dict[str, np.ndarray]
    default_T: float
    loss_over_all_times: bool
    num_times: int
    f: Callable = dataclasses.field(repr=False)
    vjp: Callable = dataclasses.field(repr=False)
    description: str = ""

    # -- data in a given precision ------------------------------------------
    def y0_as(self, dtype) -> np.ndarray:
        """A fresh, writable copy of ``y0`` in ``dtype`` (float32/float64)."""
        return np.array(self.y0, dtype=as_dtype(dtype))

    def params_as(self, dtype) -> Dict[str, np.ndarray]:
        """Fresh, writable copies of the parameters in ``dtype`` (same order)."""
        dt = as_dtype(dtype)
        return {k: np.array(v, dtype=dt) for k, v in self.params.items()}

    # -- time grid and loss ---------------------------------------------------
    def times(self, T: float | None = None, dtype="float64") -> np.ndarray:
        """Output times: ``[0, T]``, or ``linspace(0, T, 1000)`` for spiral."""
        T = self.default_T if T is None else float(T)
        if T <= 0:
            raise ValueError(f"T must be positive, got {T}")
        return np.linspace(0.0, T, self.num_times).astype(as_dtype(dtype))

    def loss(self, ys: np.ndarray) -> float:
        """The benchmark loss of a solution ``ys`` (leading axis = time)."""
        ys = np.asarray(ys, dtype=np.float64)
        if self.loss_over_all_times:
            return float(np.sum(ys ** 2))
        return float(np.sum(ys[-1] ** 2))

    def loss_grad_at_outputs(self, ys: np.ndarray) -> np.ndarray:
        """``dL/dys`` (same shape as ``ys``): ``2 y`` where the loss reads y."""
        ys = np.asarray(ys, dtype=np.float64)
        g = np.zeros_like(ys)
        if self.loss_over_all_times:
            g[:] = 2.0 * ys
        else:
            g[-1] = 2.0 * ys[-1]
        return g

    @property
    def state_size(self) -> int:
        """Number of scalar state components."""
        return int(self.y0.size)

    @property
    def num_params(self) -> int:
        """Number of scalar parameters."""
        return int(sum(v.size for v in self.params.values()))


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float64)
    a.setflags(write=False)
    return a


def _make_mlp(name: str, seed: int, batch: int, dim: int, hidden: int,
              scale: float) -> Problem:
    rng = np.random.default_rng(seed)
    # Draw in a fixed order so that "mlp" and "mlp_contractive" share draws.
    z_w1 = rng.standard_normal((dim, hidden))
    z_b1 = rng.standard_normal((hidden,))
    z_w2 = rng.standard_normal((hidden, dim))
    z_b2 = rng.standard_normal((dim,))
    h0 = rng.standard_normal((batch, dim))
    params = {
        "W1": _frozen(z_w1 * scale / np.sqrt(dim)),
        "b1": _frozen(z_b1 * scale / np.sqrt(dim)),
        "W2": _frozen(z_w2 * scale / np.sqrt(hidden)),
        "b2": _frozen(z_b2 * scale / np.sqrt(hidden)),
    }
    return Problem(
        name=name, kind="mlp", y0=_frozen(h0), params=params, default_T=1.0,
        loss_over_all_times=False, num_times=2, f=mlp_f, vjp=mlp_vjp,
        description=(f"MLP field, state ({batch}, {dim}), hidden {hidden}, "
                     f"weights N(0,1)*{scale:g}/sqrt(fan_in)"))


def _make_spiral() -> Problem:
    return Problem(
        name="spiral", kind="spiral", y0=_frozen(SPIRAL_Y0),
        params={"A": _frozen(SPIRAL_A)}, default_T=25.0,
        loss_over_all_times=True, num_times=SPIRAL_NUM_TIMES,
        f=spiral_f, vjp=spiral_vjp,
        description="dy/dt = (y**3) @ A, y0 = [2, 0], 1000 output times")


def _make_conv() -> Problem:
    rng = np.random.default_rng(_SEED_CONV)
    c = 32
    fan_in = 9 * c
    params = {
        "K1": _frozen(rng.standard_normal((3, 3, c, c)) / np.sqrt(fan_in)),
        "b1": _frozen(rng.standard_normal((c,)) / np.sqrt(fan_in)),
        "K2": _frozen(rng.standard_normal((3, 3, c, c)) / np.sqrt(fan_in)),
        "b2": _frozen(rng.standard_normal((c,)) / np.sqrt(fan_in)),
    }
    h0 = rng.standard_normal((128, 8, 8, c))
    return Problem(
        name="conv", kind="conv", y0=_frozen(h0), params=params, default_T=1.0,
        loss_over_all_times=False, num_times=2, f=conv_f, vjp=conv_vjp,
        description="ODE-Net conv block, NHWC (128, 8, 8, 32), 3x3 SAME")


@functools.lru_cache(maxsize=None)
def get_problem(name: str) -> Problem:
    """Return the (cached, immutable) problem called ``name``.

    Args:
      name: one of ``PROBLEM_NAMES``.

    Raises:
      ValueError: unknown name.
    """
    if name == "mlp":
        return _make_mlp("mlp", _SEED_MLP, 256, 16, 64, 1.0)
    if name == "mlp_contractive":
        return _make_mlp("mlp_contractive", _SEED_MLP, 256, 16, 64, 6.0)
    if name == "mlp_large":
        return _make_mlp("mlp_large", _SEED_MLP_LARGE, 1024, 64, 256, 1.0)
    if name == "spiral":
        return _make_spiral()
    if name == "conv":
        return _make_conv()
    raise ValueError(f"unknown problem {name!r}; valid: {', '.join(PROBLEM_NAMES)}")
