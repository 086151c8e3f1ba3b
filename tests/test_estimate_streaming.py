"""estimate() streams over blocks of datapoints: bitwise the whole-matrix numbers, bounded memory.

The reference is always the whole ``[N, K]`` matrix from one engine call, reduced by calling
the estimators on it directly, so a block-dependent statistic anywhere (an estimator whose
value for a row depends on the rows beside it, a summary that is not a plain mean or sum of
per-datapoint values, a block whose noise is not keyed by dataset index) shows up as a
difference in the last bit.
"""
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import evalkit
from evalkit import estimators as E
from evalkit.analysis.diagnostics import weight_diagnostics
from evalkit.errors import InputError

# Every test here checks that numbers do not depend on blocks; the bundled example warns about its
# heavy-tailed datapoints on every run, which tests/test_weight_warnings.py asserts.
pytestmark = pytest.mark.filterwarnings("ignore::evalkit.errors.WeightWarning")
from evalkit.analysis.estimate import DEFAULT_ESTIMATORS
from evalkit.sampling.blocks import BLOCK_COPIES, STATISTICS_BUDGET, block_rows

REPO = Path(__file__).resolve().parents[1]
NAMES = ["elbo", "iwae", "jvi1", "jvi2", "jvi3", "dvi"]
K = 200  # >= 21, so PSIS k-hat is defined; small enough for many blocks in a second


@pytest.fixture(scope="module")
def digits():
    model = evalkit.load_model(REPO / "examples" / "digits_iwae.pt")
    x = evalkit.data.load_data("digits", split="test", binarize="bernoulli", seed=0)
    return model, x


@pytest.fixture(scope="module")
def whole(digits):
    """The whole-matrix result, computed without evalkit.analysis.estimate: engine, then each estimator."""
    model, x = digits
    log_w = evalkit.log_weights(model, x, K, seed=3, progress=False)
    return log_w, _direct(log_w)


def _direct(log_w, names=NAMES):
    n, k = log_w.shape
    per_example = {"index": np.arange(n)}
    mc = {}
    for name in names:
        est = E.get(name)
        per_example[name] = est(log_w).numpy()
        mc[name] = est.mc_variance(log_w).numpy() if est.mc_variance is not None else None
    weights = weight_diagnostics(log_w)
    per_example["ess"] = weights.ess_fraction * k
    per_example["psis_khat"] = weights.khat
    summary = pd.DataFrame(
        [
            {
                "estimator": name,
                "k": k,
                "estimate": float(np.mean(per_example[name])),
                "se_data": float(np.std(per_example[name], ddof=1) / math.sqrt(n)),
                "se_mc": float(math.sqrt(float(np.sum(mc[name]))) / n),
                "n": n,
            }
            for name in names
        ]
    )
    diagnostics = {
        "mean_ess_fraction": float(np.mean(weights.ess_fraction)),
        "fraction_khat_above_0.5": weights.fraction_above_good,
        "fraction_khat_above_0.7": weights.fraction_above_bad,
        "indices_khat_above_0.7": [int(i) for i in weights.above_bad],
        "khat_threshold": weights.threshold,
        "fraction_khat_above_threshold": weights.fraction_above_threshold,
        "indices_khat_above_threshold": [int(i) for i in weights.above_threshold],
        "n_khat_undefined": weights.n_undefined,
        "max_psis_khat": float(np.nanmax(weights.khat)),
    }
    return summary, pd.DataFrame(per_example), diagnostics


def _assert_bitwise(result, expected):
    summary, per_example, diagnostics = expected
    pd.testing.assert_frame_equal(result.summary, summary, check_exact=True)
    pd.testing.assert_frame_equal(result.per_example, per_example, check_exact=True)
    assert result.diagnostics == diagnostics


@pytest.mark.parametrize("block_size", [1, 7, 32, 100, 358, None])
def test_streamed_estimate_is_bitwise_the_whole_matrix(digits, whole, block_size):
    # 1 and 7: blocks not aligned with the engine's 32-row layout; 100: a short last block;
    # 358: two blocks, the second of one datapoint; None: automatic (one block at this K).
    model, x = digits
    result = evalkit.estimate(model, x, k=K, estimators=NAMES, seed=3, block_size=block_size, progress=False)
    _assert_bitwise(result, whole[1])
    assert result.log_weights is None
    assert result.metadata["n"] == len(x) and result.metadata["k"] == K and result.metadata["seed"] == 3


@pytest.mark.slow
def test_default_estimators_at_k_5000_are_bitwise_across_blocks(digits):
    # The CLI's default K and estimators, over blocks of 96 datapoints (4 blocks) against the whole matrix.
    model, x = digits
    names = list(DEFAULT_ESTIMATORS)
    log_w = evalkit.log_weights(model, x, 5000, seed=0, progress=False)
    result = evalkit.estimate(model, x, k=5000, seed=0, block_size=96, progress=False)
    _assert_bitwise(result, _direct(log_w, names))


def test_whole_matrix_paths_agree_bitwise(digits, whole, tmp_path):
    # keep_log_weights and the cache compute the whole matrix; their statistics run over row blocks.
    model, x = digits
    kept = evalkit.estimate(model, x, k=K, estimators=NAMES, seed=3, keep_log_weights=True, block_size=50,
                            progress=False)
    assert torch.equal(kept.log_weights, whole[0])
    _assert_bitwise(kept, whole[1])
    cached = evalkit.estimate(model, x, k=K, estimators=NAMES, seed=3, cache=tmp_path / "c", progress=False)
    _assert_bitwise(cached, whole[1])


