"""Smoke tests of the scripts in examples/.

Each example runs as a subprocess, the way a user runs it, in its tiny
`--smoke` configuration (one short epoch, small data), writing its outputs
into pytest's `tmp_path`; the test checks the exit code, the output files
and the key lines of the printed report. Training quality is not tested
here: the default runs and their results are recorded in the README.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"

pytestmark = pytest.mark.slow


def run_example(script, *args, cwd):
    """Run `examples/<script> args...` with this interpreter; return its stdout."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow", MPLBACKEND="Agg")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, (
        f"{script} exited with {result.returncode}\n--- stdout ---\n{result.stdout[-4000:]}"
        f"\n--- stderr ---\n{result.stderr[-4000:]}"
    )
    return result.stdout


def test_spiral(tmp_path):
    """The spiral demo trains, prints its trajectory error and NFE, and writes its figure."""
    output = tmp_path / "spiral.png"
    stdout = run_example("spiral.py", "--smoke", "--output", str(output), cwd=tmp_path)
    assert output.stat().st_size > 0
    assert re.search(r"Final trajectory error: mean \|learned - true\| .* = \d+\.\d+", stdout)
    assert "nfe_forward" in stdout and "nfe_backward" in stdout


def test_digits_odenet(tmp_path):
    """The default path (a spawned process per model) trains the models --models
    selects; they land in the table and the plot, the others do not."""
    run_example("digits_odenet.py", "--smoke", "--models", "resnet", "odenet",
                "--output-dir", str(tmp_path), cwd=tmp_path)
    table = (tmp_path / "digits_results.md").read_text()
    assert (tmp_path / "digits_nfe.png").stat().st_size > 0
    for name in ("ResNet", "ODE-Net"):
        assert re.search(rf"^\| {name} \| \d+\.\d\d \| [\d,]+ \|", table, re.MULTILINE), table
    assert "| RK-Net |" not in table


def test_irregular_series(tmp_path):
    """The latent ODE trains on union batches, extrapolates and writes its figure."""
    output = tmp_path / "series.png"
    stdout = run_example("irregular_series.py", "--smoke", "--output", str(output), cwd=tmp_path)
    assert output.stat().st_size > 0
    assert re.search(r"extrapolation on \(.*\] = \d+\.\d+", stdout)


def test_export(tmp_path):
    """Saved, exported and reloaded models predict identically, and fine-tuning runs."""
    stdout = run_example("export.py", "--smoke", "--output-dir", str(tmp_path), cwd=tmp_path)
    assert (tmp_path / "ode_model.keras").stat().st_size > 0
    assert (tmp_path / "ode_saved_model" / "saved_model.pb").exists()
    differences = re.findall(r"max \|.*difference\| = (\S+)", stdout)
    assert len(differences) == 5, stdout
    assert all(float(d) <= 1e-6 for d in differences), stdout
    assert re.search(r"loss before \d+\.\d+, after \d+\.\d+", stdout)


def test_bouncing_ball(tmp_path):
    """The bouncing ball hits the ground at sqrt(2), fits its restitution and writes its figure."""
    output = tmp_path / "ball.png"
    stdout = run_example("bouncing_ball.py", "--smoke", "--output", str(output), cwd=tmp_path)
    assert output.stat().st_size > 0
    assert "first impact 1.41421356 (exact sqrt(2) = 1.41421356)" in stdout
    losses = [float(x) for x in re.findall(r"loss (\S+),", stdout)]
    assert len(losses) >= 2 and losses[-1] < losses[0]


def test_stiff_kinetics(tmp_path):
    """rodas4 fits Robertson's rate constants; dopri5 fails with a clear error."""
    output = tmp_path / "stiff.png"
    stdout = run_example("stiff_kinetics.py", "--smoke", "--output", str(output), cwd=tmp_path)
    assert "dopri5 fails as expected" in stdout and "max_num_steps=200" in stdout
    losses = [float(x) for x in re.findall(r"loss ([0-9.e+-]+)", stdout)]
    assert len(losses) == 2 and losses[-1] < losses[0], stdout
    assert len(re.findall(r"k\d: fitted", stdout)) == 3
    assert output.exists() and output.stat().st_size > 0
