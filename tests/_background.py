"""Subprocess runs that start when collection ends and finish while other tests run.

Why: the suite's subprocess tests (the examples, the two-device training)
spend about four minutes in processes of their own, while the test process
itself keeps about one of the machine's two cores busy. A test module
declares its runs with `declare(key, argv, cwd)` at import; once pytest has
collected, `start(selected_keys)` runs the selected ones one at a time in a
background thread, in declaration order; the test then calls `result(key)`,
which waits for its run and returns the `subprocess.CompletedProcess`. A run
that was never started (its test selected alone, say) runs on demand, in the
foreground.
"""

import os
import subprocess
import sys
import threading

TIMEOUT_S = 900

_declared = {}  # key -> (argv, cwd, env)
_results = {}  # key -> CompletedProcess, or the exception the run raised
_done = {}  # key -> threading.Event
_started = threading.Lock()


def declare(key, argv, cwd, env=None):
    """Declare the run `argv` (a list; `sys.executable` is prepended) in `cwd`,
    known by `key` (the test's node id)."""
    _declared[key] = ([sys.executable, *argv], cwd, dict(os.environ, **(env or {})))


def _run(key):
    argv, cwd, env = _declared[key]
    try:
        _results[key] = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                                       timeout=TIMEOUT_S)
    except Exception as error:  # noqa: BLE001 - handed to the test that asked for the run
        _results[key] = error
    finally:
        _done[key].set()


def start(selected_keys):
    """Start the declared runs whose keys are in `selected_keys` (once)."""
    if not _started.acquire(blocking=False):
        return
    keys = [key for key in _declared if key in selected_keys]
    for key in keys:
        _done[key] = threading.Event()

    def run_all():
        for key in keys:
            _run(key)

    threading.Thread(target=run_all, name="background-subprocess-tests", daemon=True).start()


def result(key):
    """The finished run `key`: waited for, or run now if it was not started."""
    if key not in _done:
        _done[key] = threading.Event()
        _run(key)
    _done[key].wait()
    outcome = _results[key]
    if isinstance(outcome, Exception):
        raise outcome
    return outcome
