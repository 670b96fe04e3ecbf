"""Validators of option values, with the one error convention (API.md).

A value of the wrong *type* raises TypeError (a bool is not a number); a
value of the right type but outside the allowed range raises ValueError.
Each message names the option, says what was expected and ends with
`Received: name=value` (and the type, for wrong types).
"""

import numbers

import numpy as np
import tensorflow as tf

from keras_node.solvers import registry

_NUMBER_TYPES = (numbers.Real, np.ndarray, np.generic, tf.Tensor, tf.Variable)


def short_repr(value):
    """`repr(value)`, cut to 120 characters for error messages."""
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _received(name, value):
    return f"Received: {name}={short_repr(value)}"


def _received_type(name, value):
    """`Received: ...` with the type named, for wrong-type errors."""
    return f"Received: {name}={short_repr(value)} of type {type(value).__name__}"


def check_bool(value, name):
    """A flag must be a real bool (the string "False" would be truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False. {_received_type(name, value)}")
    return value


def check_choice(value, name, choices):
    """A string among `choices`."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {choices}. {_received_type(name, value)}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}. {_received(name, value)}")
    return value


def check_int(value, name, minimum):
    """A Python integer >= minimum (it sizes a loop or a buffer)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}. {_received_type(name, value)}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}. {_received(name, value)}")
    return int(value)


def check_batch_axis(value, name="batch_axis"):
    """None (one problem) or 0 (axis 0 is a batch of independent problems)."""
    if value is None:
        return None
    expected = "None or 0 (axis 0 of every leaf of y0 is a batch of independent problems)"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {expected}. {_received_type(name, value)}")
    if value != 0:
        raise ValueError(f"{name} must be {expected}. {_received(name, value)}")
    return 0


def check_times(value, name):
    """None, or 1-D strictly increasing finite times (where known now)."""
    if value is None:
        return None
    expected = "None or a 1-D list, array or tensor of strictly increasing times"
    if isinstance(value, (bool, numbers.Number, str, bytes, dict)):
        raise TypeError(f"{name} must be {expected}. {_received_type(name, value)}")
    static = _static_values(value, name, expected)
    if static is None:
        return value
    if static.ndim != 1:
        raise ValueError(f"{name} must be {expected}; got shape {static.shape}. {_received(name, value)}")
    if not np.all(np.isfinite(static)) or np.any(np.diff(static) <= 0):
        raise ValueError(f"{name} must be {expected} (finite, sorted, no repeats). "
                         f"{_received(name, value)}")
    return [float(v) for v in static] if isinstance(value, (list, tuple)) else value


def _static_values(value, name, expected):
    """The numbers in `value` as a float64 array (None if only known at run
    time); TypeError unless `value` holds real numbers."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be {expected}. {_received_type(name, value)}")
    if isinstance(value, (numbers.Real, np.generic)) and not isinstance(value, np.bool_):
        return np.float64(value)  # the common case, without a tensor
    if isinstance(value, (list, tuple)):
        try:
            array = np.asarray(value)
        except (TypeError, ValueError):
            array = None
        if array is not None and array.dtype.kind in "iuf":
            # Exactly, in float64: through a float32 tensor 0.3 would not be 0.3.
            return array.astype(np.float64)
    try:
        tensor = tf.convert_to_tensor(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be {expected}. {_received_type(name, value)}") from None
    if not (tensor.dtype.is_floating or tensor.dtype.is_integer) or tensor.dtype == tf.bool:
        raise TypeError(f"{name} must be {expected}; got dtype {tensor.dtype.name}. "
                        f"{_received(name, value)}")
    static = tf.get_static_value(tensor)
    return None if static is None else np.asarray(static, dtype=np.float64)


def check_positive_scalar(value, name):
    """None, or one positive finite number (a step length)."""
    if value is None:
        return None
    expected = "a positive number or None"
    if not isinstance(value, _NUMBER_TYPES) or isinstance(value, bool):
        raise TypeError(f"{name} must be {expected}. {_received_type(name, value)}")
    static = _static_values(value, name, expected)
    if static is not None and (static.shape != () or not np.isfinite(static) or static <= 0):
        raise ValueError(f"{name} must be a positive finite scalar or None. {_received(name, value)}")
    return float(value) if isinstance(value, (numbers.Real, np.generic)) else value


def check_tolerance(value, name):
    """A tolerance: a number, an array/tensor of them, or a nest (dict, list,
    tuple) of those; every value finite and >= 0 where known now."""
    if isinstance(value, dict):
        return {key: check_tolerance(leaf, name) for key, leaf in value.items()}
    if isinstance(value, (list, tuple)) and any(_is_nest(v) for v in value):
        return type(value)(check_tolerance(leaf, name) for leaf in value)
    static = _static_values(value, name, "a non-negative number, an array of them, or a "
                                          "structure matching y0")
    if static is not None and (np.any(static < 0) or not np.all(np.isfinite(static))):
        raise ValueError(f"{name} must be finite and >= 0. {_received(name, value)}")
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return list(static.tolist())
    return value


def _is_nest(value):
    return isinstance(value, (dict, list, tuple, np.ndarray, tf.Tensor, tf.Variable))


def check_method(value, name):
    """A method name in `keras_node.METHODS`."""
    if not isinstance(value, str):
        raise TypeError(registry.unknown_method_message(value, name))
    registry.get_tableau(value, name)
    return value


def check_jit_compile(value, name="jit_compile"):
    """True, False or "auto"."""
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f'{name} must be True, False or "auto". {_received(name, value)}')
    elif not isinstance(value, bool):
        raise TypeError(f'{name} must be True, False or "auto". {_received_type(name, value)}')
    return value


