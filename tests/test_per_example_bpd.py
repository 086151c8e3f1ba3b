"""The per-example table carries bits-per-dimension twins of its nats columns where D is known.

bpd = -log p / (D ln 2) with D the data dimensions; the nats values are checked first against
an independent computation from the saved log-weights, so the bpd columns are tied to known numbers.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import evalkit
from evalkit_cli.main import main
from evalkit.models import LinearGaussianModel
from evalkit.output.files import write_estimate_outputs

pytestmark = pytest.mark.filterwarnings("ignore::evalkit.errors.WeightWarning")

D = 4
ESTIMATORS = ["elbo", "iwae", "jvi1", "dvi"]


@pytest.fixture
def cli_run(tmp_path):
    """`evalkit estimate` of a small linear-Gaussian model with --per-example CSV and JSON."""
    model = LinearGaussianModel.random(data_dim=D, latent_dim=2, seed=7)
    ckpt, data = tmp_path / "linear.pt", tmp_path / "x.npy"
    evalkit.save_model(model, ckpt)
    np.save(data, np.random.default_rng(0).normal(size=(12, D)).astype(np.float32))
    files = {}
    for ext in ("csv", "json"):
        files[ext], lw = tmp_path / f"per.{ext}", tmp_path / f"lw_{ext}.npy"
        args = ["estimate", str(ckpt), "--data", str(data), "-k", "50", "--seed", "2", "--quiet",
                "--per-example", str(files[ext]), "--save-log-weights", str(lw)]
        for name in ESTIMATORS:
            args += ["-e", name]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
    return pd.read_csv(files["csv"]), json.loads(files["json"].read_text()), np.load(lw)


def test_per_example_files_have_bpd_twins_equal_to_minus_nats_over_d_ln2(cli_run):
    csv, records, log_w = cli_run
    # The nats columns are the known per-datapoint values, computed here independently.
    lw = torch.as_tensor(log_w, dtype=torch.float64)
    assert np.allclose(csv["elbo"], lw.mean(1).numpy(), rtol=0, atol=1e-12)
    assert np.allclose(csv["iwae"], (torch.logsumexp(lw, 1) - math.log(lw.shape[1])).numpy(), rtol=0, atol=1e-12)
    assert list(csv.columns) == ["index", *ESTIMATORS, "ess", "psis_khat", *[f"{n}_bpd" for n in ESTIMATORS]]
    json_frame = pd.DataFrame.from_records(records)
    assert list(json_frame.columns) == list(csv.columns)
    for name in ESTIMATORS:
        # CSV holds 17 significant digits: the twin equals -nats / (D ln 2) exactly in float64.
        assert (csv[f"{name}_bpd"].to_numpy() == -csv[name].to_numpy() / (D * math.log(2))).all(), name
        # pandas writes JSON with 15 significant digits: equal to that precision.
        np.testing.assert_allclose(json_frame[f"{name}_bpd"], -json_frame[name] / (D * math.log(2)), rtol=2e-15)
    assert not any(c.startswith(("ess_", "psis_khat_", "index_")) for c in csv.columns)


def test_api_table_and_json_document_carry_the_same_twins():
    log_w = np.log(np.random.default_rng(3).gamma(2.0, size=(20, 40))) - 50.0
    result = evalkit.estimate_from_log_weights(log_w, ESTIMATORS, dims=784)
    table = result.per_example_table()
    assert list(result.per_example.columns) == ["index", *ESTIMATORS, "ess", "psis_khat"]  # nats frame unchanged
    doc = json.loads(result.to_json(per_example=True))["per_example"]
    for name in ESTIMATORS:
        expected = -result.per_example[name].to_numpy() / (784 * math.log(2))
        assert (table[f"{name}_bpd"].to_numpy() == expected).all()
        assert doc[f"{name}_bpd"] == expected.tolist()   # full-precision JSON: exact
        # ... and they agree with the summary's bpd: the mean of the twins is estimate_bpd.
        row = result.summary.set_index("estimator").loc[name]
        assert math.isclose(float(np.mean(expected)), -row["estimate"] / (784 * math.log(2)), rel_tol=1e-14)


def test_without_dims_there_are_no_bpd_columns(tmp_path):
    log_w = np.log(np.random.default_rng(4).gamma(2.0, size=(10, 30)))
    result = evalkit.estimate_from_log_weights(log_w, ESTIMATORS)
    assert result.metadata["dims"] is None
    assert list(result.per_example_table().columns) == ["index", *ESTIMATORS, "ess", "psis_khat"]
    assert not any(key.endswith("_bpd") for key in json.loads(result.to_json(per_example=True))["per_example"])
    for ext in ("csv", "json"):
        path = tmp_path / f"per.{ext}"
        write_estimate_outputs(result, {"per_example": str(path)}, text="")
        frame = pd.read_csv(path) if ext == "csv" else pd.DataFrame.from_records(json.loads(path.read_text()))
        assert list(frame.columns) == ["index", *ESTIMATORS, "ess", "psis_khat"], ext
