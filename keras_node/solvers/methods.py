"""The Runge-Kutta methods keras_node ships, as data.

Each constant is a `ButcherTableau`; `registry.py` maps names to them. The
8th-order Dormand-Prince tableau is long and lives in `dopri8.py`.
"""

from keras_node.solvers.tableau import ButcherTableau

# Dormand & Prince 5(4), with Shampine's embedded 4th-order weights (the
# variant torchdiffeq and diffrax use, so step decisions match theirs).
_DOPRI5_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DOPRI5_B_HAT = (1951 / 21600, 0.0, 22642 / 50085, 451 / 720, -12231 / 42400, 649 / 6300, 1 / 60)

DOPRI5 = ButcherTableau(
    name="dopri5",
    order=5,
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        _DOPRI5_B[:6],
    ),
    b=_DOPRI5_B,
    b_error=tuple(x - y for x, y in zip(_DOPRI5_B, _DOPRI5_B_HAT)),
    # Shampine's midpoint weights for Dormand-Prince dense output.
    c_mid=(
        6025192743 / 30085553152 / 2,
        0.0,
        51252292925 / 65400821598 / 2,
        -2691868925 / 45128329728 / 2,
        187940372067 / 1594534317056 / 2,
        -1776094331 / 19743644256 / 2,
        11237099 / 235043384 / 2,
    ),
)
"""Dormand-Prince 5(4): 7 stages, FSAL, order 5, quartic dense output.

References:
    Dormand & Prince (1980), "A family of embedded Runge-Kutta formulae",
    J. Comp. Appl. Math. 6(1). Shampine (1986), "Some practical Runge-Kutta
    formulas", Math. Comp. 46(173).
"""

# Tsitouras 5(4). The propagated weights are the last row of `a` (FSAL); the
# embedded 4th-order weights are `_TSIT5_B_HAT`.
_TSIT5_B = (
    0.09646076681806522951816731316512876333711995238157997181903319145764851595,
    0.01,
    0.47988965041449957477524953229059651991304046219903324883326349442545420602,
    1.37900857410374189319227482185687277075646264309136052593494006739724569803,
    -3.29006951543608067990104758571136385011568329089493615853129679959481381105,
    2.32471052409977398241535591839876579610906023322296241194406004631446539105,
    0.0,
)
_TSIT5_B_HAT = (
    0.09468075576583945807478876255758922856117527357724631226139574065785592789,
    0.00918356554034325309677636393664531375981374624098409523890593953292295525,
    0.48777052842476157078556425996312282415166919597613637743652162403040716516,
    1.23429756693047898565510967388423765403553993074819284831542583350048487838,
    -2.70771234998352545488110997505932167068960516693819737876399225571444440715,
    1.86662841817058703575371939956621149866625550524412259399659160284125832897,
    1 / 66,
)


def _tsit5_continuous_weights(x):
    """Tsitouras' continuous-extension weights b_i(x), x in [0, 1]."""
    return (
        -1.0530884977290216 * x * (x - 1.329989018975412) * (x * x - 1.4364028541716351 * x + 0.7139816917074209),
        0.1017 * x * x * (x * x - 2.1966568338249754 * x + 1.2949852507374631),
        2.490627285651252793 * x * x * (x * x - 2.38535645472061657 * x + 1.57803468208092486),
        -16.54810288924490272 * (x - 1.21712927295533244) * (x - 0.61620406037800089) * x * x,
        47.37952196281928122 * (x - 1.203071208372362603) * (x - 0.658047292653547382) * x * x,
        -34.87065786149660974 * (x - 1.2) * (x - 2 / 3) * x * x,
        2.5 * (x - 1) * (x - 0.6) * x * x,
    )


TSIT5 = ButcherTableau(
    name="tsit5",
    order=5,
    c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045096857298102862870245954942137979563024768854764293221195950761, 1.0, 1.0),
    a=(
        (),
        (0.161,),
        (
            -0.008480655492356988544426874250230774675121177393430391537369234245294192976164,
            0.335480655492356988544426874250230774675121177393430391537369234245294192976164,
        ),
        (
            2.897153057105493432130432594192938764924887287701866490314866693455023795137503,
            -6.359448489975074843148159912383825625952700647415626703305928850207288721235210,
            4.362295432869581411017727318190886861027813359713760212991062156752264926097707,
        ),
        (
            5.325864828439256604428877920840511317836476253097040101202360397727981648835607,
            -11.74888356406282787774717033978577296188744178259862899288666928009020615663593,
            7.495539342889836208304604784564358155658679161518186721010132816213648793440552,
            -0.09249506636175524925650207933207191611349983406029535244034750452930469056411389,
        ),
        (
            5.861455442946420028659251486982647890394337666164814434818157239052507339770711,
            -12.92096931784710929170611868178335939541780751955743459166312250439928519268343,
            8.159367898576158643180400794539253485181918321135053305748355423955009222648673,
            -0.07158497328140099722453054252582973869127213147363544882721139659546372402303777,
            -0.02826905039406838290900305721271224146717633626879770007617876201276764571291579,
        ),
        _TSIT5_B[:6],
    ),
    b=_TSIT5_B,
    b_error=tuple(x - y for x, y in zip(_TSIT5_B, _TSIT5_B_HAT)),
    c_mid=_tsit5_continuous_weights(0.5),
)
"""Tsitouras 5(4): 7 stages, FSAL, order 5, quartic dense output.

References:
    Tsitouras (2011), "Runge-Kutta pairs of order 5(4) satisfying only the
    first column simplifying assumption", Comput. Math. Appl. 62(2).
"""

_BOSH3_B = (2 / 9, 1 / 3, 4 / 9, 0.0)
BOSH3 = ButcherTableau(
    name="bosh3",
    order=3,
    c=(0.0, 1 / 2, 3 / 4, 1.0),
    a=((), (1 / 2,), (0.0, 3 / 4), _BOSH3_B[:3]),
    b=_BOSH3_B,
    b_error=tuple(x - y for x, y in zip(_BOSH3_B, (7 / 24, 1 / 4, 1 / 3, 1 / 8))),
)
"""Bogacki-Shampine 3(2): 4 stages, FSAL, order 3, cubic Hermite output.

References:
    Bogacki & Shampine (1989), "A 3(2) pair of Runge-Kutta formulas",
    Appl. Math. Lett. 2(4).
"""

HEUN_EULER = ButcherTableau(
    name="heun_euler",
    order=2,
    c=(0.0, 1.0),
    a=((), (1.0,)),
    b=(1 / 2, 1 / 2),
    b_error=(1 / 2 - 1.0, 1 / 2 - 0.0),
)
"""Heun's method with an embedded Euler step: 2(1), 2 stages, not FSAL.

References:
    Hairer, Norsett & Wanner, "Solving Ordinary Differential Equations I",
    Sec. II.1 and II.4.
"""

EULER = ButcherTableau(name="euler", order=1, c=(0.0,), a=((),), b=(1.0,))
"""Explicit Euler: 1 stage, order 1, fixed step."""

MIDPOINT = ButcherTableau(
    name="midpoint", order=2, c=(0.0, 1 / 2), a=((), (1 / 2,)), b=(0.0, 1.0)
)
"""Explicit midpoint rule: 2 stages, order 2, fixed step."""

RK4 = ButcherTableau(
    name="rk4",
    order=4,
    c=(0.0, 1 / 2, 1 / 2, 1.0),
    a=((), (1 / 2,), (0.0, 1 / 2), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
)
"""The classical Runge-Kutta method: 4 stages, order 4, fixed step."""
