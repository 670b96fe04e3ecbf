"""Rosenbrock methods as immutable, validated data (the stiff counterpart of
`tableau.ButcherTableau`); `rosenbrock.py` runs them.

Form (Hairer & Wanner II, eq. IV.7.4', the form `rodas.f` uses): with
`J = df/dy(t0, y0)`, `f_t = df/dt(t0, y0)` and step `h`, stage `i` solves

    (I / (gamma h) - J) U_i = f(t0 + c_i h, y0 + sum_j a[i][j] U_j)
                              + sum_j coupling[i][j] U_j / h + d_i h f_t,

then `y1 = y0 + sum_j b_j U_j` and `y_error = sum_j b_error_j U_j`.
The letters map onto Hairer's as `c = alpha_i`, `a = a_ij`, `coupling =
c_ij`, `d = gamma_i`, `b = m_i`, `b_error = m_i - m_hat_i`: `c`, `a`, `b`,
`b_error` keep the roles they have in a `ButcherTableau`. The increments
`U_i` are h-scaled, so the stage inputs carry no `h`.

The transformed coefficients hide the classical ones, which the order
conditions are written in: with `Gamma` lower triangular (`gamma` on the
diagonal), `Gamma^-1 = diag(1/gamma) - coupling`, the classical stage
weights are `alpha = a Gamma` and the classical solution weights `b Gamma`
(`classical()` computes them in plain Python). `__post_init__` checks that
those reproduce the declared stage times `c` (row sums of `alpha`) and
time-derivative weights `d` (row sums of `Gamma`), and that both solutions
are consistent (classical weights sum to 1).

Coefficients are Python floats, as for the explicit methods.
"""

import dataclasses
import math
from typing import Optional, Tuple

_CHECK_TOL = 1e-10


def _close(x, y):
    return math.isclose(x, y, rel_tol=_CHECK_TOL, abs_tol=_CHECK_TOL)


def _lower_inverse(matrix):
    """Inverse of a lower-triangular matrix (lists of floats) by forward substitution."""
    n = len(matrix)
    inverse = [[0.0] * n for _ in range(n)]
    for col in range(n):
        for row in range(col, n):
            known = math.fsum(matrix[row][k] * inverse[k][col] for k in range(col, row))
            inverse[row][col] = ((1.0 if row == col else 0.0) - known) / matrix[row][row]
    return inverse


def _square(rows, n):
    """Strictly lower-triangular rows padded to an n x n list of lists."""
    return [list(row) + [0.0] * (n - len(row)) for row in rows]


