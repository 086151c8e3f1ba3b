"""Pure diagnostics over K: grouping, bias/variance/RMSE with SEs, theory curves, the 1/K fit.

Every number is checked against an independent truth: a hand-written loop, a closed form
(Gamma weights: mu2/mu^2 = 1/a, mu3/mu^3 = 2/a^2, E[IWAE_K] = psi(Ka) - log(Ka) + log a), or
an exactly known curve.
"""
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.special import digamma, polygamma

from evalkit.analysis import diagnostics as dg
from evalkit.errors import InputError


# -- ladder and grouping -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "k_max, expected",
    [
        (1, [1]),
        (2, [1, 2]),
        (5, [1, 2, 5]),
        (7, [1, 2, 5, 7]),
        (300, [1, 2, 5, 10, 20, 50, 100, 200, 300]),
        (5000, [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]),
    ],
)
def test_ladder(k_max, expected):
    assert dg.ladder(k_max) == expected


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_ladder_rejects_non_positive_integers(bad):
    with pytest.raises(InputError, match="k_max must be a positive integer"):
        dg.ladder(bad)


def test_group_columns_are_disjoint_consecutive_blocks_and_a_view():
    log_w = torch.arange(2 * 11, dtype=torch.float64).reshape(2, 11)
    grouped = dg.group_columns(log_w, 3)
    assert grouped.shape == (2, 3, 3)
    for g in range(3):
        assert torch.equal(grouped[:, g], log_w[:, 3 * g : 3 * g + 3])
    assert grouped.data_ptr() == log_w.data_ptr()  # no copy
    with pytest.raises(InputError, match="exceeds the pool of 11 samples"):
        dg.group_columns(log_w, 12)


def test_evaluate_groups_matches_a_loop_and_is_independent_of_chunking():
    rng = np.random.default_rng(1)
    log_w = torch.from_numpy(rng.normal(size=(7, 23)))

    def lme(x):  # the estimator under test is irrelevant here: any [..., k] -> [...] function
        return torch.logsumexp(x, dim=-1) - math.log(x.shape[-1])

    expected = np.array([[float(lme(log_w[n, 5 * g : 5 * g + 5])) for g in range(4)] for n in range(7)])
    for max_elements in (1, 5, 20, 10**6):
        got = dg.evaluate_groups(log_w, 5, lme, max_elements=max_elements)
        np.testing.assert_array_equal(got, expected)


# -- bias / variance / RMSE ----------------------------------------------------------------------


def test_bias_variance_against_independent_formulas():
    rng = np.random.default_rng(2)
    n, groups = 40, 6
    est = rng.normal(loc=-1.0, scale=0.7, size=(n, groups)) + rng.normal(size=(n, 1))
    ref = rng.normal(size=n) * 0.1 - 0.8
    got = dg.bias_variance(est, ref, k=10)

    m = np.array([sum(row) / groups for row in est])
    v = np.array([sum((x - mm) ** 2 for x in row) / (groups - 1) for row, mm in zip(est, m)])
    d = m - ref

    def se(x):
        return math.sqrt(sum((xi - x.mean()) ** 2 for xi in x) / (len(x) - 1) / len(x))

    assert got.k == 10 and got.groups == groups and got.note == ""
    assert got.estimate == pytest.approx(m.mean(), rel=1e-13)
    assert got.estimate_se == pytest.approx(se(m), rel=1e-12)
    assert got.bias == pytest.approx(d.mean(), rel=1e-12)
    assert got.bias_se == pytest.approx(se(d), rel=1e-12)
    assert got.variance == pytest.approx(v.mean(), rel=1e-12)
    assert got.variance_se == pytest.approx(se(v), rel=1e-12)
    assert got.mc_se == pytest.approx(math.sqrt(v.sum() / groups) / n, rel=1e-12)
    rmse = math.sqrt(d.mean() ** 2 + v.mean())
    assert got.rmse == pytest.approx(rmse, rel=1e-12)
    # delta method written out: Var(R) = (b^2 Var(b) + b Cov(b, V) + Var(V) / 4) / R^2
    cov_bv = np.sum((d - d.mean()) * (v - v.mean())) / (n - 1) / n
    var_r = (d.mean() ** 2 * se(d) ** 2 + d.mean() * cov_bv + se(v) ** 2 / 4) / rmse**2
    assert got.rmse_se == pytest.approx(math.sqrt(var_r), rel=1e-10)


def test_rmse_se_agrees_with_a_numerical_delta_method():
    rng = np.random.default_rng(3)
    est = rng.gamma(2.0, size=(30, 4))
    got = dg.bias_variance(est, np.zeros(30), k=1)
    m, v = est.mean(1), est.var(1, ddof=1)
    cov = np.cov(np.stack([m, v])) / 30
    f = lambda b, var: math.sqrt(b * b + var)  # noqa: E731
    h = 1e-6
    grad = np.array([(f(m.mean() + h, v.mean()) - f(m.mean() - h, v.mean())) / (2 * h),
                     (f(m.mean(), v.mean() + h) - f(m.mean(), v.mean() - h)) / (2 * h)])
    assert got.rmse_se == pytest.approx(math.sqrt(grad @ cov @ grad), rel=1e-6)


