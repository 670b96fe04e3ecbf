"""Butcher tableaus as immutable, validated data.

One generic stepper (`rk_step.py`) runs every method; a method is nothing but
the numbers below. Conventions, written once:

- `c[i]`: stage times as fractions of the step, `c[0] == 0`.
- `a[i]`: row `i` of the strictly lower-triangular matrix, `len(a[i]) == i`
  (stage 0 has the empty row), so stage i evaluates
  `f(t0 + c[i] dt, y0 + dt * sum_j a[i][j] k[j])`.
- `b`: weights of the propagated solution `y1 = y0 + dt * sum_j b[j] k[j]`.
- `b_error`: `b - b_hat` (propagated minus embedded weights), so the local
  error estimate is `y_error = dt * sum_j b_error[j] k[j]`. The sign does not
  matter to the norm; the convention matters only to whoever reads the data.
- `c_mid`: weights giving `y(t0 + dt/2) ~ y0 + dt * sum_j c_mid[j] k[j]`,
  which the dense-output quartic passes through (`interpolation.py`).
- `order`: order of the propagated solution; adaptive step control uses the
  exponent `1 / order` (see `step_control.py` for why).

Coefficients are Python floats so the hot path never touches numpy; the
stepper multiplies them into tensors of the state's dtype.
"""

import dataclasses
import math
from typing import Optional, Tuple

_CHECK_TOL = 1e-10


def _close(x, y):
    return math.isclose(x, y, rel_tol=_CHECK_TOL, abs_tol=_CHECK_TOL)


@dataclasses.dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta method, checked for consistency on creation.

    Args:
        name: registry name, e.g. `"dopri5"`.
        order: order of the propagated solution `b`.
        c: stage times (fractions of the step), starting with 0.
        a: lower-triangular rows; `a[i]` has `i` entries.
        b: solution weights; they sum to 1.
        b_error: `b - b_hat` for adaptive methods (sums to 0), else `None`.
        c_mid: midpoint weights for quartic dense output (sum to 1/2), or
            `None` to fall back to cubic Hermite interpolation.

    Derived fields: `num_stages`, `adaptive` (has `b_error`) and `fsal`
    (first same as last: the last stage is evaluated at `t0 + dt` on the
    propagated solution itself, so it equals `f(t1, y1)` and is reused as the
    next step's first stage).
    """

    name: str
    order: int
    c: Tuple[float, ...]
    a: Tuple[Tuple[float, ...], ...]
    b: Tuple[float, ...]
    b_error: Optional[Tuple[float, ...]] = None
    c_mid: Optional[Tuple[float, ...]] = None
    num_stages: int = dataclasses.field(init=False)
    adaptive: bool = dataclasses.field(init=False)
    fsal: bool = dataclasses.field(init=False)

    def __post_init__(self):
        num_stages = len(self.c)
        # Validation of fixed data (our own tableaus): asserts are fitting,
        # these are internal invariants, not user input.
        assert len(self.a) == num_stages, f"{self.name}: len(a) != len(c)"
        assert len(self.b) == num_stages, f"{self.name}: len(b) != len(c)"
        assert self.c[0] == 0.0, f"{self.name}: c[0] must be 0"
        for i, row in enumerate(self.a):
            assert len(row) == i, f"{self.name}: row {i} has {len(row)} entries"
            if i:
                assert _close(math.fsum(row), self.c[i]), (
                    f"{self.name}: sum(a[{i}]) = {math.fsum(row)} != c[{i}] = {self.c[i]}"
                )
        assert _close(math.fsum(self.b), 1.0), f"{self.name}: sum(b) != 1"
        if self.b_error is not None:
            assert len(self.b_error) == num_stages
            assert _close(math.fsum(self.b_error), 0.0), f"{self.name}: sum(b_error) != 0"
        if self.c_mid is not None:
            assert len(self.c_mid) == num_stages
            assert _close(math.fsum(self.c_mid), 0.5), f"{self.name}: sum(c_mid) != 1/2"
        last_row_is_b = num_stages > 1 and all(
            _close(x, y) for x, y in zip(self.a[-1], self.b[:-1])
        )
        fsal = last_row_is_b and self.c[-1] == 1.0 and self.b[-1] == 0.0
        object.__setattr__(self, "num_stages", num_stages)
        object.__setattr__(self, "adaptive", self.b_error is not None)
        object.__setattr__(self, "fsal", fsal)

    @property
    def new_evaluations_per_step(self):
        """Function evaluations one step costs, given f(t0, y0) from before.

        FSAL methods get f(t1, y1) from their last stage; the others evaluate
        it once more so that every step starts with the derivative in hand.
        """
        return self.num_stages - 1 if self.fsal else self.num_stages
