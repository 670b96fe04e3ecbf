"""Options are validated once, with one error convention everywhere (issue 14).

API.md: for every option, a wrong *type* is a TypeError (a bool is not a
number), a wrong *value* of the right type a ValueError; the message names
the option, says what was received ("Received: name=value") and what was
expected. `TABLE` is option x bad value x expected error; every row runs
through `odeint`, `odeint_adjoint` and `ODELayer` alike (the adjoint rows
through the last two), and must fail before anything is solved.
"""

import dataclasses
import re

import numpy as np
import pytest
import tensorflow as tf

import keras_node
from keras_node.dynamics import MLP
from keras_node.options import AdjointOptions, SolverOptions

Y0 = tf.constant([[1.0, 2.0]])
T = [0.0, 1.0]

SOLVER_TABLE = [
    ("method", None, TypeError), ("method", 5, TypeError), ("method", "rk45", ValueError),
    ("method", "Dopri5", ValueError),
    ("rtol", "tight", TypeError), ("rtol", None, TypeError), ("rtol", True, TypeError),
    ("rtol", 1j, TypeError), ("rtol", -1e-3, ValueError), ("rtol", float("nan"), ValueError),
    ("atol", "x", TypeError), ("atol", False, TypeError), ("atol", -1.0, ValueError),
    ("atol", float("inf"), ValueError),
    ("first_step", "small", TypeError), ("first_step", True, TypeError),
    ("first_step", [0.1], TypeError), ("first_step", 0.0, ValueError),
    ("first_step", -0.1, ValueError), ("first_step", np.array([0.1, 0.2]), ValueError),
    ("step_size", "small", TypeError), ("step_size", True, TypeError),
    ("step_size", 0.0, ValueError), ("step_size", float("inf"), ValueError),
    ("max_num_steps", 10.5, TypeError), ("max_num_steps", "100", TypeError),
    ("max_num_steps", None, TypeError), ("max_num_steps", True, TypeError),
    ("max_num_steps", 0, ValueError), ("max_num_steps", -5, ValueError),
    ("jit_compile", None, TypeError), ("jit_compile", 1, TypeError),
    ("jit_compile", "yes", ValueError),
    ("max_step", True, TypeError), ("max_step", "big", TypeError), ("max_step", 0.0, ValueError),
    ("max_step", -1.0, ValueError),
    ("step_times", 0.5, TypeError), ("step_times", "0.5", TypeError), ("step_times", True, TypeError),
    ("step_times", [0.5, 0.2], ValueError), ("step_times", [0.2, 0.2], ValueError),
    ("step_times", [[0.1, 0.2]], ValueError), ("step_times", [0.1, float("nan")], ValueError),
    ("jump_times", {"a": 1.0}, TypeError), ("jump_times", [1.0, 0.0], ValueError),
]
# The functions take batch_axis; ODELayer spells it per_sample_steps.
BATCH_TABLE = [
    ("batch_axis", 1, ValueError), ("batch_axis", -1, ValueError),
    ("batch_axis", True, TypeError), ("batch_axis", "0", TypeError), ("batch_axis", 0.0, TypeError),
]
LAYER_TABLE = [
    ("per_sample_steps", 1, TypeError), ("per_sample_steps", "yes", TypeError),
    ("regularizers", [0.1], TypeError), ("regularizers", {"kinetic": True}, TypeError),
    ("regularizers", {"kinetic": "0.1"}, TypeError), ("regularizers", {"speed": 0.1}, ValueError),
    ("regularizers", {"kinetic": -0.1}, ValueError),
    ("regularizers", {"taylor2": float("nan")}, ValueError),
    ("augment_dim", 1.5, TypeError), ("augment_dim", True, TypeError), ("augment_dim", -1, ValueError),
]
ADJOINT_TABLE = [
    ("adjoint_method", 3, TypeError), ("adjoint_method", "rk45", ValueError),
    ("adjoint_rtol", "x", TypeError), ("adjoint_rtol", -1.0, ValueError),
    ("adjoint_atol", True, TypeError), ("adjoint_atol", float("nan"), ValueError),
    ("adjoint_seminorm", "yes", TypeError), ("adjoint_seminorm", 1, TypeError),
    ("adjoint_checkpoints", 2.5, TypeError), ("adjoint_checkpoints", True, TypeError),
    ("adjoint_checkpoints", None, TypeError), ("adjoint_checkpoints", -1, ValueError),
]


