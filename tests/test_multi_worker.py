"""Two-worker training with MultiWorkerMirroredStrategy, and resuming after a
worker is killed (issue 19; examples/multi_worker.py).

The example starts two local worker processes (localhost ports in
`TF_CONFIG`) three times: an uninterrupted run; a run whose worker 1 is
killed after step 10 (the other worker is stopped too, as a cluster manager
would); and the restart, which restores the last checkpoint (step 8)
and finishes. It runs in the background from the end of collection
(`_background.py`).
"""

import json
import pathlib
import shutil
import tempfile

import pytest

import _background

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "multi_worker.py"
WORK_DIR = tempfile.mkdtemp(prefix="keras_node_multi_worker_test_")
KEY = f"{__name__}::test_two_workers_agree_and_a_killed_run_resumes_to_the_same_weights"

pytestmark = pytest.mark.slow

_background.declare(KEY, [str(EXAMPLE), "--steps", "14", "--save-every", "4", "--kill-at", "10",
                          "--timeout", "240", "--json", "--dir", WORK_DIR],
                    cwd=None, env={"TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"})


def test_two_workers_agree_and_a_killed_run_resumes_to_the_same_weights():
    result = _background.result(KEY)
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["worker_difference"] <= 1e-6, report
    assert report["change_from_initial"] > 1e-3, report  # training moved the weights
    assert report["checkpoints_before_restart"] == ["ckpt-4.index", "ckpt-8.index"], report
    assert report["resumed_worker_difference"] <= 1e-6, report
    assert report["resumed_vs_uninterrupted"] <= 1e-6, report
