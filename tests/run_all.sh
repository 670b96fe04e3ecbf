#!/usr/bin/env bash
# The whole test suite, as the README's test command and CI run it: two
# pytest processes side by side, tests/test_[a-n]*.py and tests/test_[o-z]*.py
# (side by side on 2 cores, 2026-12-08: the [a-n] files but test_events.py
# took 15.0 min, the [o-z] files with it 18.5 min before test_replay_backprop.py
# lost 6 of its cases; test_events.py takes ~1.4).
#
# Why two, and why side by side: one process holding every compiled function
# of the suite grew to several GB; and a test process keeps about one core
# busy (tracing is single-threaded Python), so on a 2-core machine the
# halves together take little more than the longer one (measured 12.2 min
# side by side vs ~21 min one after the other). The [a-n] half's output is
# printed when both are done; the exit status fails if either half fails.
# Extra arguments go to both pytest runs.
set -u
cd "$(dirname "$0")/.."
log="$(mktemp)"
python -m pytest -q tests/test_[a-n]*.py "$@" > "$log" 2>&1 &
first=$!
python -m pytest -q tests/test_[o-z]*.py "$@"
second_status=$?
wait "$first"
first_status=$?
echo "--- tests/test_[a-n]*.py ---"
cat "$log"
rm -f "$log"
[ "$first_status" -eq 0 ] && [ "$second_status" -eq 0 ]
