"""JVI against independent oracles: brute-force subset enumeration (K <= 12) and, at K = 5000,
the exact hypergeometric sum for weights with few distinct values (mpmath).

The oracles below share no code with evalkit: they evaluate the definition
``JVI_m = sum_j c(K, m, j) Lbar_{K-j}`` in 50-60 digit arithmetic, so the float64 result of
``sum_j c_j Lbar`` never enters.
"""
import itertools
import math
import warnings
from fractions import Fraction

import mpmath
import numpy as np
import pytest
import torch

from evalkit import estimators as E
from evalkit.errors import InputError
from evalkit.estimators.jackknife import AccuracyWarning, jackknife_coefficients, jvi_with_error

TOL = 1e-9


# ------------------------------------------------------------------------------------------
# Independent oracles
# ------------------------------------------------------------------------------------------


def _coef(k, m, j):
    return Fraction((-1) ** j * (k - j) ** m, math.factorial(m - j) * math.factorial(j))


def _mp(frac):
    return mpmath.mpf(frac.numerator) / frac.denominator


def brute_force_jvi(log_w, dps=50):
    """{order: JVI} for every order < K, enumerating every subset in high precision."""
    k = len(log_w)
    with mpmath.workdps(dps):
        w = [mpmath.mpf(0) if x == -math.inf else mpmath.exp(mpmath.mpf(float(x))) for x in log_w]
        lbar = []
        for j in range(k):
            total, count = mpmath.mpf(0), 0
            for removed in itertools.combinations(range(k), j):
                rest = sum(w[i] for i in range(k) if i not in removed)
                total += mpmath.log(rest / (k - j)) if rest > 0 else -mpmath.inf
                count += 1
            lbar.append(total / count)
        return {m: float(sum(_mp(_coef(k, m, j)) * lbar[j] for j in range(m + 1))) for m in range(k)}


def few_values_jvi(logs, counts, orders, dps=60):
    """Exact JVI when the weights take the values exp(logs[i]), each counts[i] times.

    Lbar_{K-j} is a finite hypergeometric sum over how many copies of each value are removed.
    """
    k = sum(counts)
    with mpmath.workdps(dps):
        w = [mpmath.mpf(0) if x == -math.inf else mpmath.exp(mpmath.mpf(x)) for x in logs]
        lbar = []
        for j in range(max(orders) + 1):
            total = mpmath.mpf(0)
            for r in itertools.product(*[range(min(n, j) + 1) for n in counts]):
                if sum(r) != j:
                    continue
                ways = mpmath.mpf(1)
                for n, ri in zip(counts, r):
                    ways *= mpmath.binomial(n, ri)
                rest = sum((n - ri) * x for n, ri, x in zip(counts, r, w))
                total += ways * (mpmath.log(rest / (k - j)) if rest > 0 else -mpmath.inf)
            lbar.append(total / mpmath.binomial(k, j))
        return {m: float(sum(_mp(_coef(k, m, j)) * lbar[j] for j in range(m + 1))) for m in orders}


def _adversarial_small(kind, k, rng):
    if kind == "normal":
        return rng.normal(size=k)
    if kind == "wide_offset":  # values near -90, as real log-weights are
        return rng.normal(size=k) * 3.0 - 90.0
    if kind == "dominated":  # normalised weight of the first one is 1 - 1e-12
        lw = np.zeros(k)
        lw[0] = math.log(1 - 1e-12) - math.log(1e-12 / (k - 1))
        return lw
    if kind == "spread_1000":  # log-weights spread over 1000 nats (beyond float64 weights)
        return rng.uniform(-1000.0, 0.0, size=k)
    if kind == "two_heavy":
        lw = rng.normal(size=k)
        lw[:2] += 8.0
        return lw
    if kind == "neg_inf":
        lw = rng.normal(size=k)
        lw[1] = -math.inf
        return lw
    raise ValueError(kind)


# ------------------------------------------------------------------------------------------
# Brute force, K <= 12, every order < K
# ------------------------------------------------------------------------------------------

SMALL_KINDS = ["normal", "wide_offset", "dominated", "spread_1000", "two_heavy", "neg_inf"]


