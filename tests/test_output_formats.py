"""Formats from file names: `-o x.json` writes JSON, a conflicting --format is an error (CLI and API)."""
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import evalkit
from evalkit_cli.main import main
from evalkit.errors import InputError, WeightWarning
from evalkit.models import LinearGaussianModel
from evalkit.output.formats import format_for_path

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def linear_checkpoint(tmp_path):
    model = LinearGaussianModel.random(data_dim=4, latent_dim=2, seed=7)
    model = model.with_proposal(0.1 * torch.ones(2, 4, dtype=torch.float64), torch.zeros(2, dtype=torch.float64),
                                torch.eye(2, dtype=torch.float64))  # imperfect q: weights that vary
    path = tmp_path / "linear.pt"
    evalkit.save_model(model, path)
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32))
    return path, data


def _run(ckpt, data, *extra):
    return CliRunner().invoke(main, ["estimate", str(ckpt), "--data", str(data), "-k", "32", "-e", "iwae",
                                     "--quiet", *extra])


def test_output_extension_picks_the_format(linear_checkpoint, tmp_path):
    ckpt, data = linear_checkpoint
    with pytest.warns(WeightWarning):  # heavy-tailed weights of this small model: asserted, not hidden
        api = evalkit.estimate(str(ckpt), str(data), k=32, estimators=["iwae"], progress=False)
    for name in ("s.json", "s.csv", "s.md", "s.tex", "s.txt"):
        result = _run(ckpt, data, "-o", str(tmp_path / name))
        assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "s.json").read_text())["estimates"][0]["estimate"] == api.summary["estimate"][0]
    frame = pd.read_csv(tmp_path / "s.csv")
    assert frame["estimate"].tolist() == api.summary["estimate"].tolist()
    assert (tmp_path / "s.md").read_text().startswith("| estimator")
    assert (tmp_path / "s.tex").read_text().startswith(r"\begin{tabular}")
    assert (tmp_path / "s.txt").read_text().startswith("log p(x) estimates:")


def test_per_example_extension_picks_json_or_csv(linear_checkpoint, tmp_path):
    ckpt, data = linear_checkpoint
    assert _run(ckpt, data, "--per-example", str(tmp_path / "p.json")).exit_code == 0
    assert len(json.loads((tmp_path / "p.json").read_text())) == 12
    assert _run(ckpt, data, "--per-example", str(tmp_path / "p.csv")).exit_code == 0
    assert len(pd.read_csv(tmp_path / "p.csv")) == 12
    refused = _run(ckpt, data, "--per-example", str(tmp_path / "p.md"))
    assert refused.exit_code == 2 and not (tmp_path / "p.md").exists()


def test_conflicting_format_and_extension_is_a_usage_error(linear_checkpoint, tmp_path):
    ckpt, data = linear_checkpoint
    result = _run(ckpt, data, "--format", "csv", "-o", str(tmp_path / "s.json"))
    assert result.exit_code == 2
    assert "ends in .json (json) but the format asked for is csv" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "s.json").exists()
    # An agreeing --format, or an unrecognised extension with a --format, is fine.
    assert _run(ckpt, data, "--format", "json", "-o", str(tmp_path / "a.json")).exit_code == 0
    assert _run(ckpt, data, "--format", "json", "-o", str(tmp_path / "a.out")).exit_code == 0
    json.loads((tmp_path / "a.out").read_text())


@pytest.mark.filterwarnings("ignore::evalkit.errors.WeightWarning")  # few samples: the k-hat warning is expected
def test_python_save_uses_the_same_rule(tmp_path):
    log_w = torch.distributions.Normal(0.0, 0.3).sample((20, 64)).double()
    result = evalkit.estimate_from_log_weights(log_w, estimators=["iwae"])
    result.save(tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["estimates"][0]["estimate"] == result.summary["estimate"][0]
    result.save(tmp_path / "r.csv")
    assert pd.read_csv(tmp_path / "r.csv")["estimate"][0] == result.summary["estimate"][0]
    result.save(tmp_path / "r.md")
    assert (tmp_path / "r.md").read_text() == result.to_markdown()
    with pytest.raises(InputError, match="ends in .csv"):
        result.save(tmp_path / "x.csv", format="json")
    with pytest.raises(evalkit.errors.OutputError):
        result.save(tmp_path / "r.json")  # exists: needs overwrite=True
    result.save(tmp_path / "r.json", overwrite=True)


def test_format_for_path_rules():
    assert format_for_path("a.JSON") == "json"
    assert format_for_path(None, "csv") == "csv"
    assert format_for_path("a.out") == "table"
    with pytest.raises(InputError):
        format_for_path("a.tex", "markdown")


def test_readme_commands_with_output_files_name_formats_that_agree():
    # Every `-o FILE` in the README must be a name whose extension the CLI understands.
    readme = (ROOT / "README.md").read_text()
    names = re.findall(r"(?:-o|--output) (\S+)", readme)
    assert names, "the README shows at least one -o example"
    for name in names:
        fmt = format_for_path(name)
        explicit = re.search(r"--format (\w+)[^\n]*(?:-o|--output) " + re.escape(name), readme)
        if explicit:
            assert format_for_path(name, explicit.group(1)) == explicit.group(1)
        assert fmt in ("json", "csv", "markdown", "latex", "table")
