"""Smoke tests of the scripts in examples/.

Each example runs as a subprocess, the way a user runs it, in its tiny
`--smoke` configuration (one short epoch, small data), writing its outputs
into a temporary directory; the test checks the exit code, the output files
and the key lines of the printed report. Training quality is not tested
here: the default runs and their results are recorded in the README.

The runs are declared here and start in the background when collection
ends (`_background.py`), so they overlap the in-process tests that run
before this module.
"""

import atexit
import pathlib
import re
import shutil
import tempfile

import pytest

import _background

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
OUTPUT = pathlib.Path(tempfile.mkdtemp(prefix="keras_node_examples_"))
atexit.register(shutil.rmtree, OUTPUT, ignore_errors=True)
ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow", "MPLBACKEND": "Agg"}

pytestmark = pytest.mark.slow


def _declare(test_name, script, *args):
    """Declare `examples/<script> args...` as the run of `test_name`, in its
    own output directory `OUTPUT / test_name` (which `args` may name as
    `{out}`)."""
    out = OUTPUT / test_name
    out.mkdir()
    args = [a.format(out=out) for a in args]
    _background.declare(f"{__name__}::{test_name}", [str(EXAMPLES / script), *args], cwd=out,
                        env=ENV)
    return out


def run_example(test_name):
    """The finished run of `test_name`: asserts it exited 0; returns its stdout."""
    result = _background.result(f"{__name__}::{test_name}")
    assert result.returncode == 0, (
        f"{test_name} exited with {result.returncode}\n--- stdout ---\n{result.stdout[-4000:]}"
        f"\n--- stderr ---\n{result.stderr[-4000:]}"
    )
    return result.stdout


# Slowest first: the background thread runs them in this order.
EXPORT_DIR = _declare("test_export", "export.py", "--smoke", "--output-dir", "{out}")
DIGITS_DIR = _declare("test_digits_odenet", "digits_odenet.py", "--smoke", "--models", "resnet",
                      "odenet", "--output-dir", "{out}")
SERIES_DIR = _declare("test_irregular_series", "irregular_series.py", "--smoke", "--output",
                      "{out}/series.png")
SPIRAL_DIR = _declare("test_spiral", "spiral.py", "--smoke", "--output", "{out}/spiral.png")
BALL_DIR = _declare("test_bouncing_ball", "bouncing_ball.py", "--smoke", "--output",
                    "{out}/ball.png")
STIFF_DIR = _declare("test_stiff_kinetics", "stiff_kinetics.py", "--smoke", "--output",
                     "{out}/stiff.png")
CNF_DIR = _declare("test_cnf_toy", "cnf_toy.py", "--smoke", "--output", "{out}/cnf.png")
LATENT_DIR = _declare("test_latent_ode", "latent_ode.py", "--quick", "--output", "{out}/latent.png")
AUGMENTED_DIR = _declare("test_augmented_ode", "augmented_ode.py", "--smoke", "--output",
                         "{out}/augmented.png")
SPIRALS_DIR = _declare("test_irregular_classification", "irregular_classification.py", "--quick",
                       "--output", "{out}/spirals.png")


def test_spiral():
    """The spiral demo trains, prints its trajectory error and NFE, and writes its figure."""
    stdout = run_example("test_spiral")
    assert (SPIRAL_DIR / "spiral.png").stat().st_size > 0
    assert re.search(r"Final trajectory error: mean \|learned - true\| .* = \d+\.\d+", stdout)
    assert "nfe_forward" in stdout and "nfe_backward" in stdout


def test_digits_odenet():
    """The default path (a spawned process per model) trains the models --models
    selects; they land in the table and the plot, the others do not."""
    run_example("test_digits_odenet")
    table = (DIGITS_DIR / "digits_results.md").read_text()
    assert (DIGITS_DIR / "digits_nfe.png").stat().st_size > 0
    for name in ("ResNet", "ODE-Net"):
        assert re.search(rf"^\| {name} \| \d+\.\d\d \| [\d,]+ \|", table, re.MULTILINE), table
    assert "| RK-Net |" not in table


