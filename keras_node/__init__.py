"""keras_node: Neural ODE layers for Keras 3 and TensorFlow.

Public API: `odeint`, `odeint_adjoint`, `ODELayer`, `METHODS`, and the
`dynamics` and `callbacks` modules. See the README and API.md.
"""

import keras as _keras

if _keras.backend.backend() != "tensorflow":
    raise ImportError(
        "keras_node needs the TensorFlow backend of Keras 3, but Keras is using the "
        f"{_keras.backend.backend()!r} backend. Set the environment variable "
        "KERAS_BACKEND=tensorflow before importing keras (or edit ~/.keras/keras.json)."
    )

from keras_node.odeint import odeint as odeint  # noqa: E402
from keras_node.solvers.registry import METHODS as METHODS  # noqa: E402

__version__ = "0.1.0"

__all__ = ["METHODS", "odeint"]
