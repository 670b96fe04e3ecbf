"""The `jit_compile` option: decide whether a solve's loop runs under XLA.

`True` always compiles the solver loop with XLA, `False` never does, and
`"auto"` (the default) compiles when every op the dynamics use has an XLA
kernel, falling back to a plain graph with a one-time warning otherwise.
One measured exception: with no GPU, dynamics with convolutions run without
XLA, because XLA's CPU convolutions are slower than TensorFlow's and their
gradients dramatically so (an ODE-Net conv block's adjoint step: 59 s under
XLA vs 0.75 s without, benchmarks/RESULTS.md). The check traces the
dynamics once per function and state signature.
"""

import warnings
import weakref

import tensorflow as tf
from tensorflow.python.framework import kernels

OPTIONS = (True, False, "auto")
_XLA_DEVICE = "XLA_CPU_JIT"
_SUPPORT = weakref.WeakKeyDictionary()
_WARNED = set()
# Graph plumbing with no kernel of its own: XLA handles these structurally.
_SLOW_ON_CPU = {"Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2dNative", "Conv",
                "Conv2DBackpropInput", "Conv3DBackpropInputV2"}
_STRUCTURAL = {"Placeholder", "_Arg", "_Retval", "NoOp", "PartitionedCall",
               "StatefulPartitionedCall", "Identity", "IdentityN"}


def validate(jit_compile):
    """Raise a ValueError unless `jit_compile` is True, False or "auto"."""
    if not (jit_compile is True or jit_compile is False or jit_compile == "auto"):
        raise ValueError(
            f'jit_compile must be True, False or "auto". Received: jit_compile={jit_compile!r}'
        )
    return jit_compile


def resolve(jit_compile, func, leaves, t_dtype, where, owner):
    """The effective bool for a solve of `func` on `leaves`; `owner` (the
    user's function) keys the cached answer."""
    if jit_compile != "auto":
        return jit_compile
    unsupported, op_types = _unsupported_ops(func, leaves, t_dtype, owner)
    if op_types & _SLOW_ON_CPU and not tf.config.list_logical_devices("GPU"):
        return False
    if unsupported and where not in _WARNED:
        _WARNED.add(where)
        warnings.warn(
            f"keras_node {where}: the dynamics use ops XLA cannot compile "
            f"({', '.join(sorted(unsupported))}); running the solver loop without XLA. "
            "Pass jit_compile=False to silence this warning.",
            stacklevel=4,
        )
    return not unsupported


def _unsupported_ops(func, leaves, t_dtype, owner):
    specs = tuple(tf.TensorSpec(leaf.shape, leaf.dtype) for leaf in leaves)
    # Which ops a function uses does not depend on the sizes of its inputs:
    # key on ranks and dtypes, so a new batch size does not trace it again.
    signature = tuple((leaf.shape.rank, leaf.dtype) for leaf in leaves)
    key = (signature, t_dtype, getattr(owner, "__func__", None))
    try:
        per_func = _SUPPORT.setdefault(getattr(owner, "__self__", owner), {})
    except TypeError:
        per_func = {}
    if key not in per_func:
        traced = tf.function(lambda t, y: func(t, y), autograph=False)
        graph = traced.get_concrete_function(tf.TensorSpec([], t_dtype), specs).graph
        op_types = frozenset(_op_types(graph.as_graph_def()))
        per_func[key] = (frozenset(op for op in op_types if not _has_xla_kernel(op)), op_types)
    return per_func[key]


def _op_types(graph_def):
    types = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        types.update(node.op for node in function.node_def)
    return types


def _has_xla_kernel(op_type):
    if op_type in _STRUCTURAL:
        return True
    try:
        registered = kernels.get_registered_kernels_for_op(op_type)
    except Exception:  # noqa: BLE001 - an unknown op is simply unsupported
        return False
    return any(kernel.device_type == _XLA_DEVICE for kernel in registered.kernel)
