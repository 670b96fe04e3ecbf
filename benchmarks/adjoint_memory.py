"""Peak memory of odeint_adjoint vs backprop (odeint) as the horizon grows.

The MLP problem: f(h) = tanh(h W1 + b1) W2 + b2, state (256, 16), hidden
width 64, float64, dopri5 at rtol=1e-5, atol=1e-7, loss sum(h(T)**2),
gradients for h0 and the four weights; horizons T = 1, 4, 16.

Each (gradient, T) configuration runs in a fresh subprocess
(tests/memory_probe.py), because peak RSS only ever grows within a process.
The probe warms up (traces and compiles) on a tiny horizon first; "extra" is
the peak RSS beyond that warm baseline, i.e. what the solve itself needed.

Usage:
    python benchmarks/adjoint_memory.py [--horizons 1 4 16] [--batch 256]
        [--checkpoints K] [--json out.json]
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.path.join(ROOT, "tests", "memory_probe.py")


def measure(gradient, horizon, batch, rtol, atol, checkpoints=None):
    """Run the probe for one configuration in a fresh process; return its run record."""
    command = [
        sys.executable, PROBE, "--gradient", gradient, "--problem", "mlp",
        "--batch", str(batch), "--rtol", str(rtol), "--atol", str(atol),
        "--horizons", str(horizon),
    ]
    if checkpoints is not None and gradient == "adjoint":
        command += ["--checkpoints", str(checkpoints)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    (run,) = result["runs"]
    return dict(run, gradient=gradient, baseline_mb=result["baseline_mb"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--horizons", type=float, nargs="+", default=[1.0, 4.0, 16.0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--atol", type=float, default=1e-7)
    parser.add_argument("--checkpoints", type=int, default=None,
                        help="adjoint_checkpoints (default: keras_node.DEFAULT_CHECKPOINTS)")
    parser.add_argument("--json", help="also write the records to this file")
    args = parser.parse_args(argv)

    records = []
    header = (f"{'gradient':<9} {'T':>5} {'steps':>6} {'baseline MB':>12} {'peak MB':>9} "
              f"{'extra MB':>9} {'seconds':>8}")
    print(f"mlp problem: state ({args.batch}, 16), hidden 64, float64, dopri5 "
          f"rtol={args.rtol:g} atol={args.atol:g}; one fresh process per row")
    print(header)
    print("-" * len(header))
    for gradient in ("adjoint", "backprop"):
        for horizon in args.horizons:
            r = measure(gradient, horizon, args.batch, args.rtol, args.atol, args.checkpoints)
            records.append(r)
            print(f"{gradient:<9} {horizon:>5g} {r['num_steps']:>6d} {r['baseline_mb']:>12.1f} "
                  f"{r['peak_mb']:>9.1f} {r['extra_mb']:>9.1f} {r['seconds']:>8.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)


if __name__ == "__main__":
    main()
