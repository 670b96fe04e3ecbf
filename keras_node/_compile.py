"""Run eager calls through a cached, compiled `tf.function`.

An eager `tf.while_loop` executes op by op from Python, hundreds of times
slower than the traced loop. So an eager call of a public solver runs its
core through a `tf.function` built once per (func, static settings) and
reused; TensorFlow's own cache then keys on tensor shapes and dtypes, so
repeated calls with the same shapes never retrace.

The cache holds functions weakly by the user's `func` (for bound methods, by
the object they are bound to), so it never keeps a model alive. Values a
Python closure captures are part of the key, so a new closure over new
tensors gets a new trace instead of stale constants.
"""

import weakref

import tensorflow as tf

from keras_node import _status

_CACHE = weakref.WeakKeyDictionary()


def _owner_and_key(func):
    bound_to = getattr(func, "__self__", None)
    if bound_to is not None and hasattr(func, "__func__"):
        return bound_to, ("method", func.__func__)
    closure = getattr(func, "__closure__", None) or ()
    captured = []
    for cell in closure:
        try:
            captured.append(id(cell.cell_contents))
        except ValueError:  # an empty cell
            captured.append(None)
    return func, ("function", tuple(captured))


def cached_function(func, static_key, build, jit_compile=False):
    """Return the compiled function for `(func, static_key)`.

    `build()` returns the Python function to compile; it is called only on a
    cache miss. Falls back to compiling without caching when `func` cannot
    be weakly referenced.
    """
    owner, func_key = _owner_and_key(func)
    key = (func_key, static_key, jit_compile)
    try:
        per_owner = _CACHE.setdefault(owner, {})
    except TypeError:  # not weak-referenceable
        return tf.function(build(), autograph=False, jit_compile=jit_compile)
    compiled = per_owner.get(key)
    if compiled is None:
        compiled = tf.function(build(), autograph=False, jit_compile=jit_compile)
        per_owner[key] = compiled
    return compiled


def lookup(func, static_key, jit_compile=False):
    """The compiled function cached for `(func, static_key)`, or None."""
    owner, func_key = _owner_and_key(func)
    try:
        per_owner = _CACHE.get(owner)
    except TypeError:
        return None
    return None if per_owner is None else per_owner.get((func_key, static_key, jit_compile))


def run(func, static_key, core, args, jit_compile):
    """Run `core(*args)` the way the calling context wants it.

    Eagerly: through the cached compiled function. Inside a graph: inline,
    or, with `jit_compile`, as a nested XLA-compiled function (unless the
    graph is already being compiled by XLA).
    """
    if tf.executing_eagerly():
        return cached_function(func, static_key, lambda: core, jit_compile)(*args)
    if jit_compile and not _status.in_xla_context():
        return tf.function(core, autograph=False, jit_compile=True)(*args)
    return core(*args)