@pytest.mark.parametrize("kind", SMALL_KINDS)
def test_matches_brute_force_every_order_small_k(kind):
    rng = np.random.default_rng(SMALL_KINDS.index(kind))
    worst = 0.0
    for k in [2, 3, 4, 5, 6, 7, 8]:
        lw = _adversarial_small(kind, k, rng)
        ref = brute_force_jvi(lw)
        for m in range(k):
            if not np.isfinite(ref[m]):
                continue
            got = float(E.jvi(lw, m))
            worst = max(worst, abs(got - ref[m]))
            assert abs(got - ref[m]) <= TOL, (kind, k, m, got, ref[m])
    assert worst <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("kind", SMALL_KINDS)
@pytest.mark.parametrize("k", [9, 10, 11, 12])
def test_matches_brute_force_every_order_k9_to_k12(kind, k):
    rng = np.random.default_rng(k * 1000 + SMALL_KINDS.index(kind))
    lw = _adversarial_small(kind, k, rng)
    ref = brute_force_jvi(lw)
    got = {m: float(E.jvi(lw, m)) for m in range(k) if np.isfinite(ref[m])}
    errors = {m: abs(got[m] - ref[m]) for m in got}
    assert max(errors.values()) <= TOL, errors


def test_batch_of_rows_matches_brute_force_row_by_row():
    # Rows with different routes in one call: light, dominated, -inf, spread.
    rng = np.random.default_rng(7)
    k = 8
    rows = np.stack([_adversarial_small(kind, k, rng) for kind in SMALL_KINDS])
    refs = [brute_force_jvi(r) for r in rows]
    for m in range(1, k):
        with warnings.catch_warnings():
            # the row with a -inf has only 7 finite weights: order 7 is undefined there (nan)
            warnings.simplefilter("ignore", AccuracyWarning)
            got = E.jvi(rows, m)
        for r in range(len(rows)):
            if np.isfinite(refs[r][m]):
                assert abs(got[r] - refs[r][m]) <= TOL


def test_k2_order1_closed_form():
    # K = 2: JVI_1 = 2 IWAE_2 - (l_1 + l_2)/2.
    lw = np.array([[-3.0, 1.5], [0.0, -700.0], [-1e4, -1e4 + 1e-7]])
    iwae2 = np.logaddexp(lw[:, 0], lw[:, 1]) - math.log(2)
    expected = 2 * iwae2 - lw.mean(axis=1)
    np.testing.assert_allclose(E.jvi(lw, 1), expected, rtol=1e-14, atol=1e-12)


# ------------------------------------------------------------------------------------------
# Large-K oracle, K = 5000, orders 1..5
# ------------------------------------------------------------------------------------------

K_LARGE = 5000
LARGE_CASES = {
    # three values, no dominant weight
    "well_spread": ([0.0, -1.0, 1.5], [2000, 2500, 500]),
    # the largest weight has normalised weight 1 - 1e-12
    "dominated": ([0.0, math.log(1e-12 / (K_LARGE - 1))], [1, K_LARGE - 1]),
    # a few heavy weights among thousands
    "few_heavy": ([10.0, 9.0, 0.0], [2, 1, K_LARGE - 3]),
    "seven_heavy": ([20.0, 19.0, 0.0], [5, 2, K_LARGE - 7]),
    # log-weights spread over 1000 nats (beyond the range of float64 weights)
    "spread_1000_nats": ([0.0, -500.0, -1000.0], [3, 1000, K_LARGE - 1003]),
    # heavy weights plus zero weights
    "heavy_and_neg_inf": ([10.0, 0.0, -math.inf], [3, K_LARGE - 103, 100]),
    # one weight carries 45% of the mass; log-weights near -90
    "one_at_45_percent": ([-90 + math.log(0.45 / 0.55 * (1666 + 2 * 3333)), -90.0, -90 + math.log(2)], [1, 1666, 3333]),
}


@pytest.fixture(scope="module")
def large_oracle():
    return {name: few_values_jvi(logs, counts, [1, 2, 3, 4, 5]) for name, (logs, counts) in LARGE_CASES.items()}


@pytest.mark.parametrize("name", sorted(LARGE_CASES))
def test_large_k_oracle_orders_1_to_5(name, large_oracle):
    logs, counts = LARGE_CASES[name]
    lw = np.concatenate([np.full(n, x) for x, n in zip(logs, counts)])
    np.random.default_rng(1).shuffle(lw)
    for m in range(1, 6):
        with warnings.catch_warnings():
            warnings.simplefilter("error", AccuracyWarning)  # accuracy must be attainable here
            value, bound = jvi_with_error(lw, m)
            got = float(E.jvi(lw, m))
        ref = large_oracle[name][m]
        err = abs(got - ref)
        assert err <= TOL * max(1.0, abs(ref)), (name, m, got, ref)
        # the reported error estimate covers the actual error
        assert err <= float(bound) + 1e-15, (name, m, err, float(bound))
        assert float(value) == got