def test_irregular_series():
    """The latent ODE trains on union batches, extrapolates and writes its figure."""
    stdout = run_example("test_irregular_series")
    assert (SERIES_DIR / "series.png").stat().st_size > 0
    assert re.search(r"extrapolation on \(.*\] = \d+\.\d+", stdout)


def test_export():
    """Saved, exported and reloaded models predict identically, and fine-tuning runs."""
    stdout = run_example("test_export")
    assert (EXPORT_DIR / "ode_model.keras").stat().st_size > 0
    assert (EXPORT_DIR / "ode_saved_model" / "saved_model.pb").exists()
    differences = re.findall(r"max \|.*difference\| = (\S+)", stdout)
    assert len(differences) == 5, stdout
    assert all(float(d) <= 1e-6 for d in differences), stdout
    assert re.search(r"loss before \d+\.\d+, after \d+\.\d+", stdout)


def test_bouncing_ball():
    """The bouncing ball hits the ground at sqrt(2), fits its restitution and writes its figure."""
    stdout = run_example("test_bouncing_ball")
    assert (BALL_DIR / "ball.png").stat().st_size > 0
    assert "first impact 1.41421356 (exact sqrt(2) = 1.41421356)" in stdout
    losses = [float(x) for x in re.findall(r"loss (\S+),", stdout)]
    assert len(losses) >= 2 and losses[-1] < losses[0]


def test_stiff_kinetics():
    """rodas4 fits Robertson's rate constants; dopri5 fails with a clear error."""
    output = STIFF_DIR / "stiff.png"
    stdout = run_example("test_stiff_kinetics")
    assert "dopri5 fails as expected" in stdout and "max_num_steps=200" in stdout
    losses = [float(x) for x in re.findall(r"loss ([0-9.e+-]+)", stdout)]
    assert len(losses) == 2 and losses[-1] < losses[0], stdout
    assert len(re.findall(r"k\d: fitted", stdout)) == 3
    assert output.exists() and output.stat().st_size > 0


def test_irregular_classification():
    """NeuralCDE, ODERNN and the GRU baseline train on the irregular spirals;
    the table has a row per model and the figure is written."""
    stdout = run_example("test_irregular_classification")
    assert (SPIRALS_DIR / "spirals.png").stat().st_size > 0
    for name in ("NeuralCDE", "ODERNN", "GRU"):
        assert re.search(rf"^\| {name} \| \d+\.\d% \| [\d,]+ \| \d+\.\d\d \|", stdout,
                         re.MULTILINE), stdout


def test_latent_ode():
    """The ODE-RNN-encoded latent ODE trains, reports both MSEs and plots."""
    stdout = run_example("test_latent_ode")
    assert (LATENT_DIR / "latent.png").stat().st_size > 0
    assert re.search(r"fit on \[0, 6\] = \d+\.\d+, extrapolation on \(6, 12\] = \d+\.\d+", stdout)


def test_cnf_toy():
    """The CNF trains with and without regularisers, reports NLL against the
    entropy and NFE, and writes its figure."""
    stdout = run_example("test_cnf_toy")
    assert (CNF_DIR / "cnf.png").stat().st_size > 0
    assert re.search(r"8gaussians: test NLL \d+\.\d+ nats \(entropy 2\.838, gap -?\d+\.\d+\)", stdout), stdout
    assert re.search(r"regularised .* test NLL \d+\.\d+ nats; mean NFE per iteration \d+", stdout), stdout


def test_augmented_ode():
    """Dupont's g(x) = -x demo trains both flows, prints their errors and writes its figure."""
    stdout = run_example("test_augmented_ode")
    assert (AUGMENTED_DIR / "augmented.png").stat().st_size > 0
    assert re.search(r"plain 1-D ODE: training MSE = \d+\.\d+", stdout), stdout
    assert re.search(r"augmented \(augment_dim=1\): training MSE = \d+\.\d+", stdout), stdout
