"""Row reductions for short rows agree with numpy's (exactly for max/min/any, to the pairwise bound for sums)."""
import math

import numpy as np
import pytest

from evalkit.estimators.rowreduce import SHORT_ROW, row_any, row_max, row_min, row_sum


@pytest.mark.parametrize("k", [1, 2, 3, 7, 8, 9, 15, 16, 17, 40])
def test_matches_numpy(k):
    rng = np.random.default_rng(k)
    a = rng.normal(size=(500, k)) * 10.0 ** rng.integers(-5, 5, size=(500, k))
    a[3, 0] = -math.inf
    a[4, :] = -math.inf
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(row_max(a), a.max(axis=1))
        np.testing.assert_array_equal(row_min(a), a.min(axis=1))
        mask = a > 1.0
        np.testing.assert_array_equal(row_any(mask), mask.any(axis=1))
        np.testing.assert_array_equal(row_sum(mask), mask.sum(axis=1))
        finite = np.where(np.isfinite(a), a, 0.0)
        exact = np.array([math.fsum(r) for r in finite])
        bound = max(1, math.ceil(math.log2(k))) * np.finfo(float).eps * np.abs(finite).sum(axis=1)
        assert np.all(np.abs(row_sum(finite) - exact) <= bound)
        assert row_sum(a)[4] == -math.inf and row_max(a)[4] == -math.inf


def test_nan_propagates_and_results_are_fresh_arrays():
    a = np.zeros((10, 3))
    a[2, 1] = math.nan
    assert math.isnan(row_max(a)[2]) and math.isnan(row_min(a)[2]) and math.isnan(row_sum(a)[2])
    b = np.arange(20.0).reshape(20, 1)
    out = row_sum(b)
    out[0] = 99.0
    assert b[0, 0] == 0.0  # not a view of the input



def test_a_rows_sum_does_not_depend_on_the_other_rows():
    rng = np.random.default_rng(7)
    a = rng.normal(size=(300, 13)) * 1e3
    whole = row_sum(a)
    assert all(row_sum(a[i : i + 1])[0] == whole[i] for i in range(0, 300, 17))


@pytest.mark.parametrize("k", [5, 40])
def test_sums_do_not_depend_on_the_memory_layout(k):
    rng = np.random.default_rng(k)
    a = rng.normal(size=(64, k)) * 10.0 ** rng.integers(-8, 8, size=(64, k))
    np.testing.assert_array_equal(row_sum(np.asfortranarray(a)), row_sum(a))
    np.testing.assert_array_equal(row_sum(a[:1]), row_sum(a)[:1])
