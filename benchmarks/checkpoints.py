"""Adjoint accuracy vs `adjoint_checkpoints` on contractive dynamics (issue 4).

Problem: `mlp_contractive` (MLP field, state (256, 16), hidden 64, weights
scaled by 6/sqrt(fan_in)), float64, dopri5, rtol=1e-5, atol=1e-7, horizons
T = 1, 4, 16. For keras_node K = 0, 4, 8, 16, 64 and direct backprop, and for
torchdiffeq's `odeint_adjoint` (seminorm) and direct backprop when installed:
the relative error of dL/dh0 against the scipy DOP853 (1e-12) continuous
adjoint reference (`peers.reference_gradient`), the backward NFE and the
median wall time of forward + backward.

Usage: python benchmarks/checkpoints.py [--horizons 1,4,16] [--ks 0,4,8,16,64]
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

PROBLEM = "mlp_contractive"
TOL = dict(rtol=1e-5, atol=1e-7)


def _rel(x, ref):
    return float(np.linalg.norm(np.asarray(x) - ref) / np.linalg.norm(ref))


def rows_for(T, ks, repeats):
    """One table row per method at horizon T."""
    ref = peers.reference_gradient(PROBLEM, T)["h0"]
    rows = []
    for k in ks:
        r = run_keras_node(PROBLEM, T, "float64", mode="adjoint", checkpoints=k,
                           repeats=repeats, warmup=1, **TOL)
        rows.append((f"keras_node adjoint K={k}", r, _rel(r["grad_h0"], ref)))
    r = run_keras_node(PROBLEM, T, "float64", mode="backprop", repeats=repeats, warmup=1, **TOL)
    rows.append(("keras_node backprop", r, _rel(r["grad_h0"], ref)))
    try:
        for mode, label in (("adjoint", "torchdiffeq adjoint (seminorm)"),
                            ("backprop", "torchdiffeq backprop")):
            r = peers.run_torchdiffeq(PROBLEM, T, "float64", mode=mode, repeats=max(1, repeats // 2),
                                      warmup=0, num_threads=1, **TOL)
            rows.append((label, r, _rel(r["grad_h0"], ref)))
    except ImportError:
        pass
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--horizons", default="1,4,16")
    ap.add_argument("--ks", default="0,4,8,16,64")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    info = machine_info()
    print(f"# adjoint checkpoints ({info['date']}; {info['nproc']} cores, {info['cpu']}, "
          f"load {info['load']})")
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
