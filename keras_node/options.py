"""Solver options: built from the public keyword arguments and validated once.

`odeint`, `odeint_adjoint` and `ODELayer` all turn their keyword arguments
into these frozen objects first, and everything below them reads the
objects; no option travels as a loose parameter. Every check lives here, with
one error convention (API.md): a value of the wrong *type* raises TypeError
(a bool is not a number), a value of the right type but outside the allowed
range raises ValueError, and each message names the option, says what was
expected and ends with `Received: name=value`.

What cannot be checked without the state (a tolerance tensor's shape against
`y0`, say) is checked per call in `_inputs.py`.
"""

import dataclasses
import functools
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from keras_node._validate import (REGULARIZER_KEYS, both_zero, check_batch_axis, check_bool,
                                  check_choice, check_int, check_jit_compile, check_method, check_norm_leaves,
                                  check_positive_scalar, check_regularizers, check_times,
                                  check_tolerance)
from keras_node.solvers import registry

DEFAULT_CHECKPOINTS = 16
"""Default `adjoint_checkpoints`, chosen from benchmarks/checkpoints.py (see
benchmarks/RESULTS.md): on a contractive MLP field (float64, rtol 1e-5) the
plain backsolve adjoint's dL/dh0 error is 0.31 / 8.9 / 6e18 at T = 1 / 4 / 16;
with K = 16 it is 2.7e-3 / 3.8e-2 / 0.50, as good as direct backprop
(2.9e-3 / 6.8e-2 / 0.50), for no more backward evaluations than K = 0.
Short solves use fewer of them (`adjoint.checkpoints.STEPS_PER_ANCHOR`)."""