def both_zero(rtol, atol):
    """Both tolerances known now and all zero (nests are checked per call,
    leaf against leaf, in `_inputs.check_both_tolerances`)."""
    def zero(v):
        if v is None or isinstance(v, dict) or (isinstance(v, (list, tuple)) and any(_is_nest(x) for x in v)):
            return False
        static = tf.get_static_value(tf.convert_to_tensor(v))
        return static is not None and bool(np.all(np.asarray(static) == 0))
    return zero(rtol) and zero(atol)


REGULARIZER_KEYS = ("kinetic", "jacobian_frobenius", "taylor2")


def check_regularizers(value, name="regularizers"):
    """None, or a dict of non-negative finite weights keyed by names among
    `REGULARIZER_KEYS` (RNODE's kinetic energy and Jacobian norm, and the
    second-derivative term); returned as a dict of Python floats."""
    if value is None:
        return None
    expected = f"None or a dict of non-negative weights with keys among {REGULARIZER_KEYS}"
    if not isinstance(value, dict):
        raise TypeError(f"{name} must be {expected}. {_received_type(name, value)}")
    checked = {}
    for key, weight in value.items():
        if key not in REGULARIZER_KEYS:
            raise ValueError(f"{name} must be {expected}; unknown key {key!r}. {_received(name, value)}")
        if isinstance(weight, bool) or not isinstance(weight, (numbers.Real, np.generic)):
            raise TypeError(f"{name}[{key!r}] must be a non-negative number, not a "
                            f"{type(weight).__name__}. {_received(name, value)}")
        if not np.isfinite(weight) or weight < 0:
            raise ValueError(f"{name}[{key!r}] must be a finite number >= 0. "
                             f"{_received(name, value)}")
        checked[key] = float(weight)
    return checked


def check_norm_leaves(value, name="norm_leaves"):
    """None (every leaf in the error norm) or a non-empty tuple of leaf indices."""
    if value is None:
        return None
    if not isinstance(value, tuple) or not value or any(
            isinstance(i, bool) or not isinstance(i, numbers.Integral) or i < 0 for i in value):
        raise TypeError(f"{name} must be None or a non-empty tuple of leaf indices. "
                        f"{_received_type(name, value)}")
    return tuple(int(i) for i in value)