def test_large_k_debiasing_is_not_a_tiny_correction(large_oracle):
    # Guard against an oracle that cannot fail: in these cases JVI differs from IWAE by O(1)
    # to O(100) nats, far above the tolerance.
    logs, counts = LARGE_CASES["dominated"]
    lw = np.concatenate([np.full(n, x) for x, n in zip(logs, counts)])
    assert float(E.jvi(lw, 5) - E.iwae(lw)) > 100.0


def test_direct_coefficient_sum_would_fail_here():
    # The naive sum of c_j * Lbar_{K-j} with each Lbar correctly rounded to float64 loses far
    # more than the tolerance at K = 5000, m = 5; the exact implementation must not.
    logs, counts = LARGE_CASES["well_spread"]
    k, m = K_LARGE, 5
    with mpmath.workdps(60):
        w = [mpmath.exp(mpmath.mpf(x)) for x in logs]
        lbar = []
        for j in range(m + 1):
            total = mpmath.mpf(0)
            for r in itertools.product(*[range(min(n, j) + 1) for n in counts]):
                if sum(r) == j:
                    ways = mpmath.fprod(mpmath.binomial(n, ri) for n, ri in zip(counts, r))
                    total += ways * mpmath.log(sum((n - ri) * x for n, ri, x in zip(counts, r, w)) / (k - j))
            lbar.append(float(total / mpmath.binomial(k, j)))
    naive = sum(float(_coef(k, m, j)) * lbar[j] for j in range(m + 1))
    exact = few_values_jvi(logs, counts, [m])[m]
    lw = np.concatenate([np.full(n, x) for x, n in zip(logs, counts)])
    assert abs(naive - exact) > 1e-6
    assert abs(float(E.jvi(lw, m)) - exact) <= TOL


