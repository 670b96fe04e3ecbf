"""Tableau data: consistency, derived flags, and classical order conditions."""

import itertools
import math

import pytest

from keras_node.solvers import registry
from keras_node.solvers.tableau import ButcherTableau

# The explicit Runge-Kutta tableaus; rodas4's (a RosenbrockTableau) has its
# own order conditions, in test_rodas.py.
ALL = [registry.get_tableau(name) for name in registry.METHODS
       if name not in registry.STIFF_METHODS]


def _stage_matrix(tab):
    return [list(row) + [0.0] * (tab.num_stages - len(row)) for row in tab.a]


def _order_conditions(tab, weights):
    """Residuals of the rooted-tree order conditions up to order 4 (8 trees)."""
    c, a, b, s = tab.c, _stage_matrix(tab), weights, tab.num_stages
    ac = [sum(a[i][j] * c[j] for j in range(s)) for i in range(s)]
    ac2 = [sum(a[i][j] * c[j] ** 2 for j in range(s)) for i in range(s)]
    aac = [sum(a[i][j] * ac[j] for j in range(s)) for i in range(s)]
    dot = lambda u, v: math.fsum(x * y for x, y in zip(u, v))  # noqa: E731
    return {
        1: [dot(b, [1] * s) - 1],
        2: [dot(b, c) - 1 / 2],
        3: [dot(b, [x * x for x in c]) - 1 / 3, dot(b, ac) - 1 / 6],
        4: [dot(b, [x ** 3 for x in c]) - 1 / 4, dot(b, [x * y for x, y in zip(c, ac)]) - 1 / 8,
            dot(b, ac2) - 1 / 12, dot(b, aac) - 1 / 24],
    }


@pytest.mark.parametrize("tab", ALL, ids=lambda t: t.name)
def test_propagated_weights_satisfy_order_conditions(tab):
    residuals = _order_conditions(tab, tab.b)
    for order in range(1, min(tab.order, 4) + 1):
        for r in residuals[order]:
            assert abs(r) < 1e-12, (tab.name, order, r)


@pytest.mark.parametrize("tab", [t for t in ALL if t.order < 4], ids=lambda t: t.name)
def test_declared_order_is_exact_below_four(tab):
    # A method claiming order p < 4 must *fail* some order-(p+1) condition,
    # otherwise the declared order (used by step control) is understated.
    residuals = _order_conditions(tab, tab.b)[tab.order + 1]
    assert max(abs(r) for r in residuals) > 1e-6


@pytest.mark.parametrize("tab", [t for t in ALL if t.adaptive], ids=lambda t: t.name)
def test_embedded_solution_has_lower_order(tab):
    b_hat = [x - e for x, e in zip(tab.b, tab.b_error)]
    residuals = _order_conditions(tab, b_hat)
    for order in range(1, min(tab.order - 1, 4) + 1):
        for r in residuals[order]:
            assert abs(r) < 1e-12, (tab.name, order, r)


@pytest.mark.parametrize(
    "name, fsal, adaptive, stages",
    [("dopri5", True, True, 7), ("tsit5", True, True, 7), ("bosh3", True, True, 4),
     ("heun_euler", False, True, 2), ("dopri8", True, True, 14), ("euler", False, False, 1),
     ("midpoint", False, False, 2), ("rk4", False, False, 4)],
)
def test_derived_fields(name, fsal, adaptive, stages):
    tab = registry.get_tableau(name)
    assert (tab.fsal, tab.adaptive, tab.num_stages) == (fsal, adaptive, stages)


def test_inconsistent_tableau_is_rejected():
    with pytest.raises(AssertionError, match="sum"):
        ButcherTableau(name="bad", order=2, c=(0.0, 0.5), a=((), (0.4,)), b=(0.0, 1.0))


def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError) as info:
        registry.get_tableau("rk45")
    message = str(info.value)
    for name in registry.METHODS:
        assert repr(name) in message
    assert "rk45" in message


def test_registry_names_are_unique_and_default_first():
    assert registry.METHODS[0] == "dopri5"
    assert len(set(registry.METHODS)) == len(registry.METHODS) == 9
    assert set(itertools.chain(registry.ADAPTIVE_METHODS, registry.FIXED_STEP_METHODS)) == set(registry.METHODS)
