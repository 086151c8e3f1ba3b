"""Oracle tests of the Bayes-by-backprop log-weights: Bayesian linear regression in closed form.

A one-layer :class:`BayesianMLP` with a Gaussian likelihood (known noise), a Gaussian prior and
a diagonal Gaussian q that is NOT the posterior (widened and moved) has a closed-form log
evidence, ELBO expectation and log predictive density (tests/bnn_oracle_helpers.py, checked
against brute-force Monte Carlo first). Tolerances come from standard errors; every random
number is seeded.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from bnn_oracle_helpers import make_problem
from evalkit.estimators import elbo, iwae, iwae_mc_variance, jvi
from evalkit.sampling.bnn_weights import evidence_log_weights, predictive_log_likelihoods, weight_noise
from evalkit.estimators.shared_columns import independent_rows_mc_se, shared_column_mc_se


@pytest.fixture(scope="module")
def problem():
    return make_problem()


def test_closed_forms_agree_with_brute_force_monte_carlo(problem):
    rng = np.random.default_rng(1)
    w = problem.m + np.sqrt(problem.v) * rng.normal(size=(1_000_000, 3))
    log_w = problem.evidence_log_weights(w)
    assert abs(log_w.mean() - problem.elbo()) < 4 * log_w.std() / math.sqrt(len(log_w))
    weights = np.exp(log_w - problem.log_evidence())  # mean 1 exactly in expectation
    assert abs(weights.mean() - 1) < 4 * weights.std() / math.sqrt(len(weights))
    log_lik = problem.predictive_log_likelihoods(w[:200_000])
    lik = np.exp(log_lik - problem.log_predictive()[:, None])
    assert np.all(np.abs(lik.mean(1) - 1) < 4 * lik.std(1) / math.sqrt(lik.shape[1]))
    expected = log_lik.mean(1)
    assert np.all(np.abs(expected - problem.expected_log_likelihood()) < 4 * log_lik.std(1) / math.sqrt(lik.shape[1]))


def test_evidence_log_weights_equal_a_direct_computation(problem):
    model = problem.model()
    x, y, _, _ = problem.tensors()
    got = evidence_log_weights(model, x, y, k=300, seed=5)
    eps = weight_noise(5, 0, 300, 3).numpy()
    w = problem.m + np.sqrt(problem.v) * eps
    np.testing.assert_allclose(got[0].numpy(), problem.evidence_log_weights(w), rtol=0, atol=1e-10)
    predictive = predictive_log_likelihoods(model, *problem.tensors()[2:], k=300, seed=5)
    np.testing.assert_allclose(predictive.numpy(), problem.predictive_log_likelihoods(w), rtol=0, atol=1e-11)


def test_elbo_equals_its_exact_expectation(problem):
    model = problem.model()
    x, y, _, _ = problem.tensors()
    log_w = evidence_log_weights(model, x, y, k=20_000, seed=0)[0].numpy()
    se = log_w.std(ddof=1) / math.sqrt(log_w.size)
    assert abs(float(elbo(log_w[None])[0]) - problem.elbo()) < 3 * se
    # IWAE at K = 20000: bias about -relvar / (2K) ~ -2e-5, far inside its SE.
    se_iwae = math.sqrt(float(iwae_mc_variance(log_w[None])[0]))
    assert abs(float(iwae(log_w[None])[0]) - problem.log_evidence()) < 3 * se_iwae


def _slope(ks, biases, ses):
    """Weighted least-squares slope of log|bias| on log K, and its standard error (delta method)."""
    x, yv = np.log(ks), np.log(np.abs(biases))
    wts = (np.asarray(biases) / np.asarray(ses)) ** 2  # 1 / var(log|b|)
    xm = np.sum(wts * x) / wts.sum()
    slope = np.sum(wts * (x - xm) * yv) / np.sum(wts * (x - xm) ** 2)
    return slope, math.sqrt(1 / np.sum(wts * (x - xm) ** 2))


@pytest.mark.slow
def test_iwae_and_jvi_converge_to_the_exact_evidence_with_slopes_minus_one_and_two():
    problem = make_problem(scale=2.0, shift=1.0)  # relative weight variance about 3.3
    model = problem.model()
    x, y, _, _ = problem.tensors()
    pool = evidence_log_weights(model, x, y, k=2**18, seed=0)[0].numpy()
    truth = problem.log_evidence()

    def bias(fn, k):
        err = fn(pool.reshape(-1, k)) - truth
        return err.mean(), err.std(ddof=1) / math.sqrt(err.size)

    ks = [16, 32, 64, 128]
    b, s = zip(*(bias(iwae, k) for k in ks))
    assert all(value < -4 * se for value, se in zip(b, s))  # biased low, clearly
    slope, slope_se = _slope(ks, b, s)
    assert abs(slope + 1) < 3 * slope_se + 0.15, (slope, slope_se)  # 0.15: the O(1/K^2) term at K = 16
    # The leading term: K * bias -> -relvar / 2 (relvar from the pool).
    relvar = np.exp(pool - truth).var()
    assert abs(128 * b[-1] + relvar / 2) < 3 * 128 * s[-1] + 0.1 * relvar / 2

    ks = [4, 8, 16]
    b1, s1 = zip(*(bias(lambda r: jvi(r, 1), k) for k in ks))
    assert all(abs(value) > 3 * se for value, se in zip(b1, s1))
    slope1, slope1_se = _slope(ks, b1, s1)
    assert abs(slope1 + 2) < 3 * slope1_se + 0.3, (slope1, slope1_se)  # 0.3: pre-asymptotic at K = 4
    # And both agree with the exact value at K = 2**18 within the Monte Carlo SE.
    assert abs(float(iwae(pool[None])[0]) - truth) < 3 * math.sqrt(float(iwae_mc_variance(pool[None])[0]))


def test_predictive_estimates_agree_with_the_exact_values(problem):
    model = problem.model()
    _, _, xs, ys = problem.tensors()
    log_p = predictive_log_likelihoods(model, xs, ys, k=4000, seed=0).numpy()
    exact = problem.log_predictive()
    for name in ("iwae", "jvi1"):
        estimate = (iwae(log_p) if name == "iwae" else jvi(log_p, 1)).mean()
        se = shared_column_mc_se(log_p, name)
        assert abs(estimate - exact.mean()) < 3 * se, name
    per_row_se = np.sqrt(iwae_mc_variance(log_p))
    assert np.all(np.abs(jvi(log_p, 1) - exact) < 4 * per_row_se)
    assert abs(elbo(log_p).mean() - problem.expected_log_likelihood().mean()) < 3 * shared_column_mc_se(log_p, "elbo")


@pytest.mark.slow
def test_shared_column_se_covers_the_truth_at_the_stated_rate():
    """Over 200 seeds, |estimate - truth| < 2 SE about 95% of the time (binomial sd 1.5%).

    Little training data (4 points) and 50 test points: the weight uncertainty moves all test
    points together, the case where the independent-rows formula fails.
    """
    problem = make_problem(n=4, n_test=50)
    model = problem.model()
    _, _, xs, ys = problem.tensors()
    truths = {"elbo": problem.expected_log_likelihood().mean(), "jvi1": problem.log_predictive().mean()}
    inside = {name: 0 for name in truths}
    inside_naive = 0
    ratios = []
    seeds = range(100, 300)
    for seed in seeds:
        log_p = predictive_log_likelihoods(model, xs, ys, k=200, seed=seed).numpy()
        for name, truth in truths.items():
            estimate = (elbo(log_p) if name == "elbo" else jvi(log_p, 1)).mean()
            se = shared_column_mc_se(log_p, name, groups=50)
            inside[name] += abs(estimate - truth) < 2 * se
            if name == "jvi1":
                naive = independent_rows_mc_se(iwae_mc_variance(log_p))
                inside_naive += abs(estimate - truth) < 2 * naive
                ratios.append(se / naive)
    n = len(seeds)
    for name, count in inside.items():
        assert 0.95 - 3 * 0.0154 < count / n < 0.95 + 3 * 0.0154 + 1e-9, (name, count / n)
    # Rows share the weight samples: the independent-rows formula is too small and under-covers.
    assert np.median(ratios) > 1.5
    assert inside_naive / n < 0.95 - 3 * 0.0154