def test_one_group_gives_nan_variance_with_a_note():
    est = np.arange(5.0).reshape(5, 1)
    got = dg.bias_variance(est, np.zeros(5), k=700)
    assert got.groups == 1
    assert math.isnan(got.variance) and math.isnan(got.variance_se) and math.isnan(got.mc_se)
    assert math.isnan(got.rmse) and math.isnan(got.rmse_se)
    assert got.bias == 2.0 and got.bias_se == pytest.approx(math.sqrt(2.5 / 5))
    assert "one group of 700 samples" in got.note and "no variance estimate" in got.note


def test_one_datapoint_gives_nan_standard_errors_with_a_note():
    got = dg.bias_variance(np.array([[1.0, 3.0]]), np.array([0.0]), k=1)
    assert got.bias == 2.0 and got.variance == 2.0
    assert math.isnan(got.bias_se) and math.isnan(got.estimate_se) and math.isnan(got.rmse_se)
    assert "one datapoint" in got.note


def test_scalar_reference_broadcasts():
    est = np.ones((3, 2))
    assert dg.bias_variance(est, 0.25, k=1).bias == pytest.approx(0.75)


# -- theory --------------------------------------------------------------------------------------


def test_moment_ratios_match_direct_formulas_and_are_shift_invariant():
    rng = np.random.default_rng(4)
    log_w = rng.normal(size=(5, 50))
    w = np.exp(log_w)
    mean = w.mean(1, keepdims=True)
    r2_direct = ((w - mean) ** 2).sum(1) / (50 - 1) / mean[:, 0] ** 2
    r3_direct = 50 * ((w - mean) ** 3).sum(1) / (49 * 48) / mean[:, 0] ** 3
    for shift in (0.0, -800.0, 700.0):  # exp would under/overflow without the softmax
        r2, r3 = dg.moment_ratios(log_w + shift)
        np.testing.assert_allclose(r2, r2_direct, rtol=1e-11)
        np.testing.assert_allclose(r3, r3_direct, rtol=1e-10)
    # DESIGN.md's form: r2 = K/(K-1) (K sum w~^2 - 1)
    wt = w / w.sum(1, keepdims=True)
    np.testing.assert_allclose(r2, 50 / 49 * (50 * (wt**2).sum(1) - 1), rtol=1e-11)


def test_moment_ratios_need_two_and_three_samples():
    r2, r3 = dg.moment_ratios(np.zeros((2, 1)))
    assert np.isnan(r2).all() and np.isnan(r3).all()
    r2, r3 = dg.moment_ratios(np.zeros((2, 2)))
    assert np.all(r2 == 0) and np.isnan(r3).all()


def test_moment_ratios_of_gamma_weights():
    # Gamma(a, 1): mu = a, mu2 = a, mu3 = 2a, so r2 = 1/a and r3 = 2/a^2.
    a = 2.0
    rng = np.random.default_rng(5)
    r2, r3 = dg.moment_ratios(np.log(rng.gamma(a, size=(20, 50_000))))
    assert r2.mean() == pytest.approx(1 / a, rel=0.01)
    assert r3.mean() == pytest.approx(2 / a**2, rel=0.05)


@pytest.mark.parametrize("a", [0.5, 1.0, 3.0])
def test_iwae_theory_is_the_asymptotic_expansion_of_the_gamma_oracle(a):
    # With the exact ratios, the 1/K^2 curves differ from psi(Ka) - log(Ka) and psi'(Ka) by
    # O(K^-3) (the psi expansion: -1/(2x) - 1/(12x^2) + 1/(120x^4); psi'(x) = 1/x + 1/(2x^2) + 1/(6x^3)).
    ks = np.array([20, 50, 200, 1000, 5000])
    theory = dg.iwae_theory(np.full(3, 1 / a), np.full(3, 2 / a**2), ks)
    x = ks * a
    exact_bias = digamma(x) - np.log(x)
    exact_var = polygamma(1, x)
    assert np.all(np.abs(theory["bias_2"] - exact_bias) <= 1.1 / (120 * x**4) + 1e-15)
    assert np.all(np.abs(theory["variance_2"] - exact_var) <= 1.1 / (6 * x**3))
    np.testing.assert_allclose(theory["bias"], -1 / (2 * x), rtol=1e-14)
    np.testing.assert_allclose(theory["variance"], 1 / x, rtol=1e-14)


# -- the a + b/K + c/K^2 fit ---------------------------------------------------------------------


