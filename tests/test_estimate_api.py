"""evalkit.analysis.estimate / estimate_from_log_weights: numbers against independent computations."""
import json
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

import evalkit
from evalkit.errors import InputError
from evalkit.models import LinearGaussianModel
from evalkit.errors import WeightWarning  # heavy-tailed test weights warn: asserted below


def gamma_log_weights(n=200, k=50, a=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return np.log(rng.gamma(a, 1.0, size=(n, k)))


def test_summary_matches_direct_formulas():
    log_w = gamma_log_weights()
    n, k = log_w.shape
    with pytest.warns(WeightWarning):
        result = evalkit.estimate_from_log_weights(log_w, ["elbo", "iwae", "dvi"])
    rows = result.summary.set_index("estimator")

    elbo = log_w.mean(axis=1)
    iwae = logsumexp(log_w, axis=1) - math.log(k)
    assert rows.loc["elbo", "estimate"] == pytest.approx(elbo.mean(), abs=1e-12)
    assert rows.loc["iwae", "estimate"] == pytest.approx(iwae.mean(), abs=1e-12)
    assert rows.loc["iwae", "se_data"] == pytest.approx(iwae.std(ddof=1) / math.sqrt(n), rel=1e-10)
    # ELBO's Monte Carlo variance is var(l)/K per datapoint; datapoints are independent.
    mc_var = log_w.var(axis=1, ddof=1) / k
    assert rows.loc["elbo", "se_mc"] == pytest.approx(math.sqrt(mc_var.sum()) / n, rel=1e-10)
    # Delta method for IWAE: var ~ (K sum w~^2 - 1)/(K - 1) / ... per datapoint, as documented.
    w = np.exp(log_w - log_w.max(axis=1, keepdims=True))
    w_norm = w / w.sum(axis=1, keepdims=True)
    iwae_var = (k * (w_norm ** 2).sum(axis=1) - 1) / (k - 1)
    assert rows.loc["iwae", "se_mc"] == pytest.approx(math.sqrt(iwae_var.sum()) / n, rel=1e-8)
    np.testing.assert_allclose(result.per_example["iwae"], iwae, atol=1e-12)
    np.testing.assert_allclose(result.per_example["ess"], 1 / (w_norm ** 2).sum(axis=1), rtol=1e-10)
    assert list(result.per_example["index"]) == list(range(n))


def test_elbo_never_exceeds_iwae_per_datapoint():
    with pytest.warns(WeightWarning):
        result = evalkit.estimate_from_log_weights(gamma_log_weights(a=0.3, seed=4), ["elbo", "iwae"])
    assert (result.per_example["elbo"] <= result.per_example["iwae"] + 1e-12).all()


def test_gamma_iwae_mean_matches_exact_expectation():
    # w ~ Gamma(a, 1): E[IWAE_K] = psi(K a) - log K exactly; the dataset mean is within 4 SE.
    from scipy.special import digamma

    a, k = 1.0, 20
    result = evalkit.estimate_from_log_weights(gamma_log_weights(n=4000, k=k, a=a, seed=1), ["iwae"])
    row = result.summary.iloc[0]
    assert abs(row["estimate"] - (digamma(k * a) - math.log(k))) < 4 * row["se_data"]


def test_linear_gaussian_exact_posterior_gives_exact_log_marginal():
    model = LinearGaussianModel.random(data_dim=6, latent_dim=2, seed=3)
    x = torch.randn(25, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = evalkit.estimate(model, x, k=16, estimators=["elbo", "iwae", "jvi1"], dtype=torch.float64,
                              progress=False)
    exact = model.log_marginal(x).mean().item()
    for value in result.summary["estimate"]:
        assert value == pytest.approx(exact, abs=1e-9)


def test_same_seed_same_numbers_and_different_seed_different_numbers():
    model = LinearGaussianModel.random(data_dim=5, latent_dim=2, seed=1)
    imperfect = model.with_proposal(torch.zeros(2, 5, dtype=torch.float64), torch.zeros(2, dtype=torch.float64),
                                    torch.eye(2, dtype=torch.float64))
    x = torch.randn(10, 5, generator=torch.Generator().manual_seed(2))
    with pytest.warns(WeightWarning):
        a = evalkit.estimate(imperfect, x, k=32, seed=5, progress=False, keep_log_weights=True)
    with pytest.warns(WeightWarning):
        b = evalkit.estimate(imperfect, x, k=32, seed=5, batch_size=3, progress=False, keep_log_weights=True)
    with pytest.warns(WeightWarning):
        c = evalkit.estimate(imperfect, x, k=32, seed=6, progress=False, keep_log_weights=True)
    assert torch.equal(a.log_weights, b.log_weights)
    assert not torch.equal(a.log_weights, c.log_weights)
    assert a.summary.equals(b.summary)


def test_json_round_trips_every_number():
    result = evalkit.estimate_from_log_weights(gamma_log_weights(n=30, k=10), ["elbo", "iwae", "jvi1"])
    doc = json.loads(result.to_json(per_example=True))
    assert doc["schema_version"] == 1
    for row, expected in zip(doc["estimates"], result.summary.to_dict(orient="records")):
        assert row["estimator"] == expected["estimator"]
        assert row["estimate"] == expected["estimate"]  # exact: JSON floats round-trip
        assert row["se_data"] == expected["se_data"]
    assert doc["per_example"]["iwae"] == result.per_example["iwae"].tolist()


@pytest.mark.parametrize("fmt, marker", [
    ("table", "log p(x) estimates"),
    ("csv", "estimator,k,estimate,se_data,se_mc,n"),
    ("markdown", "| estimator"),
    ("latex", r"\begin{tabular}"),
    ("json", '"schema_version": 1'),
])
def test_every_format_renders(fmt, marker):
    result = evalkit.estimate_from_log_weights(gamma_log_weights(n=20, k=8), ["elbo", "iwae"])
    assert marker in result.format(fmt)


def test_csv_keeps_full_precision():
    result = evalkit.estimate_from_log_weights(gamma_log_weights(n=20, k=8), ["iwae"])
    line = result.to_csv().splitlines()[1]
    assert float(line.split(",")[2]) == result.summary["estimate"].iloc[0]


def test_k_must_be_positive():
    with pytest.raises(InputError, match="k must be a positive integer"):
        evalkit.estimate(LinearGaussianModel.random(3, 1), torch.zeros(2, 3), k=0)


def test_jvi_order_must_be_below_k():
    with pytest.raises(InputError, match=r"'jvi3' needs at least 4 samples"):
        evalkit.estimate_from_log_weights(gamma_log_weights(n=4, k=3), ["jvi3"])


def test_unknown_estimator_is_rejected_before_any_work():
    with pytest.raises(InputError, match="iwae"):
        evalkit.estimate(LinearGaussianModel.random(3, 1), torch.zeros(2, 3), k=5, estimators=["iwea"])


def test_weight_diagnostics_flag_heavy_tailed_datapoints():
    rng = np.random.default_rng(0)
    light = np.log(rng.gamma(5.0, 1.0, size=(10, 500)))
    # Pareto weights with tail index 1/1.2: k-hat near 1.2, far above 0.7.
    heavy = np.log(rng.pareto(1 / 1.2, size=(3, 500)) + 1)
    with pytest.warns(WeightWarning, match=r"\(10, 11, 12\)"):
        result = evalkit.estimate_from_log_weights(np.vstack([light, heavy]), ["iwae"])
    assert result.diagnostics["indices_khat_above_0.7"] == [10, 11, 12]
    # min(1 - 1/log10(500), 0.7) = 0.6295; the datapoints above it are the warning's, not the table's (stdout)
    assert "> 0.629 (the threshold for K = 500)" in result.to_table() and "warning:" not in result.to_table()
    assert "warning: k-hat > 0.629" in result.diagnostics_text()
    assert result.diagnostics["khat_threshold"] == pytest.approx(1 - 1 / math.log10(500))
    assert result.diagnostics["indices_khat_above_threshold"] == [10, 11, 12]
