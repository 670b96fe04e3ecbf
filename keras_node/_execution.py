"""One execution path: the solvers are graph code; eager calls compile it once.

`run(func, key, core, arg, jit)` computes `core(func, arg)`:

- while a graph is being built (inside `tf.function`, Keras' `fit`,
  `predict` ...): inline, or as a nested XLA-compiled function when `jit`
  (inline again inside `inline_in_graphs()`, for model converters);
- eagerly: through a `tf.function` of `core` (XLA-compiled when `jit`) built
  once per `(func, key, jit)`, where `key` holds the options that shape the
  computation. `arg` (the call's tensors and a few Python values such as the
  time direction) is that function's argument, so TensorFlow's own cache
  keys it by shapes and dtypes.

Cores are pure computations; callers check their status outside (where
TensorFlow can raise even when the core ran under XLA).

The rule for Python state (documented on `odeint`): it is `tf.function`'s.
Python values `func` reads (numbers, numpy arrays, attributes, globals) are
captured when a call first traces it; tensors and variables are read on every
call. A later change of such a Python value is not seen by later eager calls
of the same `func`: hold it in a `tf.Variable`, or pass a new function.

The cache holds the user's function weakly (bound methods by their object),
so it never keeps a model alive.
"""

import contextlib
import threading
import weakref

import tensorflow as tf

from keras_node import _status

_CACHE = weakref.WeakKeyDictionary()
_INLINE = threading.local()  # .active: inside inline_in_graphs() (per thread: tracing is)


def _owner_and_method(func):
    """What to hold weakly, and which function of it (for bound methods)."""
    bound_to = getattr(func, "__self__", None)
    if bound_to is not None and hasattr(func, "__func__"):
        return bound_to, func.__func__
    return func, None


class _Tensor:
    """Stands for a tensor of `arg` in its template (see `_split`)."""


_TENSOR = _Tensor()


def _split(arg):
    """`(tensors, template)`: the tensors of the nest `arg`, and `arg` with
    each of them replaced by `_TENSOR` (hashable when the other leaves are).

    The compiled function takes only the tensors and rebuilds `arg` from
    the template, which joins the cache key: TensorFlow then types a short
    list of tensors per call instead of every leaf of the nest (dozens of
    Python values and Nones cost more than the solve on small problems).
    """
    tensors = []

    def hollow(leaf):
        if isinstance(leaf, (tf.Tensor, tf.Variable)):
            tensors.append(leaf)
            return _TENSOR
        return leaf

    template = tf.nest.map_structure(hollow, arg)
    hash(template)  # TypeError for unhashable leaves: the caller passes `arg` whole
    return tuple(tensors), template


def _rebuild(template, tensors):
    remaining = iter(tensors)
    return tf.nest.map_structure(lambda leaf: next(remaining) if leaf is _TENSOR else leaf, template)


def _compile(func, core, jit, template=None):
    """A `tf.function` of `core` that reaches `func` through a weak reference;
    it takes `arg` whole, or only its tensors when a `template` is given."""
    owner, method = _owner_and_method(func)
    owner_ref = weakref.ref(owner)

    def traced(*args):
        target = owner_ref()
        arg = args[0] if template is None else _rebuild(template, args)
        return core(target if method is None else method.__get__(target), arg)

    # reduce_retracing: a new batch size relaxes the shapes once instead of
    # tracing (and compiling) the solver again for every size.
    return tf.function(traced, autograph=False, jit_compile=jit, reduce_retracing=True)


def _compiled(func, key, core, jit, arg):
    """`(compiled function, its arguments)` for `arg`."""
    try:
        tensors, template = _split(arg)
    except TypeError:
        tensors, template = (arg,), None
    owner, method = _owner_and_method(func)
    try:
        entries = _CACHE.setdefault(owner, {})
    except TypeError:  # not weak-referenceable: compile for this call only
        return tf.function(lambda a: core(func, a), autograph=False, jit_compile=jit), (arg,)
    compiled = entries.get((method, key, jit, template))
    if compiled is None:
        compiled = entries[(method, key, jit, template)] = _compile(func, core, jit, template)
    return compiled, tensors


def run(func, key, core, arg, jit=False):
    """`core(func, arg)`: compiled once per `(func, key, jit)` when eager;
    inline in graphs (a nested XLA function when `jit`, except inside
    `inline_in_graphs()`)."""
    if tf.executing_eagerly():
        compiled, args = _compiled(func, key, core, jit, arg)
        return compiled(*args)
    if jit and not _status.in_xla_context() and not getattr(_INLINE, "active", False):
        return tf.function(lambda: core(func, arg), autograph=False, jit_compile=True)()
    return core(func, arg)


@contextlib.contextmanager
def inline_in_graphs():
    """Graphs traced inside build every solve inline, never as a nested XLA
    function (eager calls are unchanged).

    Why a separate trace for model converters: tf2onnx cannot convert a
    nested XLA function (grappler never inlines a call TensorFlow must
    compile), and the inline alternative, `tf.xla.experimental.jit_scope`,
    does not compile the loop: TensorFlow lowers the while loop to
    Switch/Merge before clustering, and, kept functional, auto-clustering
    rejects a loop that reads resource variables, as every Keras dynamics'
    loop does (benchmarks/RESULTS.md, 11). So `predict` and `fit` keep the
    nested XLA function, and converters get this trace.
    """
    previous = getattr(_INLINE, "active", False)
    _INLINE.active = True
    try:
        yield
    finally:
        _INLINE.active = previous


def traced_variables(func, key, core, arg, jit=False):
    """The trainable variables the eagerly compiled `core` for `arg` reads
    (it is traced now if it was not yet)."""
    compiled, args = _compiled(func, key, core, jit, arg)
    concrete = compiled.get_concrete_function(*args)
    return list(concrete.trainable_variables)
