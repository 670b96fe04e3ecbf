"""Adjoint accuracy vs `adjoint_checkpoints` on contractive dynamics (issue 4).

`mlp_contractive` (problems.py), float64, dopri5, rtol=1e-5, atol=1e-7. For
keras_node's adjoint with K checkpoints, keras_node's direct backprop and,
when installed, torchdiffeq's `odeint_adjoint` (seminorm) and backprop: the
relative error ||dL/dh0 - ref|| / ||ref|| against the scipy DOP853 (1e-12)
continuous adjoint (`peers.reference_gradient`), the NFEs and the median
wall time of forward + backward.

Usage: python benchmarks/checkpoints.py [--horizons 1,4,16] [--ks 0,4,8,16,64] [--repeats 5]
(quick check: --horizons 1 --ks 16 --repeats 1)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from benchmarks import peers  # noqa: E402
from benchmarks.keras_node_adapter import run_keras_node  # noqa: E402

PROBLEM = "mlp_contractive"
TOL = dict(rtol=1e-5, atol=1e-7)


def rows_for(T, ks, repeats):
    """`(label, result, dL/dh0 relative error)` per method at horizon T."""
    ref = peers.reference_gradient(PROBLEM, T)["h0"]
    runs = [(f"keras_node adjoint K={k}", run_keras_node, dict(mode="adjoint", checkpoints=k))
            for k in ks]
    runs.append(("keras_node backprop", run_keras_node, dict(mode="backprop")))
    if importlib.util.find_spec("torchdiffeq"):  # slow: half the repeats, no warm-up
        runs += [(label, peers.run_torchdiffeq, dict(mode=mode, repeats=max(1, repeats // 2), warmup=0))
                 for mode, label in (("adjoint", "torchdiffeq adjoint (seminorm)"),
                                     ("backprop", "torchdiffeq backprop"))]
    rows = []
    for label, run, kw in runs:
        r = run(PROBLEM, T, "float64", **TOL, **{"repeats": repeats, "warmup": 1, **kw})
        rows.append((label, r, float(np.linalg.norm(r["grad_h0"] - ref) / np.linalg.norm(ref))))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--horizons", default="1,4,16", help="comma-separated T values")
    ap.add_argument("--ks", default="0,4,8,16,64", help="comma-separated adjoint_checkpoints")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    print(f"# adjoint checkpoints ({peers.machine_info()})")
    print(f"problem {PROBLEM}, float64, dopri5, rtol={TOL['rtol']}, atol={TOL['atol']}; "
          "error = ||dL/dh0 - ref|| / ||ref||, ref = scipy DOP853 1e-12 continuous adjoint\n")
    print("| T | method | NFE fwd | NFE bwd | median ms (fwd+bwd) | dL/dh0 rel err |")
    print("|---|---|---|---|---|---|")
    for T in [float(x) for x in args.horizons.split(",")]:
        for label, r, err in rows_for(T, [int(k) for k in args.ks.split(",")], args.repeats):
            nb = "-" if r["nfe_backward"] is None else r["nfe_backward"]
            print(f"| {T:g} | {label} | {r['nfe_forward']} | {nb} | {r['median_ms']:.1f} | {err:.2e} |",
                  flush=True)


if __name__ == "__main__":
    main()
