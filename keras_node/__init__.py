"""keras_node: Neural ODE layers for Keras 3 and TensorFlow.

Public API: `odeint`, `odeint_adjoint`, `ODELayer`, `CNF`, `divergence`,
`METHODS`, the time-series `CubicSpline`, `NeuralCDE` and `ODERNN`, and the
`dynamics`, `callbacks` and `export` modules. See the README and API.md.
"""

import keras as _keras

if _keras.backend.backend() != "tensorflow":
    raise ImportError(
        "keras_node needs the TensorFlow backend of Keras 3, but Keras is using the "
        f"{_keras.backend.backend()!r} backend. Set the environment variable "
        "KERAS_BACKEND=tensorflow before importing keras (or edit ~/.keras/keras.json)."
    )

from keras_node.options import DEFAULT_CHECKPOINTS as DEFAULT_CHECKPOINTS  # noqa: E402
from keras_node.adjoint import AdjointStats as AdjointStats  # noqa: E402
from keras_node.adjoint import odeint_adjoint as odeint_adjoint  # noqa: E402
from keras_node.odeint import odeint as odeint  # noqa: E402
from keras_node.divergence import divergence as divergence  # noqa: E402
from keras_node.events import odeint_event as odeint_event  # noqa: E402
from keras_node.layers.ode_layer import ODELayer as ODELayer  # noqa: E402
from keras_node.layers.cnf import CNF as CNF  # noqa: E402
from keras_node.interpolate import CubicSpline as CubicSpline  # noqa: E402
from keras_node.layers.cde import NeuralCDE as NeuralCDE  # noqa: E402
from keras_node.layers.odernn import ODERNN as ODERNN  # noqa: E402
from keras_node import dynamics as dynamics  # noqa: E402
from keras_node import callbacks as callbacks  # noqa: E402
from keras_node import export as export  # noqa: E402
from keras_node.diagnostics import check_gradients as check_gradients  # noqa: E402
from keras_node.solvers.registry import METHODS as METHODS  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "AdjointStats",
    "CNF",
    "CubicSpline",
    "DEFAULT_CHECKPOINTS",
    "METHODS",
    "NeuralCDE",
    "ODERNN",
    "ODELayer",
    "callbacks",
    "check_gradients",
    "divergence",
    "dynamics",
    "export",
    "odeint",
    "odeint_adjoint",
]
