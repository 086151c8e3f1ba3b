"""A sweep streams over blocks of datapoints and gives bitwise the numbers of the whole pool."""
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import evalkit
from evalkit.sampling import engine
from evalkit.errors import InputError

KS = [1, 2, 5, 20, 100, 300]
ESTIMATORS = ("iwae", "jvi1", "jvi2", "dvi")


@pytest.fixture(scope="module")
def digits():
    model = evalkit.load_model("examples/digits_iwae.pt")
    x = evalkit.data.load_data("digits", binarize="bernoulli")[:90]
    return model, x


def _sweep(model, x, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evalkit.sweep(model, ks=KS, estimators=ESTIMATORS, data=x, seed=3, progress=False, **options)


def _assert_same(a, b):
    pd.testing.assert_frame_equal(a.table, b.table, check_exact=True)
    pd.testing.assert_frame_equal(a.per_datapoint, b.per_datapoint, check_exact=True)
    pd.testing.assert_frame_equal(a.fits, b.fits, check_exact=True)
    pd.testing.assert_frame_equal(a.theory, b.theory, check_exact=True)
    pd.testing.assert_frame_equal(a.weights.to_frame(), b.weights.to_frame(), check_exact=True)
    assert a.reference.values.tolist() == b.reference.values.tolist()


def test_streamed_sweep_equals_the_whole_pool_bitwise(digits):
    model, x = digits
    whole = _sweep(model, x, keep_log_weights=True)  # the whole [N, K_max] pool, then views of it
    assert whole.log_weights.shape == (90, 300)
    # The pool's own statistics, computed directly on the whole matrix (no blocks at all).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = evalkit.sweep(whole.log_weights, ks=KS, estimators=ESTIMATORS, block_size=10**6, progress=False)
    pd.testing.assert_frame_equal(whole.per_datapoint, direct.per_datapoint, check_exact=True)
    for block_size in (1, 7, 32, 64, None):
        _assert_same(_sweep(model, x, block_size=block_size), whole)


def test_streamed_sweep_calls_the_engine_per_block_with_dataset_indices(digits, monkeypatch):
    model, x = digits
    calls = []
    real = engine.log_weights

    def recording(model, data, k, **options):
        calls.append((data.shape[0], k, None if options.get("indices") is None else options["indices"].tolist()))
        return real(model, data, k, **options)

    monkeypatch.setattr(engine, "log_weights", recording)
    _sweep(model, x, block_size=32)
    assert [c[0] for c in calls] == [32, 32, 26] and {c[1] for c in calls} == {300}
    assert calls[1][2] == list(range(32, 64))


def test_indices_stream_with_their_own_random_streams(digits):
    model, x = digits
    chosen = [3, 50, 51, 89, 7]
    part = _sweep(model, x, indices=chosen, block_size=2)
    full = _sweep(model, x, block_size=64)
    mine = part.per_datapoint.set_index(["estimator", "k", "index"])
    theirs = full.per_datapoint.set_index(["estimator", "k", "index"]).loc[mine.index]
    np.testing.assert_array_equal(mine["mean"].to_numpy(), theirs["mean"].to_numpy())


def test_matrix_sweeps_in_blocks_bitwise():
    rng = np.random.default_rng(0)
    log_w = np.log(rng.gamma(0.5, size=(40, 400)))
    log_w[5, :397] = -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = evalkit.sweep(log_w, ks=[1, 4, 20, 400], reference=0.0, progress=False)
        many = evalkit.sweep(log_w, ks=[1, 4, 20, 400], reference=0.0, block_size=3, progress=False)
    _assert_same(one, many)


def test_pool_warnings_name_rows_of_the_whole_pool_once():
    rng = np.random.default_rng(1)
    log_w = np.log(rng.gamma(1.0, size=(30, 100)))
    log_w[[4, 17], :97] = -np.inf  # too few positive weights for a PSIS tail
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evalkit.sweep(log_w, ks=[10, 100], estimators=("iwae",), reference=0.0, block_size=8, progress=False)
    khat = [str(w.message) for w in caught if "PSIS k-hat is nan" in str(w.message)]
    assert len(khat) == 1 and "rows 4, 17" in khat[0]


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_block_size_must_be_a_positive_int(bad):
    with pytest.raises(InputError, match="block_size must be a positive number"):
        evalkit.sweep(np.zeros((3, 10)), ks=[1, 10], block_size=bad)


def test_streamed_sweep_does_not_hold_the_pool(monkeypatch, digits):
    # The largest log-weight array the statistics ever see is one block.
    model, x = digits
    from evalkit.analysis import diagnostics

    seen = []
    real = diagnostics.evaluate_groups

    def recording(log_w, k, fn, **options):
        seen.append(log_w.shape[0])
        return real(log_w, k, fn, **options)

    monkeypatch.setattr(diagnostics, "evaluate_groups", recording)
    _sweep(model, x, block_size=32)
    assert max(seen) == 32
