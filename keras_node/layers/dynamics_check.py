"""The check every ODE layer makes when it builds: the dynamics give dh/dt
with the shape of h."""

import keras


def symbolic_output(dynamics, input_shape, dtype, time_dependent):
    """Build `dynamics` for states of `input_shape` (if not built) and return
    what it gives for a symbolic state (and time, when `time_dependent`)."""
    if not dynamics.built:
        dynamics.build(tuple(input_shape))
    spec = keras.KerasTensor(tuple(input_shape), dtype=dtype)
    if time_dependent:
        return dynamics.compute_output_spec(spec, t=keras.KerasTensor((), dtype=dtype))
    return dynamics.compute_output_spec(spec)


def build_and_check_dynamics(dynamics, input_shape, dtype, time_dependent):
    """Build `dynamics` for states of `input_shape` (if not built) and make
    sure it returns one tensor of that shape; a clear ValueError if not."""
    input_shape = tuple(input_shape)
    output = symbolic_output(dynamics, input_shape, dtype, time_dependent)
    if not hasattr(output, "shape"):
        raise ValueError(
            "The dynamics of an ODELayer must return a single tensor dh/dt with the shape of "
            f"h {input_shape}. Received: a {type(output).__name__} from "
            f"{dynamics.name!r}: {output!r}"
        )
    if tuple(output.shape) != input_shape:
        raise ValueError(
            "The dynamics of an ODELayer must return dh/dt with the shape of h. "
            f"Input shape: {input_shape}; dynamics output shape: {tuple(output.shape)}. "
            f"Check the last layer of {dynamics.name!r} (its width must equal the "
            "state's last dimension)."
        )
