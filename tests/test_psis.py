"""PSIS k-hat: recovery of known tail shapes, an independent MLE check, thresholds, edge cases."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from evalkit import estimators as E
from evalkit.errors import InputError
from evalkit.estimators.psis import KHAT_BAD, KHAT_GOOD, gpd_fit, khat_threshold, tail_length

S = 5000


@pytest.mark.parametrize("k", [0.2, 0.5, 0.8, 1.2])
def test_recovers_the_shape_of_a_generalised_pareto(k):
    # Exceedances of a GPD over any threshold are GPD with the same shape, so the PSIS tail
    # of GPD(k) draws has shape k. 64 rows: the mean k-hat has a standard error of about 0.02.
    rng = np.random.default_rng(int(k * 10))
    x = stats.genpareto.rvs(k, size=(64, S), random_state=rng)
    khat = E.psis_khat(np.log(x))
    # the prior pulls towards 0.5 by 10 / (M + 10), about 4% of the distance
    expected = (tail_length(S) * k + 5.0) / (tail_length(S) + 10.0)
    assert abs(khat.mean() - expected) < 0.06, khat.mean()
    assert 0.05 < khat.std() < 0.25


def test_agrees_with_an_independent_maximum_likelihood_fit():
    # scipy's generalised Pareto MLE on the same tail (location fixed at the threshold): a
    # different estimator, so only close, not equal.
    rng = np.random.default_rng(1)
    m = tail_length(S)
    for k in (0.3, 0.9):
        x = stats.genpareto.rvs(k, size=(12, S), random_state=rng)
        khat = E.psis_khat(np.log(x))
        mle = []
        for row in x:
            xs = np.sort(row)
            mle.append(stats.genpareto.fit(xs[-m:] - xs[-m - 1], floc=0)[0])
        diff = np.abs(khat - np.array(mle))
        assert diff.mean() < 0.06 and diff.max() < 0.2, diff


def test_light_tails_give_small_khat_heavy_tails_large():
    rng = np.random.default_rng(2)
    gamma = E.psis_khat(np.log(rng.gamma(1.0, size=(32, S))))  # exponential tail: k = 0
    assert abs(gamma.mean()) < 0.1
    assert (gamma < KHAT_GOOD).all()
    lognormal = E.psis_khat(2.5 * rng.normal(size=(32, S)))  # all moments finite, but heavy
    assert lognormal.mean() > gamma.mean() + 0.4


def test_invariant_to_shift_and_permutation_and_kind():
    rng = np.random.default_rng(3)
    lw = rng.normal(size=(4, 1000)) * 1.5 - 300.0
    base = E.psis_khat(lw)
    np.testing.assert_allclose(E.psis_khat(lw + 250.0), base, atol=1e-9)
    np.testing.assert_allclose(E.psis_khat(lw[:, ::-1]), base, atol=1e-12)
    t = E.psis_khat(torch.from_numpy(lw))
    assert isinstance(t, torch.Tensor)
    np.testing.assert_array_equal(t.numpy(), base)


def test_batched_fit_equals_row_by_row():
    rng = np.random.default_rng(4)
    lw = np.log(stats.genpareto.rvs(0.6, size=(5, 2000), random_state=rng))
    together = E.psis_khat(lw)
    alone = np.array([float(E.psis_khat(r)) for r in lw])
    np.testing.assert_allclose(together, alone, rtol=1e-14)


def test_gpd_fit_is_scale_invariant_in_k():
    x = np.sort(stats.genpareto.rvs(0.4, size=(1, 300), random_state=np.random.default_rng(5)), axis=1)
    k1, s1 = gpd_fit(x)
    k2, s2 = gpd_fit(x * 1e-200)
    assert abs(k1[0] - k2[0]) < 1e-10 and abs(s2[0] / s1[0] - 1e-200) < 1e-200 * 1e-9


def test_small_k_and_degenerate_rows_are_nan_with_one_warning():
    rng = np.random.default_rng(6)
    with pytest.warns(UserWarning, match=r"k-hat is nan in rows 0, 1\b"):
        out = E.psis_khat(rng.normal(size=(2, 20)))  # tail of 4 < 5
    assert np.isnan(out).all()
    assert np.isfinite(E.psis_khat(rng.normal(size=(1, 21))))[0]  # tail of 5
    lw = rng.normal(size=(3, 500))
    lw[0] = 0.0  # all equal: no tail
    lw[1, 4:] = -math.inf  # only 4 positive weights
    lw[2, 5:] = -math.inf  # 5 positive weights: a tail of 5, as in PSIS
    with pytest.warns(UserWarning, match=r"rows 0, 1\b"):
        out = E.psis_khat(lw)
    assert np.isnan(out[:2]).all() and np.isfinite(out[2])
    with pytest.warns(UserWarning, match="nan"):
        assert np.isnan(E.psis_khat(np.full((1, 100), -math.inf)))[0]


def test_ties_below_the_tail_are_handled_one_row_at_a_time():
    rng = np.random.default_rng(7)
    lw = rng.normal(size=(2, 1000))
    lw[0, :900] = -5.0  # the threshold value is tied many times
    out = E.psis_khat(lw)
    assert np.isfinite(out).all()


def test_threshold_at_the_sample_sizes_of_issue_27():
    """min(1 - 1/log10(K), 0.7) (Vehtari et al., JMLR 2024): 0.5, 2/3 and the 0.7 cap."""
    assert khat_threshold(100) == pytest.approx(0.5, abs=1e-15)
    assert khat_threshold(1000) == pytest.approx(0.6667, abs=5e-5)
    assert khat_threshold(5000) == 0.7
    assert khat_threshold(2155) == 0.7 and khat_threshold(2154) < 0.7  # 10**(10/3) = 2154.4


def test_thresholds():
    assert KHAT_GOOD == 0.5 and KHAT_BAD == 0.7
    assert khat_threshold(100) == pytest.approx(0.5)
    assert khat_threshold(10_000) == 0.7  # 1 - 1/4 = 0.75 is capped at 0.7
    assert khat_threshold(1000) == pytest.approx(1 - 1 / 3)
    assert khat_threshold(10) == pytest.approx(0.0)
    assert khat_threshold(np.int64(5000)) == 0.7
    assert khat_threshold(1) == -math.inf  # log10(1) = 0: one sample certifies nothing
    for bad in (0, 2.5, True):
        with pytest.raises(InputError):
            khat_threshold(bad)


def test_tail_length():
    assert tail_length(5000) == 213  # ceil(3 sqrt(5000)) = ceil(212.13)
    assert tail_length(100) == 20 and tail_length(20) == 4 and tail_length(21) == 5
