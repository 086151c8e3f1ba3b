"""A Bayes-by-backprop network through estimate/sweep/CLI: the same numbers as the direct matrices."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import evalkit
from evalkit_cli.main import main
from evalkit.data import load_labelled_data
from evalkit.errors import InputError
from evalkit.estimators import elbo, iwae, jvi
from evalkit.estimators.shared_columns import shared_column_mc_se
from evalkit.sampling.bnn_weights import evidence_log_weights, predictive_log_likelihoods

EXAMPLE = "examples/digits_bnn.pt"

# The network is certain of some test digits: every weight sample gives them log p(y|x,w) = 0.0
# exactly, so their weights are all equal and the Pareto tail fit is undefined (k-hat nan, with
# evalkit's warning). Expected here; what these tests check is the numbers.
# The weight warning for the few uncertain digits is asserted in tests/test_weight_warnings.py.
pytestmark = [pytest.mark.filterwarnings("ignore:PSIS k-hat is nan:UserWarning"),
              pytest.mark.filterwarnings("ignore::evalkit.errors.WeightWarning")]


@pytest.fixture(scope="module")
def model():
    return evalkit.load_model(EXAMPLE)


def test_predictive_estimate_equals_the_direct_matrix_and_its_column_jackknife(model):
    x, y = load_labelled_data("digits", split="test")
    log_p = predictive_log_likelihoods(model, x, y, k=64, seed=5)
    result = evalkit.estimate(model, "digits", k=64, seed=5, estimators=["elbo", "iwae", "jvi1"], block_size=96,
                              progress=False)
    summary = result.summary.set_index("estimator")
    assert summary.loc["iwae", "estimate"] == pytest.approx(float(iwae(log_p).mean()), rel=1e-13)
    assert summary.loc["jvi1", "estimate"] == pytest.approx(float(jvi(log_p, 1).mean()), rel=1e-13)
    # Rows share their 64 samples: the MC SE is the jackknife over columns (ELBO's own, IWAE's for JVI).
    assert summary.loc["elbo", "se_mc"] == pytest.approx(shared_column_mc_se(log_p, "elbo"), rel=1e-10)
    assert summary.loc["iwae", "se_mc"] == pytest.approx(shared_column_mc_se(log_p, "iwae"), rel=1e-10)
    assert summary.loc["jvi1", "se_mc"] == summary.loc["iwae", "se_mc"]
    assert result.metadata["quantity"] == "log p(y | x)" and "jackknife" in result.metadata["se_mc_method"]
    assert result.to_table().startswith("log p(y | x) estimates: digits (test split), predictive")


def test_the_column_jackknife_does_not_depend_on_the_block_size(model):
    runs = [evalkit.estimate(model, "digits", k=40, seed=1, estimators=["iwae"], block_size=b, progress=False)
            for b in (32, 100, None)]
    ses = [run.summary["se_mc"].iloc[0] for run in runs]
    assert ses[0] == pytest.approx(ses[1], rel=1e-12) and ses[0] == pytest.approx(ses[2], rel=1e-12)


def test_evidence_is_one_row_of_the_training_split(model):
    x, y = load_labelled_data("digits", split="train")
    log_w = evidence_log_weights(model, x, y, k=16, seed=2)
    result = evalkit.estimate(model, "digits", k=16, seed=2, quantity="evidence", estimators=["elbo", "iwae"],
                              progress=False)
    assert result.metadata["n"] == 1 and result.metadata["data"] == "digits (train split), evidence"
    summary = result.summary.set_index("estimator")
    assert summary.loc["elbo", "estimate"] == pytest.approx(float(elbo(log_w)[0]), rel=1e-13)
    assert summary.loc["iwae", "estimate"] == pytest.approx(float(iwae(log_w)[0]), rel=1e-13)


def test_labelled_pairs_and_the_sweep(model):
    x, y = load_labelled_data("digits", split="test")
    sweep = evalkit.sweep(model, ks=[1, 4, 32], estimators=["iwae"], data=(x[:64], y[:64]), seed=0, progress=False)
    direct = predictive_log_likelihoods(model, x[:64], y[:64], k=32, seed=0)
    at_32 = sweep.table.set_index("k").loc[32, "estimate"]
    assert at_32 == pytest.approx(float(iwae(direct).mean()), rel=1e-13)
    assert any("shared columns" in note for note in sweep.notes)


def test_quantity_is_refused_for_other_models_and_unknown_values(model):
    with pytest.raises(InputError, match="apply only to Bayesian networks"):
        evalkit.estimate("examples/digits_iwae.pt", "digits", k=4, binarize="bernoulli", quantity="evidence")
    with pytest.raises(InputError, match="quantity must be one of predictive, evidence"):
        evalkit.estimate(model, "digits", k=4, quantity="marginal")
    with pytest.raises(InputError, match="binarize \\(--binarize\\) do not apply"):
        evalkit.estimate(model, "digits", k=4, binarize="threshold")
    with pytest.raises(InputError, match=r"method='ais' \(--method ais\) do not apply"):
        evalkit.estimate(model, "digits", k=4, method="ais")


def test_a_network_under_torchrun_is_refused(model, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InputError, match="runs in one process"):
        evalkit.estimate(model, "digits", k=4)


def test_cli_estimates_the_bundled_network(tmp_path):
    result = CliRunner().invoke(main, ["estimate", EXAMPLE, "--data", "digits", "-k", "32", "--format", "json",
                                       "-e", "iwae", "--quiet"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["metadata"]["quantity"] == "log p(y | x)" and doc["metadata"]["n"] == 359
    api = evalkit.estimate(EXAMPLE, "digits", k=32, estimators=["iwae"], progress=False)
    assert doc["estimates"][0]["estimate"] == api.summary["estimate"].iloc[0]
    refused = CliRunner().invoke(main, ["estimate", "examples/digits_iwae.pt", "--binarize", "bernoulli",
                                        "--quantity", "evidence", "-k", "4"])
    assert refused.exit_code == 1 and "apply only to Bayesian networks" in refused.output


def test_the_o_nk_leave_group_out_sums_equal_the_estimator_calls():
    from evalkit.estimators import get
    from evalkit.estimators.shared_columns import (leave_group_out_elbo_sums, leave_group_out_iwae_sums,
                                                   leave_group_out_sums)

    rng = np.random.default_rng(0)
    rows = rng.normal(-50.0, 3.0, size=(7, 103))
    rows[2, 5] = 40.0  # one weight holding all the mass: leaving its group out must not lose precision
    rows[3, :4] = -np.inf
    for groups in (2, 10, 103):
        assert np.allclose(leave_group_out_iwae_sums(rows, groups), leave_group_out_sums(rows, get("iwae").fn, groups),
                           rtol=1e-13, atol=0)
        finite = rows[[0, 1, 2, 4, 5, 6]]
        assert np.allclose(leave_group_out_elbo_sums(finite, groups), leave_group_out_sums(finite, get("elbo").fn, groups),
                           rtol=1e-12, atol=0)