# ------------------------------------------------------------------------------------------
# Equal weights, -inf, degenerate rows, warnings
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 7, 50, 5000])
def test_equal_log_weights_give_their_common_value(k):
    for value in [-91.37, 0.0, 1e3, -1e-300]:
        lw = np.full(k, value)
        orders = sorted({0, 1, 2, 3, 5, k // 2, k - 1} & set(range(k)))
        for m in orders:
            assert abs(float(E.jvi(lw, m)) - value) <= 1e-12 * max(1.0, abs(value))


def test_all_neg_inf_row_gives_neg_inf():
    lw = np.array([[-math.inf] * 6, [0.0, -1.0, -2.0, -3.0, -4.0, -5.0]])
    for m in range(6):
        out = E.jvi(lw, m)
        assert out[0] == -math.inf and np.isfinite(out[1])


def test_rows_with_at_most_m_finite_weights_are_nan_with_a_warning():
    lw = np.full((2, 10), -math.inf)
    lw[0, :2] = [0.0, -1.0]  # two finite weights
    lw[1, :] = np.linspace(-1, 0, 10)
    with pytest.warns(AccuracyWarning, match=r"undefined.*rows 0\b"):
        out = E.jvi(lw, 2)
    assert math.isnan(out[0]) and np.isfinite(out[1])
    # with m = 1 < 2 finite weights it is defined: compare with brute force
    assert abs(float(E.jvi(lw[0], 1)) - brute_force_jvi(lw[0])[1]) <= TOL


def test_neg_inf_entries_are_zero_weights_at_larger_k():
    # A quarter of the weights are zero: they still count in K and in every subset.
    logs, counts = [0.5, -0.5, -math.inf], [150, 150, 100]
    row = np.concatenate([np.full(n, x) for x, n in zip(logs, counts)])
    np.random.default_rng(3).shuffle(row)
    ref = few_values_jvi(logs, counts, [1, 2, 3])
    for m in (1, 2, 3):
        assert abs(float(E.jvi(row, m)) - ref[m]) <= TOL


def test_unattainable_accuracy_is_reported_not_hidden():
    # K = 17, m = 16: the coefficients reach ~2e6 with alternating signs and the value is O(1),
    # so float64 cannot guarantee 1e-9; the function must say how accurate it is, and be that
    # accurate.
    logs, counts = [0.0, -3.0, -6.0], [3, 7, 7]
    lw = np.concatenate([np.full(n, x) for x, n in zip(logs, counts)])
    ref = few_values_jvi(logs, counts, [16])[16]
    value, bound = jvi_with_error(lw, 16)
    assert abs(float(value) - ref) <= float(bound)
    assert float(bound) > TOL * max(1, abs(ref))
    with pytest.warns(AccuracyWarning, match=r"accurate only to about"):
        E.jvi(lw, 16)


def test_infeasible_order_returns_nan_with_a_warning():
    rng = np.random.default_rng(0)
    lw = rng.normal(size=(2, 40))
    with pytest.warns(AccuracyWarning, match="could not be computed"):
        out = E.jvi(lw, 30)
    assert np.isnan(out).all()


def test_order_validation():
    lw = np.zeros((2, 4))
    with pytest.raises(InputError, match=r"order 4 needs K >= 5.*K = 4"):
        E.jvi(lw, 4)
    with pytest.raises(InputError, match="order 9"):
        E.jvi(lw, 9)
    with pytest.raises(InputError, match=">= 0"):
        E.jvi(lw, -1)
    for bad in (1.5, "2", True, None):
        with pytest.raises(InputError):
            E.jvi(lw, bad)
    assert isinstance(InputError("x"), ValueError)


def test_order_zero_is_iwae_exactly():
    rng = np.random.default_rng(5)
    lw = rng.normal(size=(5, 33)) * 4 - 80
    np.testing.assert_array_equal(E.jvi(lw, 0), E.iwae(lw))


def test_k1_order0():
    assert float(E.jvi(np.array([-3.25]), 0)) == -3.25
    with pytest.raises(InputError):
        E.jvi(np.array([-3.25]), 1)


# ------------------------------------------------------------------------------------------
# Structure: batch independence, kinds, coefficients
# ------------------------------------------------------------------------------------------


def test_result_of_a_row_does_not_depend_on_the_batch():
    rng = np.random.default_rng(11)
    lw = rng.normal(size=(6, 3000)) * 2
    lw[2, 0] += 15  # a dominant weight: another route
    lw[4, :5] = -math.inf
    for m in (1, 2, 3, 5):
        together = E.jvi(lw, m)
        alone = np.array([float(E.jvi(lw[i], m)) for i in range(len(lw))])
        np.testing.assert_allclose(together, alone, rtol=1e-15, atol=1e-15)


def test_torch_float32_input_and_3d_shape():
    rng = np.random.default_rng(2)
    lw = rng.normal(size=(2, 3, 64)).astype(np.float32)
    t = torch.from_numpy(lw.copy())
    out = E.jvi(t, 2)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3) and out.device == t.device
    ref = E.jvi(lw.astype(np.float64), 2)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=0)
    assert torch.equal(t, torch.from_numpy(lw))  # no write-back


def test_coefficients_are_the_generalised_jackknife():
    for k, m in [(10, 3), (5000, 5), (7, 6)]:
        c = jackknife_coefficients(k, m)
        assert sum(c) == 1
        for r in range(1, m + 1):
            assert sum(cj / Fraction(k - j) ** r for j, cj in enumerate(c)) == 0
    # sizes quoted in DESIGN.md: c_0 = K^m/m! is about 2e10 for K = 5000, m = 3 (|c_1| is 6e10)
    assert 2.0e10 < float(jackknife_coefficients(5000, 3)[0]) < 2.1e10
    assert 2.5e16 < float(jackknife_coefficients(5000, 5)[0]) < 2.7e16


def test_order_one_dominated_weight_at_several_k():
    # log(1 - w_i/S) with a 1e-6 guard biases this case; the exact leave-one-out must not.
    for k in (3, 50, 5000):
        logs, counts = [0.0, math.log(1e-12 / (k - 1))], [1, k - 1]
        lw = np.concatenate([np.full(n, x) for x, n in zip(logs, counts)])
        ref = few_values_jvi(logs, counts, [1])[1]
        assert abs(float(E.jvi(lw, 1)) - ref) <= TOL * max(1, abs(ref))


# ------------------------------------------------------------------------------------------
# Cross-check of routes on continuous weights at K = 5000 (no oracle reaches these)
# ------------------------------------------------------------------------------------------


