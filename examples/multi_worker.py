"""Train an ODELayer model on two workers, kill one mid-training, resume.

Starts two local worker processes that train the README's quick-start model
(`ODELayer(MLP)` + `Dense`) with `tf.distribute.MultiWorkerMirroredStrategy`
and a `strategy.run` training loop (one replica per worker, gradients summed
across workers every step), writing a checkpoint every `--save-every` steps.
Then, with `--kill-at K`, it shows fault tolerance: a second run whose worker
1 is killed (SIGKILL) after step K; like a cluster manager, the launcher then
stops the other worker (its next all-reduce could never complete) and
restarts both; they restore the last checkpoint and finish. The script
prints whether both workers end with the same weights, and whether the
interrupted-and-resumed run ends where the uninterrupted one does.

Each worker learns where it is from `TF_CONFIG`: the cluster's addresses and
its own index. On real machines, give every host the same `"cluster"` list
(`"host:port"` of each worker, the chief first) and its own `"task"` index,
run `TF_CONFIG='...' python examples/multi_worker.py --worker i --dir DIR`
on each, with DIR on a file system they all see. Batches depend only on the
step number, so a resumed run sees the same data as an uninterrupted one.

Usage (repository root):
    python examples/multi_worker.py                  # two workers, 40 steps
    python examples/multi_worker.py --kill-at 17     # plus kill / restart / resume
    python examples/multi_worker.py --steps 20 --kill-at 12 --json   # what the test runs

Keras 3.15's `model.fit` under `MultiWorkerMirroredStrategy` fails for any
model (a Dense model too: "Attempt to convert a value (PerReplica...)"), so
this uses the custom loop, which is the documented way for multi-worker
training with tf.distribute.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

NUM_WORKERS = 2
GLOBAL_BATCH = 64


def parse_args(argv=None):
    """Command-line options (launcher and worker modes share them)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="training steps")
    parser.add_argument("--save-every", type=int, default=5, help="checkpoint interval (steps)")
    parser.add_argument("--kill-at", type=int, default=None,
                        help="also run with worker 1 killed after this step, then resume")
    parser.add_argument("--dir", default=None, help="working directory (default: a temporary one)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per run")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON line")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ports", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.kill_at is not None and not args.save_every < args.kill_at < args.steps:
        parser.error(f"--kill-at must lie after the first checkpoint and before the end: "
                     f"{args.save_every} < kill-at < {args.steps}. Received: --kill-at {args.kill_at}")
    return args


# -- worker ---------------------------------------------------------------------


def batch(step, worker):
    """This worker's half of the global batch of `step` (the same on every run)."""
    rng = np.random.default_rng(1000 + step)
    x = rng.normal(size=(GLOBAL_BATCH, 2)).astype("float32")
    y = (np.sin(x[:, :1]) + x[:, 1:] ** 2).astype("float32")
    return x[worker::NUM_WORKERS], y[worker::NUM_WORKERS]


def build_model():
    """The README's quick-start model, seeded: the same initial weights on
    every worker and run."""
    import keras

    import keras_node

    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((2,)),
        keras_node.ODELayer(keras_node.dynamics.MLP(units=(32,)), t=(0.0, 1.0)),
        keras.layers.Dense(1),
    ])


