"""The `evalkit` command: CliRunner for exact behaviour, a subprocess for the installed script."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evalkit.errors import WeightWarning
import torch
from click.testing import CliRunner

import evalkit
from evalkit_cli.main import main
from evalkit.models import LinearGaussianModel

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def linear_checkpoint(tmp_path):
    model = LinearGaussianModel.random(data_dim=4, latent_dim=2, seed=7)
    imperfect = model.with_proposal(0.1 * torch.ones(2, 4, dtype=torch.float64), torch.zeros(2, dtype=torch.float64),
                                    torch.eye(2, dtype=torch.float64))
    path = tmp_path / "linear.pt"
    evalkit.save_model(imperfect, path)
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32))
    return path, data


def test_json_output_equals_the_api(linear_checkpoint):
    ckpt, data = linear_checkpoint
    result = CliRunner().invoke(main, ["estimate", str(ckpt), "--data", str(data), "-k", "64", "--seed", "3",
                                       "--format", "json", "-e", "iwae", "-e", "jvi2", "--quiet"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    with pytest.warns(WeightWarning):  # this small linear-Gaussian model's proposal has heavy-tailed weights
        api = evalkit.estimate(str(ckpt), str(data), k=64, estimators=["iwae", "jvi2"], seed=3, progress=False)
    assert [row["estimate"] for row in doc["estimates"]] == api.summary["estimate"].tolist()
    assert [row["se_mc"] for row in doc["estimates"]] == api.summary["se_mc"].tolist()
    assert doc["metadata"]["k"] == 64 and doc["metadata"]["seed"] == 3


def test_output_files_are_written(linear_checkpoint, tmp_path):
    ckpt, data = linear_checkpoint
    out, per, lw = tmp_path / "s.md", tmp_path / "p.csv", tmp_path / "lw.npy"
    result = CliRunner().invoke(main, ["estimate", str(ckpt), "--data", str(data), "-k", "8", "--format",
                                       "markdown", "-o", str(out), "--per-example", str(per),
                                       "--save-log-weights", str(lw), "--quiet"])
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("| estimator")
    assert len(per.read_text().splitlines()) == 13
    assert np.load(lw).shape == (12, 8)
    # A second run refuses to replace them...
    again = CliRunner().invoke(main, ["estimate", str(ckpt), "--data", str(data), "-k", "8", "-o", str(out)])
    assert again.exit_code == 1
    assert "already exists; pass --overwrite" in again.output
    # ...unless asked.
    forced = CliRunner().invoke(main, ["estimate", str(ckpt), "--data", str(data), "-k", "8", "-o", str(out),
                                       "--overwrite", "--quiet"])
    assert forced.exit_code == 0, forced.output


def test_estimators_lists_every_name():
    result = CliRunner().invoke(main, ["estimators"])
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.output.splitlines()]
    assert names == evalkit.estimators.available()


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"evalkit, version {evalkit.__version__}"


@pytest.mark.parametrize("command", [[], ["estimate"], ["estimators"], ["sweep"], ["report"]])
def test_help(command):
    result = CliRunner().invoke(main, command + ["--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_bad_estimator_name_is_one_line_error(linear_checkpoint):
    ckpt, data = linear_checkpoint
    result = CliRunner().invoke(main, ["estimate", str(ckpt), "--data", str(data), "-k", "8", "-e", "jvj1"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ")
    assert "Traceback" not in result.output


def _console_script():
    script = Path(sys.executable).parent / "evalkit"
    return [str(script)] if script.exists() else [sys.executable, "-m", "evalkit"]


@pytest.mark.slow
def test_installed_console_script_runs_the_bundled_example():
    example = ROOT / "examples" / "digits_iwae.pt"
    proc = subprocess.run(
        _console_script() + ["estimate", str(example), "--data", "digits", "--binarize", "bernoulli",
                             "-k", "100", "--format", "json", "--quiet"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    by_name = {row["estimator"]: row for row in doc["estimates"]}
    assert by_name["elbo"]["estimate"] <= by_name["iwae"]["estimate"]
    assert doc["metadata"]["n"] == 359
    with pytest.warns(WeightWarning):  # the bundled example has datapoints with k-hat > 0.7
        api = evalkit.estimate(str(example), "digits", k=100, binarize="bernoulli", progress=False)
    assert [row["estimate"] for row in doc["estimates"]] == api.summary["estimate"].tolist()