def _route_value(ls, k, m, h):
    """JVI_m - IWAE and its error estimate with a heavy set of the h largest weights (h = 0: light route)."""
    from evalkit.estimators import jackknife as J

    wn = np.exp(ls - np.logaddexp.reduce(ls))
    if h == 0:
        top, bottom = J._extremes((k * wn - 1.0)[None, :], m)
        tau = float((np.maximum(abs(top), abs(bottom)) / (k - np.arange(1, m + 1))).max())
        r = J._bucket(J._terms_needed(tau, k, m))
        v, e = J._light_rows((wn - 1.0 / k)[None, :], k, m, r)
        return v[0], e[0] + J._truncation_bound(tau, r, k, m)
    # tau for this h, by the formula of the planner: max_a (a mu_L + top_{m-a}(L)) / ((K_L + a) mu_L + bottom_{h-a}(H))
    k_light = k - h
    log_mu = np.logaddexp.reduce(ls[h:]) - math.log(k_light)
    tau = 0.0
    for a in range(min(h, m) + 1):
        b = min(m - a, k_light)
        top = np.logaddexp.reduce(ls[h : h + b]) if b else -math.inf
        bottom = np.logaddexp.reduce(ls[a:h]) if a < h else -math.inf
        num = np.logaddexp(math.log(a) + log_mu if a else -math.inf, top)
        den = np.logaddexp(math.log(k_light + a) + log_mu, bottom)
        tau = max(tau, math.exp(num - den))
    r = J._bucket(J._terms_needed(tau, k, m))
    q, q_abs = J._tuple_sums(J._heavy_light_part(ls, h)[1][None, :], m, r)
    return J._heavy_row(ls, k, m, h, r, tau, q[0], q_abs[0])


@pytest.mark.parametrize("kind", ["lognormal_2", "uniform_over_1000_nats", "pareto_tail"])
def test_light_and_heavy_routes_agree_on_continuous_weights(kind):
    rng = np.random.default_rng(["lognormal_2", "uniform_over_1000_nats", "pareto_tail"].index(kind))
    k = 5000
    lw = {
        "lognormal_2": lambda: 2.0 * rng.normal(size=k),
        "uniform_over_1000_nats": lambda: rng.uniform(-1000.0, 0.0, size=k),
        "pareto_tail": lambda: np.log(rng.pareto(0.8, size=k) + 1.0),
    }[kind]()
    ls = np.sort(lw - lw.max())[::-1].copy()
    for m in (2, 3, 5):
        results = [_route_value(ls, k, m, h) for h in (0, 1, 2, 4, 8)]
        for i in range(len(results)):
            for j in range(i):
                (vi, ei), (vj, ej) = results[i], results[j]
                assert abs(vi - vj) <= ei + ej + 1e-15, (kind, m, i, j, vi - vj, ei, ej)
        # and the public function agrees with them
        public = float(E.jvi(lw, m) - E.iwae(lw))
        assert abs(public - results[0][0]) <= 1e-9


def test_vectorised_series_length_matches_the_per_row_rule():
    from evalkit.estimators import jackknife as J

    taus = np.concatenate([[0.0, -1.0, 1.0, 1.5, 1e-300, 0.999999], np.random.default_rng(3).uniform(0, 1, 2000)])
    for k, m in [(5, 2), (100, 2), (5000, 3), (5000, 5)]:
        expected = [J._bucket(r) if (r := J._terms_needed(t, k, m)) is not None else 0 for t in taus]
        np.testing.assert_array_equal(J._buckets_needed(taus, k, m), expected)
        bounds = J._truncation_bounds(taus[taus < 1], np.full((taus < 1).sum(), 16), k, m)
        np.testing.assert_allclose(bounds, [J._truncation_bound(t, 16, k, m) for t in taus[taus < 1]], rtol=1e-14)


@pytest.mark.parametrize("k, m", [(5, 2), (20, 2), (20, 3), (100, 2), (300, 3)])
def test_a_rows_value_does_not_depend_on_the_rows_beside_it(k, m):
    # Rows of every route (light, enumeration, heavy/light with several heavy-set sizes) side by
    # side; evaluating them in small blocks must give bitwise the same numbers, because callers
    # (sweeps, streamed estimates) split rows however their memory budget says.
    from evalkit.estimators import jackknife as J

    rng = np.random.default_rng(k * 10 + m)
    rows = rng.normal(size=(60, k)) * np.repeat([0.3, 1.5, 3.0, 6.0], 15)[:, None]
    rows[::9, 0] += 8.0  # a dominant weight
    rows[1::9, :2] += 6.0  # two of them
    whole, whole_err, _ = J._jvi_rows(rows, m)
    for size in (1, 7):
        for start in range(0, 60, size):
            part, part_err, _ = J._jvi_rows(rows[start : start + size], m)
            np.testing.assert_array_equal(part, whole[start : start + size])
            np.testing.assert_array_equal(part_err, whole_err[start : start + size])