def run_worker(args):
    """One worker: restore the latest checkpoint if any, train, save weights."""
    if args.ports is not None:  # started by the launcher: a local cluster
        os.environ["TF_CONFIG"] = json.dumps({
            "cluster": {"worker": [f"localhost:{port}" for port in args.ports.split(",")]},
            "task": {"type": "worker", "index": args.worker},
        })
    elif "TF_CONFIG" not in os.environ:
        raise SystemExit("--worker needs TF_CONFIG in the environment (or --ports for a local cluster)")
    import keras
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = build_model()
        optimizer = keras.optimizers.Adam(0.01)
        optimizer.build(model.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, name="step")

    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)
    chief_dir = os.path.join(args.dir, "checkpoints")
    # Every worker takes part in saving (mirrored values are read collectively);
    # only the chief's copy is kept, as the tf.distribute guide recommends.
    own_dir = chief_dir if args.worker == 0 else os.path.join(args.dir, f"scratch_worker_{args.worker}")
    manager = tf.train.CheckpointManager(checkpoint, own_dir, max_to_keep=2)
    latest = tf.train.latest_checkpoint(chief_dir)
    if latest:
        checkpoint.restore(latest)
        print(f"worker {args.worker}: resumed from {os.path.basename(latest)} at step {int(step.numpy())}",
              flush=True)

    @tf.function
    def train_step(x, y):
        def replica_step(x, y):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum((model(x, training=True) - y) ** 2) / GLOBAL_BATCH
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            return loss

        losses = strategy.run(replica_step, args=(x, y))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    done = int(step.numpy())
    while done < args.steps:
        loss = train_step(*map(tf.constant, batch(done, args.worker)))
        done += 1
        step.assign(done)
        if done % args.save_every == 0:
            manager.save(checkpoint_number=done)
        print(f"worker {args.worker}: step {done} loss {float(loss):.6f}", flush=True)
    np.savez(os.path.join(args.dir, f"weights_worker_{args.worker}.npz"),
             *[v.numpy() for v in model.trainable_variables])


# -- launcher -------------------------------------------------------------------


def free_ports(count):
    """`count` localhost ports that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(args, directory):
    """Both worker processes, started with fresh ports."""
    ports = ",".join(map(str, free_ports(NUM_WORKERS)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", str(i), "--ports", ports,
                              "--dir", directory, "--steps", str(args.steps),
                              "--save-every", str(args.save_every)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for i in range(NUM_WORKERS)]


def finish(workers, timeout):
    """Wait for the workers; raise with their output if one fails."""
    deadline = time.monotonic() + timeout
    for i, worker in enumerate(workers):
        try:
            out, err = worker.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for w in workers:
                w.kill()
            raise RuntimeError(f"worker {i} did not finish within {timeout:.0f} s")
        if worker.returncode != 0:
            raise RuntimeError(f"worker {i} failed ({worker.returncode}):\n{out[-2000:]}\n{err[-4000:]}")


def kill_after(workers, step, timeout):
    """SIGKILL worker 1 once it reports `step`, then stop worker 0 (it would
    wait forever for its peer's all-reduce), as a cluster manager does."""
    deadline = time.monotonic() + timeout
    for line in workers[1].stdout:
        if line.startswith(f"worker 1: step {step} ") or time.monotonic() > deadline:
            break
    workers[1].send_signal(signal.SIGKILL)
    workers[0].send_signal(signal.SIGKILL)
    for worker in workers:
        worker.wait()


def weights(directory):
    """Each worker's final weights, as lists of arrays."""
    result = []
    for i in range(NUM_WORKERS):
        with np.load(os.path.join(directory, f"weights_worker_{i}.npz")) as data:
            result.append([data[f"arr_{k}"] for k in range(len(data.files))])
    return result


def largest_difference(a, b):
    """Largest absolute difference between two lists of arrays."""
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def main(argv=None):
    """Launch the runs and report."""
    args = parse_args(argv)
    if args.worker is not None:
        return run_worker(args)
    root = args.dir or tempfile.mkdtemp(prefix="keras_node_multi_worker_")
    plain = os.path.join(root, "uninterrupted")
    os.makedirs(plain, exist_ok=True)
    started = time.perf_counter()
    finish(start_workers(args, plain), args.timeout)
    results = {"seconds_uninterrupted": time.perf_counter() - started}
    final = weights(plain)
    results["worker_difference"] = largest_difference(*final)
    initial = [v.numpy() for v in build_model().trainable_variables]
    results["change_from_initial"] = largest_difference(final[0], initial)
    if args.kill_at is not None:
        resumed = os.path.join(root, "interrupted")
        os.makedirs(resumed, exist_ok=True)
        kill_after(start_workers(args, resumed), args.kill_at, args.timeout)
        results["checkpoints_before_restart"] = sorted(
            f for f in os.listdir(os.path.join(resumed, "checkpoints")) if f.endswith(".index"))
        finish(start_workers(args, resumed), args.timeout)
        again = weights(resumed)
        results["resumed_worker_difference"] = largest_difference(*again)
        results["resumed_vs_uninterrupted"] = largest_difference(again[0], final[0])
    if args.json:
        print(json.dumps(results))
    else:
        for key, value in results.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
