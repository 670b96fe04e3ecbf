"""Method names -> tableaus: the one place a method name is resolved.

A tableau is a `ButcherTableau` (explicit Runge-Kutta) or a
`RosenbrockTableau` (linearly implicit, for stiff problems); `rk_step`
dispatches on the kind.
"""

from keras_node.solvers.dopri8 import DOPRI8
from keras_node.solvers.rosenbrock_tableau import RODAS4, RosenbrockTableau
from keras_node.solvers.methods import (
    BOSH3,
    DOPRI5,
    EULER,
    HEUN_EULER,
    MIDPOINT,
    RK4,
    TSIT5,
)

_TABLEAUS = {
    tableau.name: tableau
    for tableau in (DOPRI5, TSIT5, BOSH3, HEUN_EULER, DOPRI8, RODAS4, EULER, MIDPOINT, RK4)
}

METHODS = tuple(_TABLEAUS)
"""Names of every available method; adaptive ones first, `"dopri5"` default."""

ADAPTIVE_METHODS = tuple(name for name, tab in _TABLEAUS.items() if tab.adaptive)
FIXED_STEP_METHODS = tuple(name for name, tab in _TABLEAUS.items() if not tab.adaptive)
STIFF_METHODS = tuple(name for name, tab in _TABLEAUS.items() if isinstance(tab, RosenbrockTableau))


def unknown_method_message(method, argument_name="method"):
    """The one message for a method name that is not in `METHODS`."""
    return (
        f"Unknown ODE solver {argument_name}. Expected one of "
        f"{', '.join(repr(m) for m in METHODS)} "
        f"(adaptive: {', '.join(ADAPTIVE_METHODS)}; fixed-step: "
        f"{', '.join(FIXED_STEP_METHODS)}; for stiff problems: {', '.join(STIFF_METHODS)}). "
        f"Received: {argument_name}={method!r}"
    )


def get_tableau(method, argument_name="method"):
    """Return the tableau (`ButcherTableau` or `RosenbrockTableau`) named `method`, or raise a ValueError
    (TypeError for a non-string) listing the valid names."""
    if not isinstance(method, str):
        raise TypeError(unknown_method_message(method, argument_name))
    if method not in _TABLEAUS:
        raise ValueError(unknown_method_message(method, argument_name))
    return _TABLEAUS[method]