def test_estimate_from_log_weights_any_block_size_is_bitwise(whole):
    log_w, expected = whole
    for block_size in (1, 13, 359, None):
        _assert_bitwise(evalkit.estimate_from_log_weights(log_w, NAMES, block_size=block_size), expected)


def _heavy_tailed_log_weights():
    # Rows where one weight dominates (the JVI heavy-set routes), -inf entries and a row with one finite
    # weight (a row of all -inf is refused: tests/test_zero_weight_rows.py).
    rng = np.random.default_rng(7)
    log_w = np.log(rng.pareto(1 / 0.9, size=(90, 60)) + 1e-3)
    log_w[5, :30] = -np.inf
    log_w[40, 1:] = -np.inf
    log_w[41, 3] = 800.0
    return log_w


@pytest.mark.parametrize(
    "names",
    [["elbo", "iwae", "jvi1", "dvi"], ["jvi2", "jvi3"]],
)
def test_heavy_tails_and_zero_weights_are_bitwise_across_blocks(names):
    log_w = _heavy_tailed_log_weights()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = _direct(torch.from_numpy(log_w), names)
        for block_size in (1, 4, 31, 64):
            _assert_bitwise(evalkit.estimate_from_log_weights(log_w, names, block_size=block_size), expected)


def _jvi_undefined_log_weights():
    # JVI-2 is undefined (nan) for rows with at most 2 finite log-weights: rows 3, 10, 11, 40, 41, 42, 43.
    log_w = np.zeros((50, 8))
    for row in (3, 10, 11, 40, 41, 42, 43):
        log_w[row, 2:] = -np.inf
    return log_w


def _warnings_of(log_w, block_size):
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        evalkit.estimate_from_log_weights(log_w, ["jvi2"], block_size=block_size)
    return [(r.category, str(r.message)) for r in records]


def test_block_warnings_are_reissued_once_naming_rows_of_the_whole_matrix():
    log_w = _jvi_undefined_log_weights()
    whole = _warnings_of(log_w, None)
    assert len(whole) == 1 and "rows 3, 10, 11, 40, 41 and 2 more" in whole[0][1]
    for block_size in (1, 4, 10, 41):
        assert _warnings_of(log_w, block_size) == whole


def test_nan_is_refused_naming_the_row_of_the_whole_matrix():
    log_w = np.zeros((100, 30))
    log_w[77, 4] = np.nan
    with pytest.raises(InputError, match=r"NaN in rows 77\b"):
        evalkit.estimate_from_log_weights(log_w, block_size=10)


@pytest.mark.parametrize("bad", [0, -3, True, 2.5, "64"])
def test_block_size_must_be_a_positive_int(digits, bad):
    model, x = digits
    with pytest.raises(InputError, match="block_size must be a positive number of datapoints"):
        evalkit.estimate(model, x, k=K, block_size=bad, progress=False)
    with pytest.raises(InputError, match="block_size must be a positive number of datapoints"):
        evalkit.estimate_from_log_weights(np.zeros((3, 4)), ["iwae"], block_size=bad)


def test_block_rows_fit_the_budget_in_multiples_of_32():
    for k in (1, 21, 1000, 5000, 20_000, 50_000, 74_000):
        rows = block_rows(10**6, k)
        assert rows % 32 == 0 and rows >= 32
        assert rows * k * 8 * BLOCK_COPIES <= STATISTICS_BUDGET
        # The largest multiple of 32 that fits.
        assert (rows + 32) * k * 8 * BLOCK_COPIES > STATISTICS_BUDGET or rows == 10**6
    assert block_rows(359, 1000) == 359 and block_rows(10, 10**6) == 10
    # Above K ~ 75 000 a block keeps 32 datapoints (a smaller one would still cost 32-row calls).
    assert block_rows(10**6, 200_000) == 32


def test_blocks_are_engine_calls_on_dataset_index_ranges(digits, monkeypatch):
    model, x = digits
    import evalkit.sampling.engine as engine

    calls = []
    real = engine.log_weights

    def recording(model, data, k, **options):
        calls.append((len(data), options.get("indices"), options.get("progress")))
        return real(model, data, k, **options)

    monkeypatch.setattr(engine, "log_weights", recording)
    evalkit.estimate(model, x, k=K, seed=3, block_size=128, progress=False)
    assert [n for n, _, _ in calls] == [128, 128, 103]
    for (n, indices, progress), start in zip(calls, (0, 128, 256)):
        assert torch.equal(indices, torch.arange(start, start + n)) and progress is False
    calls.clear()
    evalkit.estimate(model, x, k=K, seed=3, keep_log_weights=True, block_size=128, progress=False)
    assert [n for n, _, _ in calls] == [len(x)]


def test_one_progress_bar_over_all_blocks(digits, monkeypatch):
    model, x = digits
    import evalkit.sampling.engine as engine

    bars = []
    real = engine._progress_bar

    def recording(progress, total):
        bar = real(progress, total)
        bars.append((progress, total, bar))
        return bar

    monkeypatch.setattr(engine, "_progress_bar", recording)
    evalkit.estimate(model, x, k=K, seed=3, block_size=100, progress=True)
    shown = [(progress, total, bar) for progress, total, bar in bars if progress is not False]
    assert len(shown) == 1 and shown[0][:2] == (True, len(x) * K)
    assert shown[0][2].n == len(x) * K  # advanced block by block to the end
    with pytest.raises(InputError, match="progress"):
        evalkit.estimate(model, x, k=K, block_size=100, progress="yes")
