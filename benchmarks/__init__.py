"""Benchmark harness: shared problems (problems.py), peer adapters (peers.py)."""
