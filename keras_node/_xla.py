"""The `jit_compile` option: decide whether a solve's loop runs under XLA.

`True` always compiles the solver loop with XLA, `False` never does, and
`"auto"` (the default) compiles when the dynamics lower to XLA (every op
has an XLA kernel), falling back to a plain graph with a one-time warning otherwise.
One measured exception: with no GPU, dynamics with convolutions run without
XLA, because XLA's CPU convolutions are slower than TensorFlow's and their
gradients dramatically so (an ODE-Net conv block's adjoint step: 59 s under
XLA vs 0.75 s without, benchmarks/RESULTS.md). The check traces the
dynamics once per function and state signature.
"""

import re
import warnings
import weakref

import tensorflow as tf
# Private, only for the fallback below: no public API lists an op's kernels.
from tensorflow.python.framework import kernels


_SUPPORT = weakref.WeakKeyDictionary()
_WARNED = set()
_SLOW_ON_CPU = {"Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2dNative", "Conv",
                "Conv2DBackpropInput", "Conv3DBackpropInputV2"}


def resolve(jit_compile, func, leaves, t_dtype, where, owner, per_sample=False):
    """The effective bool for a solve of `func` on `leaves`; `owner` (the
    user's function) keys the cached answer. `per_sample`: `func` takes a
    time per sample (shape `(batch,)`)."""
    if jit_compile != "auto":
        return jit_compile
    unsupported, op_types = _probe(func, leaves, t_dtype, owner, per_sample)
    if op_types & _SLOW_ON_CPU and not tf.config.list_logical_devices("GPU"):
        return False
    if unsupported and where not in _WARNED:
        _WARNED.add(where)
        warnings.warn(
            f"keras_node {where}: the dynamics use ops XLA cannot compile "
            f"({unsupported}); running the solver loop without XLA. "
            "Pass jit_compile=False to silence this warning.",
            stacklevel=4,
        )
    return not unsupported


def _probe(func, leaves, t_dtype, owner, per_sample):
    """`(unsupported, op_types)`: the ops XLA refused (a string, empty if
    none) and the op types `func` uses, from lowering `func` alone to HLO."""
    # Which ops a function uses does not depend on the sizes of its inputs:
    # key on ranks and dtypes, and probe with unknown sizes set to 1 (the
    # lowering needs static shapes).
    signature = tuple((leaf.shape.rank, leaf.dtype) for leaf in leaves)
    key = (signature, t_dtype, per_sample, getattr(owner, "__func__", None))
    try:
        per_func = _SUPPORT.setdefault(getattr(owner, "__self__", owner), {})
    except TypeError:
        per_func = {}
    if key not in per_func:
        specs = [tf.TensorSpec([1 if d is None else d for d in leaf.shape], leaf.dtype) for leaf in leaves]
        traced = tf.function(lambda t, *y: func(t, y), autograph=False, jit_compile=True)
        t_spec = tf.TensorSpec(specs[0].shape[:1] if per_sample else [], t_dtype)
        graph = traced.get_concrete_function(t_spec, *specs).graph
        op_types = frozenset(_op_types(graph.as_graph_def()))
        try:
            # Outside the graph being built: the lowering makes random inputs
            # for the specs, which would otherwise stay in the caller's graph
            # and run (stateful ops are not pruned) on every call.
            with tf.init_scope():
                traced.experimental_get_compiler_ir(t_spec, *specs)(stage="hlo")
            unsupported = ""
        except (ValueError, tf.errors.OpError) as error:
            found = re.findall(r"No registered '(\w+)' OpKernel for XLA", str(error))
            unsupported = ", ".join(sorted(set(found))) or str(error).split("\n")[0][:200]
        except TypeError:
            # `func` closes over tensors of a graph being traced (a solve
            # inside a tf.function whose dynamics read its tensors): the
            # lowering runs outside that graph and cannot reach them. Ask the
            # kernel registry about each op instead.
            unsupported = ", ".join(sorted(op for op in op_types if not _has_xla_kernel(op)))
        per_func[key] = (unsupported, op_types)
    return per_func[key]


_XLA_DEVICE = "XLA_CPU_JIT"
# Graph plumbing with no kernel of its own: XLA handles these structurally.
_STRUCTURAL = {"Placeholder", "_Arg", "_Retval", "NoOp", "PartitionedCall",
               "StatefulPartitionedCall", "Identity", "IdentityN"}


def _has_xla_kernel(op_type):
    if op_type in _STRUCTURAL:
        return True
    try:
        registered = kernels.get_registered_kernels_for_op(op_type)
    except Exception:  # noqa: BLE001 - an unknown op is simply unsupported
        return False
    return any(kernel.device_type == _XLA_DEVICE for kernel in registered.kernel)


def _op_types(graph_def):
    types = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        types.update(node.op for node in function.node_def)
    return types
