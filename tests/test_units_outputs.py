"""Nats and bits per dimension everywhere: JSON carries both (bpd = -nats / (D ln 2) exactly),
tables, figures and reports show the chosen unit and say which, D comes from the model."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

import evalkit

pytestmark = pytest.mark.filterwarnings("ignore::evalkit.errors.WeightWarning")
from evalkit_cli.main import main
from evalkit.errors import InputError

CONV = "examples/digits_conv_vae.pt"
D = 64


@pytest.fixture(scope="module")
def log_w():
    return np.log(np.random.default_rng(5).gamma(1.0, size=(40, 100))) - 90.0


@pytest.fixture(scope="module")
def conv_estimate():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evalkit.estimate(CONV, "digits", k=30, seed=0, units="bpd", progress=False)


def test_estimate_json_holds_bpd_exactly_as_minus_nats_over_d_ln2(conv_estimate):
    doc = json.loads(conv_estimate.to_json())
    assert doc["metadata"]["dims"] == D == evalkit.load_model(CONV).data_dim
    assert "bpd = -nats / (D ln 2)" in doc["metadata"]["units"] and "D = 64" in doc["metadata"]["units"]
    for row in doc["estimates"]:
        # Exact equality after the JSON round trip, not a tolerance.
        assert row["estimate_bpd"] == -row["estimate"] / (D * math.log(2))
        assert row["se_data_bpd"] == row["se_data"] / (D * math.log(2))
        assert row["se_mc_bpd"] == row["se_mc"] / (D * math.log(2))
        assert 1.0 < row["estimate_bpd"] < math.log2(17)  # a 17-level image: at most log2(17) bits per pixel


def test_estimate_tables_use_the_chosen_unit_and_say_so(conv_estimate):
    text = conv_estimate.to_table()
    assert "bpd = -log p(x) / (D ln 2), D = 64" in text
    iwae = conv_estimate.summary.set_index("estimator").loc["iwae"]
    assert f"{-iwae['estimate'] / (D * math.log(2)):.4f}" in text and f"{iwae['estimate']:.4f}" not in text
    assert "bits/dim" in conv_estimate.to_latex() and " bpd |" in conv_estimate.to_markdown()
    nats = conv_estimate.table_in("nats")
    assert nats.equals(conv_estimate.summary[list(nats.columns)])  # the nats columns; the *_bpd twins beside them


def test_same_run_in_nats_has_identical_json(conv_estimate):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nats = evalkit.estimate(CONV, "digits", k=30, seed=0, progress=False)
    strip = lambda d: {**d, "metadata": {k: v for k, v in d["metadata"].items() if k != "elapsed_seconds"}}
    assert strip(nats.to_dict()) == strip(conv_estimate.to_dict())
    assert "estimate" in nats.to_table() and "bpd" not in nats.to_table()


def test_matrix_needs_dims_for_bpd_and_has_null_bpd_without(log_w):
    with pytest.raises(InputError, match="bits per dimension need D"):
        evalkit.estimate_from_log_weights(log_w, units="bpd")
    with pytest.raises(InputError, match="units must be one of nats, bpd"):
        evalkit.estimate_from_log_weights(log_w, units="bits")
    plain = evalkit.estimate_from_log_weights(log_w).to_dict()
    assert plain["metadata"]["dims"] is None and plain["estimates"][0]["estimate_bpd"] is None
    given = evalkit.estimate_from_log_weights(log_w, units="bpd", dims=10).to_dict()
    assert given["estimates"][1]["estimate_bpd"] == -given["estimates"][1]["estimate"] / (10 * math.log(2))


def test_dims_that_disagree_with_the_model_are_refused():
    with pytest.raises(InputError, match="disagrees with the model's 64"):
        evalkit.estimate(CONV, "digits", k=2, estimators=["iwae"], dims=63, progress=False)


def test_sweep_json_csv_and_report_carry_both_units(log_w, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nats = evalkit.sweep(log_w, ks=[1, 10, 100], reference=-90.0, dims=D, progress=False)
        bpd = evalkit.sweep(log_w, ks=[1, 10, 100], reference=-90.0, dims=D, units="bpd", progress=False)
    factor = D * math.log(2)
    # The CSV in nats is unchanged by the unit; bpd adds *_bpd columns after the nats ones.
    assert bpd.to_csv().startswith(nats.to_csv().split("\n")[0])
    assert nats.to_csv() == nats.table.to_csv(index=False, float_format="%.17g")
    doc = bpd.to_dict()
    assert doc["table"] == nats.to_dict()["table"]  # the JSON does not depend on the unit shown
    for row in doc["table"]:
        assert row["estimate_bpd"] == -row["estimate"] / factor and row["bias_bpd"] == -row["bias"] / factor
        assert row["estimate_se_bpd"] == row["estimate_se"] / factor
        if row["variance"] is not None:
            assert row["variance_bpd"] == row["variance"] / factor ** 2
    assert doc["reference"]["mean_bpd"] == 90.0 / factor
    for fit in doc["fits"]:
        if fit["a"] is not None:
            assert fit["a_bpd"] == -fit["a"] / factor
    shown = bpd.shown()
    np.testing.assert_array_equal(shown.table["estimate"], -bpd.table["estimate"] / factor)
    assert "bits/dim" in bpd.to_table() and "D = 64" in bpd.headline()
    paths = bpd.report(tmp_path / "r")
    md = paths["report_md"].read_text()
    iwae = bpd.table[(bpd.table["estimator"] == "iwae") & (bpd.table["k"] == 100)].iloc[0]
    assert "Units: bits per dimension, bpd = -log p(x) / (D ln 2) with D = 64" in md
    assert "bits/dim (mean over" in md and "in nats per datapoint" in md  # both units in the findings
    assert f"{iwae['estimate']:.2f}"[:5] in md.replace(" ", "")
    figs = bpd.figures()
    assert figs["estimate"].axes[0].get_ylabel() == "mean bits per dimension (bits/dim)"
    assert figs["bias"].axes[0].get_ylabel().startswith("|bias| (bits/dim)")
    nats_md = nats.report(tmp_path / "n")["report_md"].read_text()
    assert "in bits per dimension" in nats_md and "Units: nats per datapoint" in nats_md


def test_cli_units_for_estimate_sweep_and_report(log_w, tmp_path):
    path = tmp_path / "lw.npy"
    np.save(path, log_w)
    runner = CliRunner()
    out = runner.invoke(main, ["estimate", CONV, "--data", "digits", "-k", "4", "-e", "iwae", "--units", "bpd",
                               "-q", "--format", "json"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    row = json.loads(out.output)["estimates"][0]
    assert row["estimate_bpd"] == -row["estimate"] / (D * math.log(2))
    out = runner.invoke(main, ["sweep", "--log-weights", str(path), "--ks", "1,10,100", "--units", "bpd",
                               "--dims", "64", "-q"], catch_exceptions=False)
    assert out.exit_code == 0 and "in bits per dimension (D = 64)" in out.output
    out = runner.invoke(main, ["sweep", "--log-weights", str(path), "--ks", "1,10", "--units", "bpd", "-q"])
    assert out.exit_code == 1 and "Error: bits per dimension need D" in out.output
    out = runner.invoke(main, ["report", "--log-weights", str(path), "--ks", "1,10,100", "--units", "bpd",
                               "--dims", "64", "--out", str(tmp_path / "rep"), "-q"], catch_exceptions=False)
    assert out.exit_code == 0
    assert "bits/dim" in (tmp_path / "rep" / "report.md").read_text()
