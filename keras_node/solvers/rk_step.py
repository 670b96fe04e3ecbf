"""One step of any method: the explicit Runge-Kutta step for a
`ButcherTableau`, handed over to `rosenbrock.py` for a `RosenbrockTableau`.

This is the one place a step dispatches on the kind of method, so every
loop (joint, per sample, events, the adjoint's backward solve) runs every
method without knowing which kind it is.
"""

from keras_node import _nest
from keras_node.solvers.rosenbrock import rosenbrock_step
from keras_node.solvers.rosenbrock_tableau import RosenbrockTableau


def rk_step(func, t0, y0, f0, dt, tableau):
    """Advance `y0` at `t0` by `dt` with `tableau`.

    Args:
        func: `func(t, y) -> dy/dt` on tuples of leaves.
        t0: scalar time tensor.
        y0: tuple of state leaves at `t0`.
        f0: `func(t0, y0)`, already evaluated (FSAL or the previous step).
        dt: scalar step size (positive; time runs forward inside the solver).
        tableau: the `ButcherTableau` (or `RosenbrockTableau`) to apply.

    Returns:
        `(y1, f1, y_error, k)`: the propagated state at `t0 + dt`, its
        derivative `func(t0 + dt, y1)`, the local error estimate (`None` for
        fixed-step tableaus) and the list of stage derivatives `k` (tuples of
        leaves), which dense output needs. The step costs
        `tableau.new_evaluations_per_step` evaluations of `func`.
    """
    if isinstance(tableau, RosenbrockTableau):
        return rosenbrock_step(func, t0, y0, f0, dt, tableau)
    k = [tuple(f0)]
    y_stage = tuple(y0)
    for i in range(1, tableau.num_stages):
        y_stage = _nest.axpy_sum(y0, dt, tableau.a[i], k)
        k.append(tuple(func(t0 + tableau.c[i] * dt, y_stage)))
    t1 = t0 + dt
    if tableau.fsal:
        # The last stage was evaluated on y1 itself: y1 and f1 come for free.
        y1, f1 = y_stage, k[-1]
    else:
        y1 = _nest.axpy_sum(y0, dt, tableau.b, k)
        f1 = tuple(func(t1, y1))
    y_error = None
    if tableau.adaptive:
        y_error = _nest.weighted_sum(dt, tableau.b_error, k)
    return y1, f1, y_error, k
