"""The `evalkit sweep` and `evalkit report` commands: thin shells over evalkit.analysis.sweep."""
import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from evalkit_cli.main import main


@pytest.fixture(scope="module")
def log_weights_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lw") / "log_w.npy"
    rng = np.random.default_rng(31)
    np.save(path, np.log(rng.gamma(1.0, size=(30, 200))))
    return path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("command", ["sweep", "report"])
def test_help(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "[CHECKPOINT]" in result.output and "--log-weights FILE" in result.output and "Example:" in result.output


@pytest.mark.parametrize("command", [["sweep"], ["report", "--out", "x"]])
def test_neither_checkpoint_nor_log_weights(command):
    result = invoke(*command)
    assert result.exit_code == 2
    assert "Error: give a CHECKPOINT to evaluate, or --log-weights FILE with precomputed log-weights" in result.output


def test_both_checkpoint_and_log_weights(log_weights_file):
    result = invoke("sweep", "model.pt", "--log-weights", log_weights_file)
    assert result.exit_code == 2
    assert "Error: give a CHECKPOINT or --log-weights FILE, not both" in result.output


@pytest.mark.parametrize("option", [["--data", "digits"], ["--seed", "3"], ["--device", "cpu"], ["--binarize", "threshold"]])
def test_model_options_are_refused_with_log_weights(log_weights_file, option):
    result = invoke("sweep", "--log-weights", log_weights_file, *option)
    assert result.exit_code == 2
    assert f"Error: {option[0]} applies to a CHECKPOINT only; drop it when sweeping --log-weights" in result.output


def test_bad_ks_is_a_usage_error(log_weights_file):
    result = invoke("sweep", "--log-weights", log_weights_file, "--ks", "10,5")
    assert result.exit_code == 2 and "strictly increasing" in result.output


def test_library_errors_are_one_line(log_weights_file):
    result = invoke("sweep", "--log-weights", log_weights_file, "--ks", "1,500")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "Error: k = 500 exceeds the 200 log-weights per datapoint; use ks up to 200"
    )
    assert "Traceback" not in result.output


def test_sweep_log_weights_to_a_directory(log_weights_file, tmp_path):
    out = tmp_path / "run"
    result = invoke("sweep", "--log-weights", log_weights_file, "--ks", "1,10,100,200", "--reference", "0",
                    "--out", out, "--figures", "png", "-e", "iwae", "-e", "jvi1", "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["reference"]["kind"] == "user" and doc["metadata"]["ks"] == [1, 10, 100, 200]
    assert {row["estimator"] for row in doc["table"]} == {"iwae", "jvi1"}
    assert (out / "sweep.csv").exists() and (out / "bias.png").exists() and not (out / "bias.pdf").exists()
    assert f"wrote {out}" in result.stderr
    again = invoke("sweep", "--log-weights", log_weights_file, "--out", out, "--figures", "png")
    assert again.exit_code == 1 and "already exists; pass --overwrite" in again.output


def test_sweep_prints_a_table_with_the_reference_label(log_weights_file):
    result = invoke("sweep", "--log-weights", log_weights_file, "--ks", "1,10,200")
    assert result.exit_code == 0
    # Said once (the headline no longer repeats it in other words).
    assert result.stdout.count("jvi2 at K = 200 on the same samples (no exact log p(x)") == 1
    assert "Reference: jvi2 at K = 200" in result.stdout
    assert "estimator" in result.stdout and "RMSE" in result.stdout
    # Notes are numbered footnotes, not a column that pads every row; no warning or note lines on stdout.
    assert max(len(line) for line in result.stdout.splitlines() if not line.startswith("Reference:")) < 160
    assert not any(line.startswith(("warning:", "note:")) for line in result.stdout.splitlines())


def test_reference_from_a_file(log_weights_file, tmp_path):
    ref = tmp_path / "ref.txt"
    np.savetxt(ref, np.full(30, -0.5))
    result = invoke("sweep", "--log-weights", log_weights_file, "--ks", "1,200", "--reference", ref,
                    "--format", "csv")
    assert result.exit_code == 0
    assert ",user," in result.stdout
    missing = invoke("sweep", "--log-weights", log_weights_file, "--reference", tmp_path / "nope.npy")
    assert missing.exit_code == 1 and "reference file" in missing.output and "does not exist" in missing.output


def test_report_records_the_exact_command(log_weights_file, tmp_path, monkeypatch):
    out = tmp_path / "reports" / "lw"
    argv = ["report", "--log-weights", str(log_weights_file), "--ks", "1,10,100,200", "--out", str(out),
            "--title", "CLI report"]
    monkeypatch.setattr(sys, "argv", ["/usr/bin/evalkit", *argv])
    result = invoke(*argv)
    assert result.exit_code == 0, result.output
    md = (out / "report.md").read_text()
    assert md.startswith("# CLI report")
    assert "evalkit report --log-weights " + str(log_weights_file) in md
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 4


def test_sweep_a_checkpoint(tmp_path):
    import evalkit
    from evalkit.models.linear_gaussian import LinearGaussianModel

    model = LinearGaussianModel.random(4, 2, seed=0)
    path = tmp_path / "lg.pt"
    evalkit.save_model(model, path)
    data = tmp_path / "x.npy"
    np.save(data, model.marginal().sample((12,)).numpy().astype(np.float32))
    result = invoke("sweep", path, "--data", data, "--ks", "1,5,20", "--format", "json", "-q")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["reference"]["kind"] == "exact"
    # exact posterior as proposal: every estimate equals log p(x), so every bias is ~0
    assert max(abs(row["bias"]) for row in doc["table"]) < 1e-4
