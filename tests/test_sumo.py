"""SUMO (Luo et al. 2020): unbiased against exact oracles where IWAE-m is not, its cap, its MC variance, its draws."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evalkit import estimators
from evalkit.errors import InputError
from evalkit.estimators import iwae
from evalkit.estimators.sumo import (_sumo_rows, sumo, sumo_cap_probability, sumo_expected_columns, sumo_mc_variance,
                                     sumo_tail, sumo_truncation)
from evalkit.models import LinearGaussianModel


def z_score(values, exact):
    """(mean - exact) / SE of the mean over rows: the unbiasedness check used for every variant."""
    diff = np.asarray(values, dtype=np.float64) - np.asarray(exact, dtype=np.float64)
    return float(diff.mean() / (diff.std(ddof=1) / math.sqrt(diff.size)))


def unweighted_sumo(log_w, m):
    """The deliberately wrong variant: the same J, the terms not divided by P(J >= j)."""
    rows = np.asarray(log_w, dtype=np.float64)
    return _sumo_rows(rows, m, sumo_truncation(rows, m=m), np.ones(rows.shape[1] - m))


M = 4
K = 100


@pytest.fixture(scope="module")
def lognormal():
    mu, s = 0.2, 0.5
    rows = np.random.default_rng(2027).normal(mu, s, size=(50_000, K))
    return rows, mu + s * s / 2  # log E[w] for log w ~ N(mu, s^2)


def test_sumo_unbiased_on_lognormal_weights_where_iwae_m_is_not(lognormal):
    rows, exact = lognormal
    assert abs(z_score(sumo(rows, m=M), exact)) < 3
    assert z_score(iwae(rows[:, :M]), exact) < -10   # IWAE_m on the same rows: many SE below
    assert z_score(unweighted_sumo(rows, M), exact) < -5  # the check catches a SUMO without 1/P


def test_sumo_unbiased_on_linear_gaussian_model():
    torch.manual_seed(0)
    model = LinearGaussianModel.random(5, 2, seed=3)
    weight, bias, scale_tril = model.exact_posterior_params()
    model = model.with_proposal(weight, bias + 0.5 * scale_tril.sum(1), 1.2 * scale_tril)
    x = model.marginal().sample((20_000,))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        log_w = model.log_weights(x, torch.randn(x.shape[0], K, *model.noise_shape, generator=gen, dtype=torch.float64))
        exact = model.log_marginal(x).numpy()
    assert abs(z_score(sumo(log_w, m=M).numpy(), exact)) < 3
    assert z_score(iwae(log_w[:, :M]).numpy(), exact) < -10
    assert z_score(unweighted_sumo(log_w.numpy(), M), exact) < -5


def test_cap_makes_sumo_unbiased_for_iwae_k_not_log_p():
    """With K = m + 3 the cap is hit often; E[SUMO] is then E[IWAE_K] exactly (telescoping), below log p."""
    mu, s, m = 0.0, 1.0, 4
    rows = np.random.default_rng(5).normal(mu, s, size=(200_000, m + 3))
    values = sumo(rows, m=m)
    assert abs(z_score(values, iwae(rows))) < 3
    assert z_score(values, mu + s * s / 2) < -5


def test_mc_variance_matches_the_spread_over_independent_draws(lognormal):
    """Rows are iid with one exact value, so their spread is the MC variance over samples and J."""
    rows, _ = lognormal
    empirical = float(np.var(sumo(rows, m=M), ddof=1))
    predicted = float(np.mean(sumo_mc_variance(rows, m=M)))
    assert predicted == pytest.approx(empirical, rel=0.1)
    # the seed changes J, not the variance estimate
    assert np.array_equal(sumo_mc_variance(rows[:10], m=M), sumo_mc_variance(rows[:10], m=M))


def test_same_seed_same_numbers_and_batching_invariance(lognormal):
    rows = lognormal[0][:500]
    whole = sumo(rows)
    parts = np.concatenate([sumo(rows[a:a + 37]) for a in range(0, 500, 37)])
    assert np.array_equal(whole, parts)
    assert np.array_equal(whole, sumo(torch.as_tensor(rows)).numpy())
    reordered = np.random.default_rng(0).permutation(500)
    assert np.array_equal(whole[reordered], sumo(rows[reordered]))
    assert not np.array_equal(whole, sumo(rows, seed=1))
    by_index = sumo(rows, index=np.arange(500))
    assert np.array_equal(by_index[100:200], sumo(rows[100:200], index=np.arange(100, 200)))


def test_sumo_uses_only_the_first_m_plus_j_plus_one_columns(lognormal):
    rows = lognormal[0][:300].copy()
    j = sumo_truncation(rows)
    before = sumo(rows)
    for n in range(300):
        rows[n, 16 + j[n] + 1:] = 5.0
    assert np.array_equal(before, sumo(rows))


def test_truncation_follows_the_tail():
    rows = np.random.default_rng(1).normal(size=(100_000, 120))
    j = sumo_truncation(rows)
    for level in (1, 3, 10, 79, 85):
        observed = float(np.mean(j >= level))
        p = float(sumo_tail(level))
        assert abs(observed - p) < 4 * math.sqrt(p * (1 - p) / j.size)


def test_tail_constants():
    assert sumo_tail(0) == 1.0 and sumo_tail(9) == pytest.approx(0.1) and sumo_tail(79) == pytest.approx(1 / 80)
    assert sumo_tail(80) == pytest.approx(0.9 / 80)
    brute = 17 + float(np.sum(sumo_tail(np.arange(1, 5000))))
    assert sumo_expected_columns() == pytest.approx(brute, rel=1e-12)
    assert sumo_cap_probability(100) == pytest.approx(0.9**5 / 80)
    assert sumo_cap_probability(1000) < 1e-40


def test_registry_edge_cases_and_errors():
    est = estimators.get("SUMO")
    assert est.name == "sumo" and est.min_k == 17 and "sumo" in estimators.available()
    assert est(np.full((2, 20), -math.inf)).tolist() == [-math.inf, -math.inf]
    out = est(torch.zeros(3, 4, 20, dtype=torch.float32))
    assert out.shape == (3, 4) and out.dtype == iwae(torch.zeros(2, dtype=torch.float32)).dtype and torch.all(out == 0)
    with pytest.raises(InputError, match="K >= 17"):
        est(np.zeros((2, 10)))
    with pytest.raises(InputError, match="NaN"):
        est(np.full((2, 20), np.nan))


def test_sweep_bias_of_sumo_follows_iwae_and_is_zero_within_se_where_iwae_k_is():
    """The documented check: in a sweep SUMO's bias at k equals IWAE-k's within SE (the cap makes it
    unbiased for E[IWAE_k]); at k = 100, where IWAE's bias is many SE below zero, SUMO's is not."""
    from evalkit import sweep

    mu, s = 0.0, 0.5
    log_w = np.random.default_rng(11).normal(mu, s, size=(4000, 1000))
    table = sweep(log_w, ks=[20, 100], estimators=["iwae", "sumo"], reference=mu + s * s / 2).table
    cell = {(r.estimator, r.k): r for r in table.itertuples()}
    for k in (20, 100):
        gap = cell[("sumo", k)].bias - cell[("iwae", k)].bias
        assert abs(gap) < 3 * math.hypot(cell[("sumo", k)].bias_se, cell[("iwae", k)].bias_se)
    assert cell[("iwae", 20)].bias < -10 * cell[("iwae", 20)].bias_se
    assert abs(cell[("sumo", 100)].bias) < 3 * cell[("sumo", 100)].bias_se
    assert cell[("sumo", 20)].bias < -3 * cell[("sumo", 20)].bias_se  # k = 20: the cap bites (J_max = 3)


@pytest.mark.filterwarnings("ignore::evalkit.errors.WeightWarning")  # few samples: the k-hat warning is expected
def test_estimate_reports_sumo_with_its_mc_se(lognormal):
    import evalkit

    rows = lognormal[0][:2000]
    result = evalkit.estimate_from_log_weights(rows, ["sumo", "iwae"])
    row = result.summary.set_index("estimator").loc["sumo"]
    assert row.estimate == pytest.approx(float(np.mean(sumo(rows))), rel=1e-12)
    assert row.se_mc == pytest.approx(math.sqrt(float(np.sum(sumo_mc_variance(rows)))) / 2000, rel=1e-12)
