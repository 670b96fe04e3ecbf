"""keras_node vs torchdiffeq: same algorithm, same decisions (issue 2).

On the MLP fields of `problems.py` (state (256, 16), hidden 64, weights from
one numpy seed), dopri5 at rtol=1e-5, atol=1e-7 over [0, T], float32 and
float64: prints both libraries' forward NFE and their ratio (same tableau,
same error norm, same step-size controller, same initial-step rule: the
ratio should be 1), the max difference of the solutions, and the forward
wall-time ratio. Needs `pip install torch==2.13.0 torchdiffeq`.

Usage: python benchmarks/compare_torchdiffeq.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(_HERE))

import numpy as np  # noqa: E402

from benchmarks import peers  # noqa: E402
from benchmarks.keras_node_adapter import run_keras_node  # noqa: E402
from benchmarks.peers_baseline import machine_info  # noqa: E402

CASES = [("mlp", 1.0), ("mlp", 4.0), ("mlp_contractive", 1.0)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    info = machine_info()
    print(f"# keras_node vs torchdiffeq ({info['date']}; {info['nproc']} cores, {info['cpu']}, "
          f"load {info['load']}); dopri5, rtol=1e-5, atol=1e-7; torchdiffeq on 1 thread\n")
    print("| problem | dtype | NFE keras_node | NFE torchdiffeq | NFE ratio | max |Δy| "
          "| keras_node ms | torchdiffeq ms | time ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, T in CASES:
        for dtype in ("float32", "float64"):
            mine = run_keras_node(name, T, dtype, 1e-5, 1e-7, "forward", repeats=args.repeats)
            theirs = peers.run_torchdiffeq(name, T, dtype, 1e-5, 1e-7, "forward",
                                           repeats=args.repeats, num_threads=1)
            diff = float(np.max(np.abs(mine["output"][-1] - theirs["output"][-1])))
            print(f"| {name} T={T:g} | {dtype} | {mine['nfe_forward']} | {theirs['nfe_forward']} "
                  f"| {mine['nfe_forward'] / theirs['nfe_forward']:.3f} | {diff:.1e} "
                  f"| {mine['median_ms']:.2f} | {theirs['median_ms']:.2f} "
                  f"| {mine['median_ms'] / theirs['median_ms']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
