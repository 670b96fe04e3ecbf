"""Baseline timings of the PEER libraries (no keras_node involved).

Runs, for every adapter in ``peers.ADAPTERS`` and for torchdiffeq on one
thread (``torchdiffeq_1thr``, robust to a shared, busy machine):

* ``mlp`` (and ``mlp_contractive``), T = 1, float32, rtol 1e-5, atol 1e-7:
  ``"forward"`` and ``"adjoint"`` (seminorm where the library has one);
* ``spiral``, T = 25 (1000 outputs), ``"forward"``: float32 at rtol 1e-5 /
  atol 1e-7, float64 at the same tolerances and at rtol 1e-8 / atol 1e-10;

and prints a markdown table with NFEs, median/min/first-call times and the
errors against the float64 scipy reference (``peers.reference_solution`` /
``peers.reference_gradient``).

Each library runs in its own subprocess (``--worker NAME``), so that no
library's thread pools, JIT caches or import-time initialisation touch
another's numbers; the worker prints one JSON object per case.

Usage (from the repository root)::

    .venv/bin/python benchmarks/peers_baseline.py [--repeats 20] [--warmup 3]
        [--libraries torchdiffeq,tfp_graph,tfp_xla,diffrax,torchdiffeq_1thr]
        [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import subprocess
import sys

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, os.path.dirname(_HERE))

from benchmarks import peers  # noqa: E402

# The peers' adapters plus torchdiffeq on ONE thread: on a 2-core machine
# shared with other busy processes, torch's 2 OpenMP threads slow down 10-100x
# (they wait for each other at every parallel region), 1 thread far less.
BASELINE_ADAPTERS = dict(peers.ADAPTERS)
BASELINE_ADAPTERS["torchdiffeq_1thr"] = functools.partial(
    peers.run_torchdiffeq, num_threads=1)

# (problem, T, dtype, rtol, atol, mode)
CASES = [
    ("mlp", 1.0, "float32", 1e-5, 1e-7, "forward"),
    ("mlp", 1.0, "float32", 1e-5, 1e-7, "adjoint"),
    ("mlp_contractive", 1.0, "float32", 1e-5, 1e-7, "forward"),
    ("mlp_contractive", 1.0, "float32", 1e-5, 1e-7, "adjoint"),
    ("spiral", 25.0, "float32", 1e-5, 1e-7, "forward"),
    ("spiral", 25.0, "float64", 1e-5, 1e-7, "forward"),
    ("spiral", 25.0, "float64", 1e-8, 1e-10, "forward"),
]


def _rel_err(x, ref):
    """max |x - ref| / max |ref| (a scale-free sup-norm error)."""
    return float(np.max(np.abs(np.asarray(x, np.float64) - ref)) / np.max(np.abs(ref)))


def run_worker(library: str, repeats: int, warmup: int) -> None:
    """Run every case on one library, printing one JSON line per case."""
    if library.startswith("tfp"):
        import tensorflow as tf
        tf.get_logger().setLevel("ERROR")  # retracing / deprecation chatter
    adapter = BASELINE_ADAPTERS[library]
    for problem, T, dtype, rtol, atol, mode in CASES:
        row = {"library": library, "problem": problem, "T": T, "dtype": dtype,
               "rtol": rtol, "atol": atol, "mode": mode}
        try:
            r = adapter(problem, T, dtype, rtol, atol, mode,
                        repeats=repeats, warmup=warmup)
        except peers.UnsupportedMode as e:
            row["error"] = f"unsupported: {e}"
        except Exception as e:  # noqa: BLE001 - report, keep going
            row["error"] = f"{type(e).__name__}: {e}"
        else:
            ref = peers.reference_solution(problem, T)
            row.update({k: r[k] for k in (
                "variant", "seminorm", "nfe_forward", "nfe_backward",
                "median_ms", "min_ms", "first_call_ms", "repeats")})
            row["out_err"] = _rel_err(r["output"], ref)
            if r["grad_h0"] is not None:
                g = peers.reference_gradient(problem, T)
                row["grad_h0_err"] = _rel_err(r["grad_h0"], g["h0"])
                row["grad_param_err"] = max(
                    _rel_err(r["grad_params"][k], g[k]) for k in r["grad_params"])
        print("@@ROW " + json.dumps(row), flush=True)


def load_average() -> str:
    """The 1/5/15-minute load averages (other jobs on a 2-core box skew times)."""
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "unknown"


def machine_info() -> dict:
    """nproc, CPU model, date, load, Python and peer versions."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load": load_average(),
        "python": platform.python_version(),
        "versions": peers.library_versions(),
    }


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def markdown_table(rows) -> str:
    """Render worker rows as a GitHub markdown table."""
    head = ("| problem | dtype | rtol / atol | mode | library | NFE fwd | NFE bwd "
            "| median ms | min ms | first call ms | out rel err "
            "| dL/dh0 rel err | dL/dθ rel err |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        mode = r["mode"]
        if mode == "adjoint" and r.get("seminorm") is False:
            mode = "adjoint (no seminorm)"
        elif mode == "adjoint":
            mode = "adjoint (seminorm)"
        common = (f"| {r['problem']} T={r['T']:g} | {r['dtype']} "
                  f"| {r['rtol']:g} / {r['atol']:g} | {mode} | {r['library']} ")
        if "error" in r:
            lines.append(common + f"| {r['error']} " + "| " * 7 + "|")
            continue
        lines.append(
            common
            + f"| {r['nfe_forward']} | {_fmt(r['nfe_backward'], 'd')} "
            + f"| {r['median_ms']:.2f} | {r['min_ms']:.2f} "
            + f"| {r['first_call_ms']:.0f} | {r['out_err']:.1e} "
            + f"| {_fmt(r.get('grad_h0_err'), '.1e')} "
            + f"| {_fmt(r.get('grad_param_err'), '.1e')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--libraries", default=",".join(BASELINE_ADAPTERS))
    ap.add_argument("--quick", action="store_true",
                    help="3 repeats, 1 warm-up (smoke test)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup = 3, 1
    if args.worker:
        run_worker(args.worker, args.repeats, args.warmup)
        return 0

    info = machine_info()
    print(f"# peers baseline  ({info['date']})")
    print(f"machine: nproc={info['nproc']}, CPU: {info['cpu']}, "
          f"Python {info['python']}, load average at start {info['load']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    print(f"repeats={args.repeats}, warmup={args.warmup}; times in ms "
          "(median/min over the repeats; first call = tracing + compile)")
    print(flush=True)
    rows = []
    for lib in args.libraries.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", lib,
               "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = [json.loads(line[6:]) for line in proc.stdout.splitlines()
               if line.startswith("@@ROW ")]
        if proc.returncode != 0 or not got:
            tail = "\n".join(proc.stderr.splitlines()[-15:])
            print(f"worker {lib} failed (exit {proc.returncode}):\n{tail}",
                  file=sys.stderr)
        rows.extend(got)
    order = {c[:6]: i for i, c in enumerate(CASES)}
    libs = args.libraries.split(",")
    rows.sort(key=lambda r: (order[(r["problem"], r["T"], r["dtype"], r["rtol"],
                                     r["atol"], r["mode"])],
                             libs.index(r["library"])))
    print(markdown_table(rows))
    print(f"\nload average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
