"""The comparison harness: keras_node vs torchdiffeq, tfp.math.ode and diffrax.

Every library runs every case in its own subprocess (so thread pools and JIT
caches never interfere), on the identical problems of `problems.py`
(weights drawn once from a seed). Prints a markdown table of NFE, median /
min / first-call times and errors against the scipy reference, then the
ratios keras_node / each peer measured in the same run, and keras_node's
overhead factor (time / (NFE x time of one evaluation)) on the large MLP.
`--chart PATH` also writes a PNG bar chart (needs matplotlib).

Usage (repository root; peers are optional, see requirements.txt):
    python benchmarks/run_benchmarks.py [--repeats 20] [--quick] [--chart benchmarks/chart.png]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(_HERE))

import numpy as np  # noqa: E402

from benchmarks import peers, peers_baseline  # noqa: E402
from benchmarks.keras_node_adapter import run_keras_node  # noqa: E402

ADAPTERS = {
    "keras_node": functools.partial(run_keras_node, variant="auto"),
    "keras_node_graph": functools.partial(run_keras_node, variant="graph"),
    "keras_node_xla": functools.partial(run_keras_node, variant="xla"),
    "torchdiffeq": functools.partial(peers.run_torchdiffeq, num_threads=1),
    "tfp_graph": peers.run_tfp_graph,
    "tfp_xla": peers.run_tfp_xla,
    "diffrax": peers.run_diffrax,
}
# (problem, T, dtype, rtol, atol, mode). "mlp_contractive" is the MLP whose
# cost matches the reference numbers (~205 forward NFE).
CASES = [
    ("mlp_contractive", 1.0, "float32", 1e-5, 1e-7, "forward"),
    ("mlp_contractive", 1.0, "float32", 1e-5, 1e-7, "adjoint"),
    ("mlp_contractive", 1.0, "float32", 1e-5, 1e-7, "backprop"),
    ("spiral", 25.0, "float32", 1e-5, 1e-7, "forward"),
    ("mlp_large", 1.0, "float32", 1e-5, 1e-7, "forward"),
    ("mlp_large", 1.0, "float32", 1e-5, 1e-7, "adjoint"),
]
CASES_QUICK = CASES[:2] + CASES[3:4]


def run_worker(library, repeats, warmup, quick):
    """Run the cases for one library; print one JSON line per case."""
    import tensorflow as tf
    tf.get_logger().setLevel("ERROR")
    adapter = ADAPTERS[library]
    for problem, T, dtype, rtol, atol, mode in (CASES_QUICK if quick else CASES):
        row = {"library": library, "problem": problem, "T": T, "dtype": dtype,
               "rtol": rtol, "atol": atol, "mode": mode}
        try:
            r = adapter(problem, T, dtype, rtol, atol, mode, repeats=repeats, warmup=warmup)
        except peers.UnsupportedMode as e:
            row["error"] = f"unsupported: {e}"
        except Exception as e:  # noqa: BLE001 - report, keep going
            row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        else:
            ref = peers.reference_solution(problem, T)
            row.update({k: r[k] for k in ("variant", "seminorm", "nfe_forward", "nfe_backward",
                                          "median_ms", "min_ms", "first_call_ms", "repeats")})
            row["out_err"] = peers_baseline._rel_err(r["output"], ref)
            if r["grad_h0"] is not None and problem != "mlp_large":
                g = peers.reference_gradient(problem, T)
                row["grad_h0_err"] = peers_baseline._rel_err(r["grad_h0"], g["h0"])
                row["grad_param_err"] = max(peers_baseline._rel_err(r["grad_params"][k], g[k])
                                            for k in r["grad_params"])
        print("@@ROW " + json.dumps(row), flush=True)
    if library == "keras_node" and not quick:
        print("@@OVERHEAD " + json.dumps(overhead_factor()), flush=True)


def overhead_factor(repeats=20):
    """keras_node (auto) on mlp_large: forward time / (NFE x one evaluation)."""
    import tensorflow as tf

    from benchmarks.keras_node_adapter import _field
    from benchmarks.problems import get_problem

    p = get_problem("mlp_large")
    params = {k: tf.Variable(v) for k, v in p.params_as("float32").items()}
    f = _field(p, params)
    y0 = tf.constant(p.y0_as("float32"))
    one = tf.function(lambda y: f(0.0, y), jit_compile=True)
    one(y0).numpy()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        one(y0).numpy()
        times.append(time.perf_counter() - t0)
    one_ms = float(np.median(times)) * 1e3
    r = run_keras_node(p, 1.0, "float32", 1e-5, 1e-7, "forward", repeats=repeats, warmup=2)
    return {"one_eval_ms": one_ms, "forward_ms": r["median_ms"], "nfe": r["nfe_forward"],
            "overhead": r["median_ms"] / (r["nfe_forward"] * one_ms)}


def ratio_table(rows):
    """keras_node (auto) median / each peer's median, per case."""
    peers_seen = [lib for lib in ADAPTERS if not lib.startswith("keras_node")]
    by = {(r["problem"], r["T"], r["mode"], r["library"]): r for r in rows if "error" not in r}
    lines = ["| case | " + " | ".join(f"keras_node / {p}" for p in peers_seen) + " |",
             "|---|" + "---|" * len(peers_seen)]
    for problem, T, _, _, _, mode in CASES:
        mine = by.get((problem, T, mode, "keras_node"))
        if mine is None:
            continue
        cells = []
        for p in peers_seen:
            theirs = by.get((problem, T, mode, p))
            cells.append("-" if theirs is None else f"{mine['median_ms'] / theirs['median_ms']:.2f}x")
        lines.append(f"| {problem} T={T:g} {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart(rows, path):
    """Grouped bar chart of median ms (log scale) per case and library."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [(c[0], c[1], c[5]) for c in CASES]
    libs = list(ADAPTERS)
    by = {(r["problem"], r["T"], r["mode"], r["library"]): r["median_ms"]
          for r in rows if "error" not in r}
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(libs)
    for j, lib in enumerate(libs):
        values = [by.get(c + (lib,), np.nan) for c in cases]
        ax.bar(np.arange(len(cases)) + j * width, values, width, label=lib)
    ax.set_xticks(np.arange(len(cases)) + 0.4 - width / 2)
    ax.set_xticklabels([f"{p}\nT={T:g} {m}" for p, T, m in cases], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("median ms (log)")
    ax.set_title("keras_node vs peers (2-core CPU, float32, dopri5 rtol=1e-5 atol=1e-7)")
    ax.legend(fontsize=8, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--libraries", default=",".join(ADAPTERS))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--chart", default=None)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup = 3, 1
    if args.worker:
        run_worker(args.worker, args.repeats, args.warmup, args.quick)
        return 0
    info = peers_baseline.machine_info()
    print(f"# keras_node benchmarks ({info['date']})")
    print(f"machine: nproc={info['nproc']}, CPU: {info['cpu']}, Python {info['python']}, "
          f"load average at start {info['load']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    print(f"repeats={args.repeats}, warmup={args.warmup}; torchdiffeq on 1 thread\n", flush=True)
    rows, overhead = [], None
    for lib in args.libraries.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", lib, "--repeats",
               str(args.repeats), "--warmup", str(args.warmup)] + (["--quick"] if args.quick else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            if line.startswith("@@ROW "):
                rows.append(json.loads(line[6:]))
            elif line.startswith("@@OVERHEAD "):
                overhead = json.loads(line[11:])
        if proc.returncode != 0:
            print(f"worker {lib} failed:\n" + "\n".join(proc.stderr.splitlines()[-10:]), file=sys.stderr)
    print(peers_baseline.markdown_table(rows))
    print("\nRatios of medians (< 1: keras_node faster):\n")
    print(ratio_table(rows))
    if overhead:
        print(f"\nOverhead factor, mlp_large forward: {overhead['forward_ms']:.1f} ms / "
              f"({overhead['nfe']} NFE x {overhead['one_eval_ms']:.3f} ms) = {overhead['overhead']:.2f}")
    print(f"\nload average at end: {peers_baseline.load_average()}")
    if args.chart:
        chart(rows, args.chart)
        print(f"chart written to {args.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