@dataclasses.dataclass(frozen=True)
class RosenbrockTableau:
    """A Rosenbrock method in Hairer's transformed form, checked on creation.

    Args:
        name: registry name, e.g. `"rodas4"`.
        order: order of the propagated solution (the embedded one is one less).
        gamma: the diagonal coefficient (the same for every stage).
        c: stage times (fractions of the step), starting with 0.
        d: weights of `h * df/dt` in each stage (Hairer's gamma_i).
        a: rows of the stage-input weights; `a[i]` has `i` entries.
        coupling: rows of the weights of earlier increments `U_j / h` in each
            stage's right-hand side (Hairer's c_ij); `coupling[i]` has `i`.
        b: weights of the increments in the propagated solution.
        b_error: `b - b_hat`, the weights of the local error estimate.
        jacobian_leaves: `None`: `f` may depend on every state leaf. An int
            `k`: `f` depends only on the first `k` leaves (the others' Jacobian
            columns are zero), which the step exploits (`rosenbrock.py`); the
            adjoint sets it for its augmented state.

    Derived fields: `num_stages`, `adaptive` (has `b_error`), `fsal` (always
    False: the step ends with a fresh `f(t1, y1)`). `c_mid` is `None`: dense
    output is the cubic Hermite of `interpolation.py`.
    """

    name: str
    order: int
    gamma: float
    c: Tuple[float, ...]
    d: Tuple[float, ...]
    a: Tuple[Tuple[float, ...], ...]
    coupling: Tuple[Tuple[float, ...], ...]
    b: Tuple[float, ...]
    b_error: Optional[Tuple[float, ...]] = None
    jacobian_leaves: Optional[int] = None
    num_stages: int = dataclasses.field(init=False)
    adaptive: bool = dataclasses.field(init=False)
    fsal: bool = dataclasses.field(init=False)
    c_mid = None

    def __post_init__(self):
        s = len(self.c)
        # Fixed data of our own: asserts check internal invariants.
        for field in ("d", "a", "coupling", "b"):
            assert len(getattr(self, field)) == s, f"{self.name}: len({field}) != len(c)"
        assert self.c[0] == 0.0, f"{self.name}: c[0] must be 0"
        for i in range(s):
            assert len(self.a[i]) == i and len(self.coupling[i]) == i, (
                f"{self.name}: row {i} of a or coupling has the wrong length")
        alpha, gamma_matrix, b_classical = self.classical()
        for i in range(s):
            assert _close(math.fsum(alpha[i]), self.c[i]), (
                f"{self.name}: sum(alpha[{i}]) = {math.fsum(alpha[i])} != c[{i}] = {self.c[i]}")
            assert _close(math.fsum(gamma_matrix[i]), self.d[i]), (
                f"{self.name}: sum(Gamma[{i}]) = {math.fsum(gamma_matrix[i])} != d[{i}] = {self.d[i]}")
        assert _close(math.fsum(b_classical), 1.0), f"{self.name}: classical sum(b) != 1"
        if self.b_error is not None:
            assert len(self.b_error) == s
            b_hat = [x - e for x, e in zip(self.b, self.b_error)]
            assert _close(math.fsum(self._times_gamma(b_hat, gamma_matrix)), 1.0), (
                f"{self.name}: classical sum(b_hat) != 1")
        object.__setattr__(self, "num_stages", s)
        object.__setattr__(self, "adaptive", self.b_error is not None)
        object.__setattr__(self, "fsal", False)

    @staticmethod
    def _times_gamma(row, gamma_matrix):
        n = len(gamma_matrix)
        return [math.fsum(row[k] * gamma_matrix[k][j] for k in range(n)) for j in range(n)]

    def classical(self):
        """`(alpha, Gamma, b)` of the classical form `k_i = h f(y0 + sum_j
        alpha_ij k_j) + h J sum_j Gamma_ij k_j`, `y1 = y0 + sum_j b_j k_j`,
        as lists (for validation and the order-condition tests)."""
        s = len(self.c)
        gamma_inverse = [[-x for x in row] for row in _square(self.coupling, s)]
        for i in range(s):
            gamma_inverse[i][i] = 1.0 / self.gamma
        gamma_matrix = _lower_inverse(gamma_inverse)
        alpha = [self._times_gamma(row, gamma_matrix) for row in _square(self.a, s)]
        return alpha, gamma_matrix, self._times_gamma(self.b, gamma_matrix)

    @property
    def new_evaluations_per_step(self):
        """Function evaluations one step costs, given f(t0, y0) from before:
        stages 2..s, `f(t1, y1)`, and the forward pass the Jacobian (and
        df/dt) is taken through."""
        return self.num_stages + 1


# Hairer & Wanner's RODAS4 (`rodas.f`, METH = 1): 6 stages, order 4(3),
# L-stable and stiffly accurate. Stages 5 and 6 sit at t0 + h: stage 6's
# input is the embedded (order 3) solution, and its increment U_6 is the
# error estimate, so y1 = (stage 6 input) + U_6.
_A5 = (1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950)

RODAS4 = RosenbrockTableau(
    name="rodas4",
    order=4,
    gamma=0.25,
    c=(0.0, 0.386, 0.21, 0.63, 1.0, 1.0),
    d=(0.25, -0.1043, 0.1035, -0.3620000000000023e-01, 0.0, 0.0),
    a=(
        (),
        (1.544,),
        (0.9466785280815826, 0.2557011698983284),
        (3.314825187068521, 2.896124015972201, 0.9986419139977817),
        _A5,
        _A5 + (1.0,),
    ),
    coupling=(
        (),
        (-5.6688,),
        (-2.430093356833875, -0.2063599157091915),
        (-0.1073529058151375, -9.594562251023355, -20.47028614809616),
        (7.496443313967647, -10.24680431464352, -33.99990352819905, 11.70890893206160),
        (8.083246795921522, -7.981132988064893, -31.52159432874371, 16.31930543123136,
         -6.058818238834054),
    ),
    b=_A5 + (1.0, 1.0),
    b_error=(0.0, 0.0, 0.0, 0.0, 0.0, 1.0),
)
"""RODAS4 (Hairer & Wanner 1996): 6 stages, order 4 with an embedded order-3
solution, L-stable, stiffly accurate; one Jacobian and six linear solves per
step, 7 evaluations of `f` (`new_evaluations_per_step`). Dense output: cubic
Hermite (order 3 between steps; rodas.f's own order-3 dense formula is not
used).

References:
    E. Hairer, G. Wanner, Solving Ordinary Differential Equations II, 2nd ed.,
    Springer 1996, Sec. IV.7 (Table 7.2 and `rodas.f`).
"""