def _jsonable(value):
    """A config value: tensors and arrays become (nested) lists."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (tf.Tensor, tf.Variable, np.ndarray, np.generic)):
        return np.asarray(value).tolist()
    return value


_RUNTIME_FIELDS = {"rtol", "atol", "first_step", "step_size", "adjoint_rtol", "adjoint_atol",
                   "max_step", "step_times", "jump_times"}
_ADAPTIVE_ONLY = ("max_step", "step_times", "jump_times")


def _freeze(value):
    """A hashable stand-in for an option value (cache keys)."""
    if isinstance(value, dict):
        return tuple((k, _freeze(v)) for k, v in sorted(value.items(), key=lambda kv: str(kv[0])))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return ("tensor", id(value))
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tobytes())
    return value


_PLAIN = (str, int, float, bool, type(None))


def _plain(value):
    """True for values that are immutable Python scalars or tuples of them."""
    return isinstance(value, _PLAIN) or (isinstance(value, tuple) and all(map(_plain, value)))


@functools.lru_cache(maxsize=256)
def _built(cls, typed_items):
    return cls(**{name: value for name, _, value in typed_items})


class _Options:
    """Shared behaviour: validate fields on creation, config, cache key."""

    _CHECKS = {}

    @classmethod
    def of(cls, **kwargs):
        """The options for these keyword arguments, validated.

        Public functions call this on every call; validating costs tens of
        microseconds, a large share of a small solve, so options made of
        plain Python values (numbers, strings, None, tuples of them) are
        built once and shared (they are frozen). The key holds each value's
        type, so `True` is not taken for `1`. Anything else (tensors,
        arrays, lists) is validated afresh.
        """
        if not all(map(_plain, kwargs.values())):
            return cls(**kwargs)
        return _built(cls, tuple((name, type(value), value) for name, value in kwargs.items()))

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            object.__setattr__(self, field.name, self._CHECKS[field.name](value, field.name))
        self._check_together()

    def _check_together(self):
        pass

    def to_config(self):
        """The options as a JSON-serialisable dict of the public keyword arguments."""
        return {field.name: _jsonable(getattr(self, field.name)) for field in dataclasses.fields(self)}

    def key(self):
        """A hashable summary of what shapes the computation (compiled
        functions are cached per key). Tolerances and step lengths travel to
        the solver as tensors, so only whether they are given counts."""
        return (type(self).__name__,) + tuple(
            (getattr(self, f.name) is None) if f.name in _RUNTIME_FIELDS else _freeze(getattr(self, f.name))
            for f in dataclasses.fields(self)
        )


@dataclasses.dataclass(frozen=True, eq=False)
class SolverOptions(_Options):
    """How to solve: method, tolerances, step limits, XLA.

    Fields are the public keyword arguments of `keras_node.odeint` (see its
    docstring for their meaning); creating the object validates them.

    Example:

    >>> options = SolverOptions(method="rk4", step_size=0.1)
    >>> options.tableau.order
    4
    """

    method: str = "dopri5"
    rtol: Any = 1e-3
    atol: Any = 1e-6
    first_step: Optional[Any] = None
    step_size: Optional[Any] = None
    max_num_steps: int = 10_000
    jit_compile: Any = "auto"
    batch_axis: Optional[int] = None
    max_step: Optional[Any] = None
    step_times: Optional[Any] = None
    jump_times: Optional[Any] = None
    # Internal: the leaves in the error norm (None: all). The rest ride along
    # uncontrolled: quadrature states such as the regularisers' integrals
    # and a CNF's probe, which nothing in the state depends on.
    norm_leaves: Optional[tuple] = None

    _CHECKS = {
        "method": check_method,
        "rtol": check_tolerance,
        "atol": check_tolerance,
        "first_step": check_positive_scalar,
        "step_size": check_positive_scalar,
        "max_num_steps": lambda v, n: check_int(v, n, 1),
        "jit_compile": check_jit_compile,
        "batch_axis": check_batch_axis,
        "max_step": check_positive_scalar,
        "step_times": check_times,
        "jump_times": check_times,
        "norm_leaves": check_norm_leaves,
    }

    def _check_together(self):
        if both_zero(self.rtol, self.atol):
            raise ValueError("rtol and atol cannot both be zero: no step could pass the error "
                             "test. Received: rtol=0.0, atol=0.0")
        given = [name for name in _ADAPTIVE_ONLY if getattr(self, name) is not None]
        if given and not self.tableau.adaptive:
            raise ValueError(
                f"{given[0]} applies to adaptive methods; the fixed-step method {self.method!r} "
                f"lands on the times of t (add the times there). Received: {given[0]}="
                f"{getattr(self, given[0])!r} with method={self.method!r}")

    @property
    def tableau(self):
        """The `ButcherTableau` of `method`."""
        return registry.get_tableau(self.method)

    def to_config(self):
        config = super().to_config()
        del config["norm_leaves"]  # internal, set by the layer that adds quadrature states
        return config


@dataclasses.dataclass(frozen=True, eq=False)
class AdjointOptions(_Options):
    """How the adjoint's backward solve runs (see `keras_node.odeint_adjoint`).

    `adjoint_method`, `adjoint_rtol`, `adjoint_atol`: None means "as the
    forward solve". `nonfinite_gradients` is internal: `"nan"` turns a
    backward solve that became non-finite into NaN gradients instead of an
    error (`ODELayer` under float16, whose loss-scale optimizer expects
    overflowing gradients now and then).

    Example:

    >>> AdjointOptions(adjoint_checkpoints=0).adjoint_seminorm
    True
    """

    adjoint_method: Optional[str] = None
    adjoint_rtol: Optional[Any] = None
    adjoint_atol: Optional[Any] = None
    adjoint_seminorm: bool = True
    adjoint_checkpoints: int = DEFAULT_CHECKPOINTS
    nonfinite_gradients: str = "raise"

    _CHECKS = {
        "adjoint_method": lambda v, n: None if v is None else check_method(v, n),
        "adjoint_rtol": lambda v, n: None if v is None else check_tolerance(v, n),
        "adjoint_atol": lambda v, n: None if v is None else check_tolerance(v, n),
        "adjoint_seminorm": check_bool,
        "adjoint_checkpoints": lambda v, n: check_int(v, n, 0),
        "nonfinite_gradients": lambda v, n: check_choice(v, n, ("raise", "nan")),
    }

    def _check_together(self):
        if both_zero(self.adjoint_rtol, self.adjoint_atol):
            raise ValueError("adjoint_rtol and adjoint_atol cannot both be zero: no step could "
                             "pass the error test. Received: adjoint_rtol=0.0, adjoint_atol=0.0")

    def to_config(self):
        config = super().to_config()
        del config["nonfinite_gradients"]  # internal, derived from the layer's dtype policy
        return config

    def backward(self, forward):
        """The `SolverOptions` of the backward solve, given the forward ones."""
        method = forward.method if self.adjoint_method is None else self.adjoint_method
        if not registry.get_tableau(method).adaptive:
            # A fixed-step backward solve lands on the anchors; the forward's
            # step constraints do not apply to it.
            forward = dataclasses.replace(forward, max_step=None, step_times=None, jump_times=None)
        return dataclasses.replace(
            forward,
            method=method,
            rtol=forward.rtol if self.adjoint_rtol is None else self.adjoint_rtol,
            atol=forward.atol if self.adjoint_atol is None else self.adjoint_atol,
        )

    @property
    def same_as_forward(self):
        """Whether the backward solve uses the forward method and tolerances
        (then the forward's last step size is a good first backward step)."""
        return self.adjoint_method is None and self.adjoint_rtol is None and self.adjoint_atol is None



@dataclasses.dataclass(frozen=True, eq=False)
class ModelOptions(_Options):
    """What a layer adds around its solve: regularisers and augmentation.

    `regularizers`: None or `{"kinetic" | "jacobian_frobenius" | "taylor2":
    weight >= 0}` (weights as floats). `augment_dim`: zero channels
    appended on the last axis (Dupont et al. 2019). See `ODELayer`.

    Example:

    >>> ModelOptions(regularizers={"kinetic": 0.01}).terms
    ('kinetic',)
    """

    regularizers: Optional[dict] = None
    augment_dim: int = 0

    _CHECKS = {
        "regularizers": check_regularizers,
        "augment_dim": lambda v, n: check_int(v, n, 0),
    }

    @property
    def terms(self):
        """The regularisers with a positive weight, in a fixed order: those
        integrated (a zero weight computes nothing and changes nothing)."""
        weights = self.regularizers or {}
        return tuple(key for key in REGULARIZER_KEYS if weights.get(key, 0.0) > 0.0)
