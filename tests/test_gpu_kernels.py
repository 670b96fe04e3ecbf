"""GPU readiness without a GPU (API.md, "Keras layer": every op has a GPU kernel).

A whole training step -- forward solve, backward pass (adjoint or backprop),
optimizer update -- is traced into one concrete function. The test walks its
graph and, recursively, every function of its library (while-loop conds and
bodies, cond branches, nested calls) and requires each node to have a
registered kernel for device type GPU, or DEFAULT (device-agnostic kernels,
e.g. function calls and control flow), whose type constraints accept the
node's dtypes. TensorFlow wheels built with CUDA register their GPU kernels
even on a machine without a GPU, so this runs on CPU-only CI.

The same step must also compile and run under XLA (`jit_compile=True`).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import kernels
from tensorflow.python.framework import op_def_registry

import keras_node
from keras_node.dynamics import MLP, ConvBlock

ACCEPTED_DEVICE_TYPES = ("GPU", "DEFAULT")

# Nodes allowed without a GPU/DEFAULT kernel, as (op type, dtype attr value).
# Keep this minimal; every entry needs a reason.
HOST_ONLY_ALLOWLIST = {
    # String constants are the message inputs of `Assert` (keras_node's
    # run-time checks of `t`, and TensorFlow's own shape asserts). Strings
    # live in host memory on every device; TensorFlow places these constants
    # on the CPU beside the Assert, so no device computation is involved.
    ("Const", "string"),
    # rodas4's Jacobians (pfor): the vectorised MatMul gradient splits a
    # shape vector (int32). TensorFlow keeps int32 tensors in host memory
    # on GPUs and places this 2-element shape arithmetic on the host; no
    # device computation is involved.
    ("Split", "int32"),
}
# Not needed in the allowlist (checked: they have DEFAULT kernels):
# PartitionedCall/StatefulPartitionedCall, While/StatelessWhile, If/StatelessIf,
# NoOp, Placeholder, _Arg, _Retval. A node whose op type is a library function
# name is a direct call of that function: it is walked, not looked up.


# --- the graph walker --------------------------------------------------------------


def _function_references(node):
    """Names of the functions a node refers to in its attributes (body, cond, f, branches...)."""
    names = []
    for value in node.attr.values():
        if value.HasField("func"):
            names.append(value.func.name)
        if value.HasField("list"):
            names.extend(f.name for f in value.list.func)
    return names


def walk(graph_def):
    """All nodes of the graph and of every function reachable from it.

    Returns `(nodes, walked function names, library function names)`; every
    library function is walked, called or not. Raises if a node refers to a
    function missing from the library (the walk would silently skip its ops).
    """
    library = {f.signature.name: f for f in graph_def.library.function}
    nodes, visited = [], set()
    pending = [list(graph_def.node)]
    while pending:
        for node in pending.pop():
            nodes.append(node)
            called = _function_references(node) + ([node.op] if node.op in library else [])
            for name in called:
                if name not in library:
                    raise AssertionError(f"node {node.name} ({node.op}) refers to {name!r}, not in the library")
                if name not in visited:
                    visited.add(name)
                    pending.append(list(library[name].node_def))
    # Functions in the library that nothing calls (e.g. gradient functions
    # kept for reference) are checked too.
    for name, function in library.items():
        if name not in visited:
            visited.add(name)
            nodes.extend(function.node_def)
    return nodes, visited, set(library)


def _attr_types(node, name):
    value = node.attr.get(name)
    if value is None:  # function bodies omit attributes left at their default
        op_def = op_def_registry.get(node.op)
        default = next((a.default_value for a in op_def.attr if a.name == name), None) if op_def else None
        value = default
    if value is None:
        return None
    if value.HasField("list"):
        return list(value.list.type)
    return [value.type]


def _attr_string(node, name):
    value = node.attr.get(name)
    if value is None:  # left at its default
        op_def = op_def_registry.get(node.op)
        value = next((a.default_value for a in op_def.attr if a.name == name), None) if op_def else None
    return None if value is None else value.s


def _kernel_accepts(kernel_def, node):
    for constraint in kernel_def.constraint:
        allowed_strings = list(constraint.allowed_values.list.s)
        if allowed_strings:  # a string attribute (e.g. GatherNd's bad_indices_policy)
            if _attr_string(node, constraint.name) not in allowed_strings:
                return False
            continue
        types = _attr_types(node, constraint.name)
        allowed = set(constraint.allowed_values.list.type)
        if types is None or any(t not in allowed for t in types):
            return False
    return True


def has_gpu_kernel(node):
    registered = kernels.get_registered_kernels_for_op(node.op).kernel
    return any(k.device_type in ACCEPTED_DEVICE_TYPES and _kernel_accepts(k, node) for k in registered)


def _node_dtype(node):
    for name in ("dtype", "T"):
        if name in node.attr and node.attr[name].type:
            return tf.as_dtype(node.attr[name].type).name
    return None


def nodes_without_gpu_kernel(graph_def):
    nodes, _, library = walk(graph_def)
    missing = set()
    for node in nodes:
        if node.op in library:
            continue  # a direct call of a library function, walked above
        if not has_gpu_kernel(node) and (node.op, _node_dtype(node)) not in HOST_ONLY_ALLOWLIST:
            missing.add((node.op, _node_dtype(node)))
    return missing


# --- the walker finds what it must find (negative controls) -------------------------


def test_walker_finds_a_host_only_op_nested_in_loops_and_functions():
    @tf.function
    def inner(x):
        return tf.strings.length(tf.strings.as_string(x))  # AsString, StringLength: CPU only

    @tf.function
    def outer(x):
        return tf.while_loop(lambda i, y: i < 3, lambda i, y: (i + 1, y + tf.cast(inner(y), tf.float32)),
                             (0, x))[1]

    graph_def = outer.get_concrete_function(tf.TensorSpec((None,))).graph.as_graph_def()
    nodes, visited, _ = walk(graph_def)
    assert visited, "no nested function was walked"
    missing = nodes_without_gpu_kernel(graph_def)
    assert ("AsString", "float32") in missing and any(op == "StringLength" for op, _ in missing)
    # ...and a plain GPU op passes, but not with a dtype its GPU kernel lacks.
    matmul = tf.function(tf.linalg.matmul).get_concrete_function(
        tf.TensorSpec((2, 2), tf.float32), tf.TensorSpec((2, 2), tf.float32)).graph.as_graph_def()
    assert nodes_without_gpu_kernel(matmul) == set()
    string_concat = tf.function(lambda a, b: tf.strings.join([a, b])).get_concrete_function(
        tf.TensorSpec((), tf.string), tf.TensorSpec((), tf.string)).graph.as_graph_def()
    assert any(op == "StringJoin" for op, _ in nodes_without_gpu_kernel(string_concat))
    # Kernels constrained on a string attribute (GatherNd's bad_indices_policy) are found.
    gather = tf.function(tf.gather_nd).get_concrete_function(
        tf.TensorSpec((3, 2), tf.float32), tf.TensorSpec((3, 2), tf.int32)).graph.as_graph_def()
    assert nodes_without_gpu_kernel(gather) == set()


# --- the training step ---------------------------------------------------------------


def _train_step(gradient, jit_compile):
    """A model with both ready-made dynamics, configured and run-time `t`.

    Images (4, 4, 2) -> ODELayer(ConvBlock) -> ODELayer(MLP, t given at call
    time, return_sequences) -> pooling -> Dense; Adam; MSE.
    """
    keras.utils.set_random_seed(0)
    images = keras.Input((4, 4, 2))
    times = keras.Input(batch_shape=(3,))
    h = keras_node.ODELayer(ConvBlock(filters=4, groups=2), gradient=gradient)(images)
    path = keras_node.ODELayer(MLP(units=(8,)), gradient=gradient, return_sequences=True)(h, t=times)
    pooled = keras.layers.GlobalAveragePooling3D()(path)  # over (time, height, width)
    model = keras.Model([images, times], keras.layers.Dense(1)(pooled))
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)

    @tf.function(jit_compile=jit_compile)
    def step(x, t, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model([x, t], training=True) - y))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return model, step


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4, 4, 2)).astype("float32")
    y = np.mean(x, axis=(1, 2, 3))[:, None].astype("float32") ** 2
    return tf.constant(x), tf.constant([0.0, 0.4, 1.0]), tf.constant(y)


@pytest.mark.skipif(not tf.test.is_built_with_gpu_support(),
                    reason="this TensorFlow build registers no GPU kernels to check against")
@pytest.mark.parametrize("gradient", ["adjoint", "backprop"])
def test_every_op_of_a_training_step_has_a_gpu_kernel(gradient):
    _, step = _train_step(gradient, jit_compile=False)
    concrete = step.get_concrete_function(
        tf.TensorSpec((None, 4, 4, 2)), tf.TensorSpec((3,)), tf.TensorSpec((None, 1)))
    graph_def = concrete.graph.as_graph_def()
    nodes, visited, _ = walk(graph_def)
    op_types = {node.op for node in nodes}
    # The walk reached the solver loops, the dynamics inside them, and the update.
    assert op_types & {"While", "StatelessWhile"}, sorted(op_types)
    assert {"Conv2D", "Tanh", "MatMul"} <= op_types, sorted(op_types)
    assert "Conv2DBackpropFilter" in op_types and "AssignVariableOp" in op_types
    assert len(visited) >= 4
    assert nodes_without_gpu_kernel(graph_def) == set()


def test_training_step_compiles_and_runs_under_xla():
    # Adjoint only here (the costlier compile); test_ode_layer.py trains both
    # gradient modes with model.compile(jit_compile=True).
    model, step = _train_step("adjoint", jit_compile=True)
    x, t, y = _data()
    before = [np.array(v) for v in model.trainable_variables]
    losses = [float(step(x, t, y)) for _ in range(2)]
    assert np.all(np.isfinite(losses)) and losses[1] < losses[0], losses
    after = [np.asarray(v) for v in model.trainable_variables]
    assert all(np.all(np.isfinite(v)) for v in after)
    assert any(not np.array_equal(b, a) for b, a in zip(before, after))


@pytest.mark.skipif(not tf.test.is_built_with_gpu_support(),
                    reason="this TensorFlow build registers no GPU kernels to check against")
@pytest.mark.parametrize("gradient", ["backprop"])
def test_every_op_of_a_rodas4_gradient_has_a_gpu_kernel(gradient):
    """rodas4 adds Jacobians (pfor), linear solves and their gradients:
    traced only (no solve runs). Backprop only (~7 s a case): its graph holds
    the forward step's ops and their derivatives; the adjoint case (the
    forward re-solve and interpolation: gathers, scatters) passed once,
    add "adjoint" to rerun it. Joint steps only: per-sample steps are
    checked with dopri5 below."""
    graph_def, op_types = _layer_gradient_graph(method="rodas4", gradient=gradient,
                                                jit_compile=False)
    assert "MatrixSolve" in op_types, sorted(op_types)
    assert nodes_without_gpu_kernel(graph_def) == set()


@pytest.mark.skipif(not tf.test.is_built_with_gpu_support(),
                    reason="this TensorFlow build registers no GPU kernels to check against")
@pytest.mark.parametrize("gradient", ["adjoint", "backprop"])
def test_every_op_of_per_sample_and_event_gradients_has_a_gpu_kernel(gradient):
    """Per-sample steps (`ODELayer(per_sample_steps=True)`) and a per-sample
    `odeint_event`, with their gradients: traced only."""
    keras.utils.set_random_seed(0)
    layer = keras_node.ODELayer(MLP(units=(8,)), per_sample_steps=True, gradient=gradient,
                                jit_compile=False)
    layer.build((None, 3))
    dynamics = layer.dynamics

    @tf.function
    def gradients(x):
        with tf.GradientTape() as tape:
            h = layer(x)
            t_event, y_event = keras_node.odeint_event(
                lambda t, y: dynamics(y), h, 0.0, lambda t, y: tf.reduce_mean(y ** 2, axis=1) - 0.1,
                t_max=5.0, gradient=gradient, batch_axis=0, variables=dynamics.trainable_variables,
                jit_compile=False)
            loss = tf.reduce_sum(t_event) + tf.reduce_sum(y_event ** 2)
        return tape.gradient(loss, layer.trainable_variables)

    graph_def = gradients.get_concrete_function(tf.TensorSpec((None, 3))).graph.as_graph_def()
    op_types = {node.op for node in walk(graph_def)[0]}
    assert {"MatMul", "Tanh", "TensorScatterUpdate"} <= op_types, sorted(op_types)
    assert nodes_without_gpu_kernel(graph_def) == set()


@pytest.mark.skipif(not tf.test.is_built_with_gpu_support(),
                    reason="this TensorFlow build registers no GPU kernels to check against")
def test_every_op_of_a_replayed_backprop_has_a_gpu_kernel():
    """Backprop with an XLA-compiled solve replays its attempts
    (keras_node/solvers/replay.py): the forward's state records and the
    backward loop of per-attempt gradients. Traced only."""
    graph_def, op_types = _layer_gradient_graph(gradient="backprop", jit_compile=True)
    # The backward loop differentiates the attempt: MatMul's and Tanh's gradients.
    assert {"MatMul", "TanhGrad", "TensorScatterUpdate"} <= op_types, sorted(op_types)
    assert nodes_without_gpu_kernel(graph_def) == set()


def _layer_gradient_graph(**layer_options):
    """`(graph_def, op types)` of the traced gradient of an `ODELayer(MLP)`
    with `layer_options` (nothing runs)."""
    keras.utils.set_random_seed(0)
    layer = keras_node.ODELayer(MLP(units=(8,)), **layer_options)
    layer.build((None, 3))

    @tf.function
    def gradients(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x) ** 2)
        return tape.gradient(loss, layer.trainable_variables)

    graph_def = gradients.get_concrete_function(tf.TensorSpec((None, 3))).graph.as_graph_def()
    return graph_def, {node.op for node in walk(graph_def)[0]}