def test_fit_recovers_an_exact_curve_and_the_se_over_datapoints():
    rng = np.random.default_rng(6)
    ks = [10, 20, 50, 100, 200, 500]
    a_n, b_n, c_n = rng.normal(size=30) - 90, rng.normal(size=30) - 5, rng.normal(size=30) * 30
    k = np.array(ks, dtype=float)
    means = a_n[:, None] + b_n[:, None] / k + c_n[:, None] / k**2
    fit = dg.fit_inverse_k(ks, means, se=[0.1, 0.2, 0.1, 0.3, 0.5, 1.0])
    assert fit.a == pytest.approx(a_n.mean(), abs=1e-9)
    assert fit.b == pytest.approx(b_n.mean(), abs=1e-7)
    assert fit.c == pytest.approx(c_n.mean(), abs=1e-5)
    assert fit.a_se == pytest.approx(a_n.std(ddof=1) / math.sqrt(30), rel=1e-7)
    assert fit.ks == tuple(ks) and fit.note == ""


def test_fit_weights_follow_the_standard_errors():
    # A point with a tiny SE is (nearly) interpolated; one with a huge SE is (nearly) ignored.
    ks = [10, 20, 50, 100]
    means = np.array([[1.0, 1.0, 1.0, 5.0]])
    assert dg.fit_inverse_k(ks, means, se=[1, 1, 1, 1e6]).a == pytest.approx(1.0, abs=1e-6)


def test_fit_with_too_few_points_is_nan_with_a_note():
    fit = dg.fit_inverse_k([10, 20], np.zeros((4, 2)), [1, 1])
    assert math.isnan(fit.a) and math.isnan(fit.a_se)
    assert "needs >= 3 values of k" in fit.note


# -- measured bias slopes ------------------------------------------------------------------------


def test_bias_slope_recovers_a_power_law_and_skips_unresolved_points():
    ks = [10, 20, 50, 100, 200, 500]
    bias = [0.3 * k**-2.0 for k in ks]
    se = [1e-6, 1e-6, 1e-6, 1e-6, 1e-4, 1e-4]  # the last two are within 3 SE of zero
    got = dg.bias_slope(ks, bias, se)
    assert got.slope == pytest.approx(-2.0, abs=1e-9)
    assert got.ks == (10, 20, 50, 100) and got.note == ""
    assert got.slope_se > 0


def test_bias_slope_needs_two_resolved_points():
    got = dg.bias_slope([1, 2, 5], [1.0, 0.0, 0.0], [0.1, 0.1, 0.1])
    assert math.isnan(got.slope) and "needs >= 2 values of k" in got.note


def test_summarize_moments_is_bias_variance_from_sufficient_statistics():
    rng = np.random.default_rng(9)
    est = rng.normal(size=(15, 7))
    ref = rng.normal(size=15)
    assert dg.summarize_moments(*dg.group_moments(est), 7, ref, k=3) == dg.bias_variance(est, ref, k=3)


# -- weight diagnostics --------------------------------------------------------------------------


def test_weight_diagnostics_ess_and_named_heavy_rows():
    rng = np.random.default_rng(10)
    log_w = np.log(rng.gamma(3.0, size=(12, 2000)))
    log_w[0] = 0.0  # equal weights: ESS = K
    log_w[[4, 9]] = -1.5 * np.log(rng.uniform(size=(2, 2000)))  # Pareto tail, k = 1.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # psis_khat warns that row 0 (equal weights) has no tail
        got = dg.weight_diagnostics(torch.from_numpy(log_w), index=np.arange(100, 112))
    assert np.isnan(got.khat[0])
    w = np.exp(log_w - log_w.max(1, keepdims=True))
    np.testing.assert_allclose(got.ess_fraction, w.sum(1) ** 2 / (w**2).sum(1) / 2000, rtol=1e-12)
    assert got.ess_fraction[0] == pytest.approx(1.0)
    assert list(got.above_bad) == [104, 109] and list(got.above_good) == [104, 109]
    assert got.fraction_above_bad == pytest.approx(2 / 11)  # of the 11 datapoints with a k-hat
    assert got.good == 0.5 and got.bad == 0.7 and got.threshold == pytest.approx(1 - 1 / math.log10(2000))
    # one denominator everywhere (issue #25): the 11 datapoints with a k-hat; the 12th is counted apart
    assert "2 of 11 datapoints (104, 109), > 0.697 (the reliability threshold" in got.warning
    assert "1 datapoint has no k-hat" in got.warning
    assert got.n_defined == 11 and got.n_undefined == 1 and got.fraction_above_threshold == pytest.approx(2 / 11)
    assert got.summary()["khat_threshold"] == pytest.approx(1 - 1 / math.log10(2000))
    summary = got.summary()
    assert summary["indices_khat_above_0.7"] == [104, 109] and summary["max_khat"] > 1


def test_weight_diagnostics_names_at_most_ten_datapoints():
    rng = np.random.default_rng(11)
    log_w = -1.5 * np.log(rng.uniform(size=(14, 1000)))
    got = dg.weight_diagnostics(torch.from_numpy(log_w))
    assert "0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 4 more" in got.warning
