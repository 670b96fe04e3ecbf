"""Run eager calls through a cached, compiled `tf.function`.

An eager `tf.while_loop` executes op by op from Python, hundreds of times
slower than the traced loop. So an eager call of a public solver runs its
core through a `tf.function` built once per (func, static settings) and
reused; TensorFlow's own cache then keys on tensor shapes and dtypes, so
repeated calls with the same shapes never retrace.

The cache holds functions weakly by the user's `func` (for bound methods, by
the object they are bound to), so it never keeps a model alive.

A trace bakes in the Python values `func` saw, so the key also holds a
fingerprint of the Python state `func` can read: its closure cells, the
module globals its code names, and (for bound methods and callable objects)
the object's plain attributes. Changing any of them gives a new trace, never a
stale answer. Plain values (numbers, strings, small numpy arrays) are keyed by
value, other objects by identity; TensorFlow variables need neither, as the
compiled function reads them when it runs.
"""

import weakref

import numpy as np
import tensorflow as tf

from keras_node import _status

_CACHE = weakref.WeakKeyDictionary()


_MAX_ARRAY_BYTES = 1 << 16
# Traces kept per (function, settings): Python state that changes on every
# call (a schedule, a step counter) retraces each call; older traces are
# dropped so memory stays bounded.
_MAX_TRACES = 8


def _value_key(value):
    """A hashable stand-in for a Python value a trace may have baked in."""
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return (type(value).__name__, value)
    if isinstance(value, tuple):
        return tuple(_value_key(v) for v in value)
    if isinstance(value, np.ndarray):
        if value.nbytes <= _MAX_ARRAY_BYTES:
            return ("ndarray", value.dtype.str, value.shape, value.tobytes())
        return ("ndarray", id(value))
    if isinstance(value, np.generic):
        return ("npscalar", value.item())
    if isinstance(value, (list, dict, set)):
        # Mutable containers: keyed by content when small and plain.
        # Sorted by key only: repr of a value such as a tf.Variable would
        # read it (a device-to-host copy on every call).
        items = (sorted(value.items(), key=lambda item: repr(item[0])) if isinstance(value, dict)
                 else list(value))
        if len(items) <= 64:
            try:
                return (type(value).__name__, tuple(_value_key(v) for v in items))
            except TypeError:
                pass
    return ("id", id(value))


def _code_globals(code, namespace, seen=None):
    """Globals named by `code` (and the code objects nested in it)."""
    seen = set() if seen is None else seen
    names = {}
    for name in code.co_names:
        if name in namespace and name not in seen:
            value = namespace[name]
            if not callable(value) or isinstance(value, np.ndarray):
                names[name] = value
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names.update(_code_globals(const, namespace, seen))
    return names


def _plain_attributes(obj):
    """An object's attributes holding plain values (not layers or tensors)."""
    attributes = getattr(obj, "__dict__", {})
    plain = (bool, int, float, str, tuple, np.ndarray, np.generic, type(None))
    return {k: v for k, v in attributes.items() if isinstance(v, plain)}


def _fingerprint(func):
    parts = []
    code = getattr(func, "__code__", None)
    if code is not None:
        for cell in getattr(func, "__closure__", None) or ():
            try:
                parts.append(_value_key(cell.cell_contents))
            except ValueError:  # an empty cell
                parts.append(None)
        globals_read = _code_globals(code, getattr(func, "__globals__", {}))
        parts.extend((k, _value_key(v)) for k, v in sorted(globals_read.items()))
    owner = getattr(func, "__self__", None)
    if owner is None and code is None:
        owner = func  # a callable object
    if owner is not None:
        parts.append(_fingerprint_owner(owner))
    return tuple(parts)


def _owner_and_key(func):
    """`(owner, identity, fingerprint)`: what to hold weakly, which function
    it is, and the Python state it reads."""
    bound_to = getattr(func, "__self__", None)
    if bound_to is not None and hasattr(func, "__func__"):
        method = func.__func__
        return bound_to, method, (_fingerprint(method), _fingerprint_owner(bound_to))
    return func, None, _fingerprint(func)


def _fingerprint_owner(obj):
    """Plain attributes of `obj` and, for a Keras layer, of every layer
    inside it (an ODELayer's dynamics read their own attributes)."""
    parts = [tuple((k, _value_key(v)) for k, v in sorted(_plain_attributes(obj).items()))]
    flatten = getattr(obj, "_flatten_layers", None)
    if callable(flatten):
        for layer in flatten(include_self=False, recursive=True):
            parts.append(tuple((k, _value_key(v)) for k, v in sorted(_plain_attributes(layer).items())))
    return tuple(parts)


def _call_cached(func, static_key, build, jit_compile, args):
    """Call the compiled function for `func`'s current Python state.

    The entry is stored under the fingerprint taken *after* the call: a
    trace that itself mutates state `func` reads (a call counter in a global
    list, say) then still hits the cache next time, while state changed
    between calls misses it and retraces.
    """
    owner, identity, before = _owner_and_key(func)
    base = (identity, static_key, jit_compile)
    try:
        per_owner = _CACHE.setdefault(owner, {})
    except TypeError:  # not weak-referenceable: compile for this call only
        return tf.function(build(), autograph=False, jit_compile=jit_compile)(*args)
    compiled = per_owner.get(base + (before,))
    if compiled is None:
        _evict(per_owner, base)
        # reduce_retracing: a new batch size relaxes the shapes once instead
        # of tracing (and compiling) the solver again for every size.
        compiled = tf.function(build(), autograph=False, jit_compile=jit_compile,
                               reduce_retracing=True)
    result = compiled(*args)
    per_owner[base + ("latest",)] = compiled
    # Traces of *our* functions may have mutated the state (a counter, say);
    # that must not invalidate this or the other functions compiled for
    # `func` (the adjoint's forward and backward), so re-key them all.
    after = _owner_and_key(func)[2]
    for key, function in list(per_owner.items()):
        if key[0] is identity and key[-1] == "latest":
            per_owner[key[:-1] + (after,)] = function
    return result


def _evict(per_owner, base):
    """Drop the oldest traces of `base` beyond `_MAX_TRACES` (dicts keep
    insertion order)."""
    keys = [k for k in per_owner if k[:-1] == base and k[-1] != "latest"]
    for key in keys[: max(0, len(keys) - _MAX_TRACES + 1)]:
        del per_owner[key]


def latest(func, static_key, jit_compile=False):
    """The compiled function the last eager call for `(func, static_key)`
    used, or None."""
    owner, identity, _ = _owner_and_key(func)
    try:
        per_owner = _CACHE.get(owner)
    except TypeError:
        return None
    return None if per_owner is None else per_owner.get((identity, static_key, jit_compile, "latest"))


def run(func, static_key, core, args, jit_compile):
    """Run `core(*args)` the way the calling context wants it.

    Eagerly: through the cached compiled function. Inside a graph: inline,
    or, with `jit_compile`, as a nested XLA-compiled function (unless the
    graph is already being compiled by XLA).
    """
    if tf.executing_eagerly():
        return _call_cached(func, static_key, lambda: core, jit_compile, args)
    if jit_compile and not _status.in_xla_context():
        return tf.function(core, autograph=False, jit_compile=True)(*args)
    return core(*args)