def decay(t, y):
    return -y


ENTRY_POINTS = {
    "odeint": lambda **kw: keras_node.odeint(decay, Y0, T, **kw),
    "odeint_adjoint": lambda **kw: keras_node.odeint_adjoint(decay, Y0, T, **kw),
    "ODELayer": lambda **kw: keras_node.ODELayer(MLP(units=(4,)), **kw),
}
ROWS = [(entry, *row) for entry in ENTRY_POINTS for row in SOLVER_TABLE] + [
    (entry, *row) for entry in ("odeint_adjoint", "ODELayer") for row in ADJOINT_TABLE
] + [(entry, *row) for entry in ("odeint", "odeint_adjoint") for row in BATCH_TABLE] + [
    ("ODELayer", *row) for row in LAYER_TABLE
]


@pytest.mark.parametrize("entry,option,value,error", ROWS,
                         ids=[f"{e}-{o}-{v!r}" for e, o, v, _ in ROWS])
def test_bad_option(entry, option, value, error):
    with pytest.raises(Exception) as info:
        ENTRY_POINTS[entry](**{option: value})
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert re.search(rf"\b{option}\b", message), message
    assert "Received" in message, message
    shown = repr(value) if not isinstance(value, np.ndarray) else "0.1"
    assert shown in message, message


@pytest.mark.parametrize("option", ["max_step", "step_times", "jump_times"])
def test_step_constraints_need_an_adaptive_method(option):
    value = 0.1 if option == "max_step" else [0.5]
    with pytest.raises(ValueError, match=rf"{option}.*adaptive.*rk4"):
        keras_node.odeint(decay, Y0, T, method="rk4", **{option: value})


def test_options_are_frozen_and_round_trip_through_config():
    options = SolverOptions(method="rk4", rtol=[1e-3, 1e-4], step_size=0.25, max_num_steps=50)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.method = "euler"
    assert SolverOptions(**options.to_config()).to_config() == options.to_config()
    adjoint = AdjointOptions(adjoint_method="rk4", adjoint_checkpoints=0)
    assert AdjointOptions(**adjoint.to_config()).to_config() == adjoint.to_config()


def test_option_keys_tell_apart_what_shapes_the_computation():
    base = SolverOptions()
    assert base.key() == SolverOptions().key()
    assert base.key() != SolverOptions(method="tsit5").key()
    assert base.key() != SolverOptions(max_num_steps=5).key()
    # Values that travel as tensors do not key a new compiled function
    # (only whether they are given does).
    assert base.key() == SolverOptions(rtol=1e-5, atol=[1e-3, 1e-4]).key()
    assert SolverOptions(first_step=0.1).key() == SolverOptions(first_step=0.2).key() != base.key()


def test_layer_config_holds_every_option():
    layer = keras_node.ODELayer(MLP(units=(4,)), method="rk4", step_size=0.5, rtol=1e-4,
                                adjoint_method="euler", adjoint_checkpoints=3)
    config = layer.get_config()
    expected = {**layer.options.to_config(), **layer.adjoint_options.to_config()}
    # The layer spells batch_axis as per_sample_steps (API.md).
    expected["per_sample_steps"] = expected.pop("batch_axis") == 0
    for name, value in expected.items():
        assert config[name] == value, name
    rebuilt = keras_node.ODELayer.from_config(config)
    assert rebuilt.options.to_config() == layer.options.to_config()
    assert rebuilt.adjoint_options.to_config() == layer.adjoint_options.to_config()


def test_options_of_plain_values_are_built_once_and_bools_stay_errors():
    first = SolverOptions.of(method="rk4", step_size=0.5, max_num_steps=1)
    assert SolverOptions.of(method="rk4", step_size=0.5, max_num_steps=1) is first
    with pytest.raises(TypeError, match="max_num_steps"):
        SolverOptions.of(method="rk4", step_size=0.5, max_num_steps=True)  # True == 1, hash(True) == hash(1)
    listed = SolverOptions.of(step_times=[0.5])
    assert SolverOptions.of(step_times=[0.5]) is not listed  # lists are validated on every call
    with pytest.raises(ValueError, match="rtol"):
        SolverOptions.of(rtol=-1.0)
    with pytest.raises(ValueError, match="rtol"):
        SolverOptions.of(rtol=-1.0)  # a failure is not remembered as a success
