"""evalkit.analysis.sweep on log-weight matrices with exact answers.

Gamma oracle: if w ~ Gamma(a, 1) i.i.d., log p = log a, E[IWAE_k] = psi(ka) - log(ka) + log a,
Var[IWAE_k] = psi'(ka), and (by linearity) E[JVI_m(k)] - log a = sum_j c(k, m, j) (psi((k-j)a)
- log((k-j)a)). Tolerances are 3 standard errors reported by the sweep itself; the seeds are
fixed, so the tests are deterministic.
"""
import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.special import digamma, polygamma

from evalkit import estimators
from evalkit.analysis.diagnostics import ladder
from evalkit.errors import DataError, InputError
from evalkit.analysis.sweep import TABLE_COLUMNS, load_log_weights, sweep
from evalkit.errors import WeightWarning  # heavy-tailed test weights warn: asserted below

A = 1.0
N, K = 200, 2000


def gamma_bias(k, a, order=0):
    """Exact E[estimator] - log p for Gamma(a) weights: IWAE (order 0) or JVI-order."""
    total = 0.0
    for j in range(order + 1):
        c = (-1) ** j * (k - j) ** order / (math.factorial(order - j) * math.factorial(j))
        x = (k - j) * a
        total += c * (digamma(x) - math.log(x))
    return total


@pytest.fixture(scope="module")
def gamma_log_w():
    rng = np.random.default_rng(20240601)
    return np.log(rng.gamma(A, size=(N, K)))


@pytest.fixture(scope="module")
def gamma_result(gamma_log_w):
    return sweep(gamma_log_w, reference=math.log(A))


def rows(result, name):
    return result.table[result.table["estimator"] == name].set_index("k")


# -- the oracles ---------------------------------------------------------------------------------


def test_default_ks_are_the_ladder_up_to_the_pool_width(gamma_result):
    assert gamma_result.metadata["ks"] == ladder(K) == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000]
    assert gamma_result.metadata["k_max"] == K and gamma_result.metadata["n"] == N


def test_iwae_bias_matches_the_digamma_oracle_at_every_k(gamma_result):
    iwae = rows(gamma_result, "iwae")
    assert list(iwae.index) == ladder(K)
    for k, row in iwae.iterrows():
        exact = gamma_bias(k, A)
        assert abs(row["bias"] - exact) <= 3 * row["bias_se"], (k, row["bias"], exact, row["bias_se"])
        assert row["groups"] == K // k


def test_iwae_variance_matches_the_trigamma_oracle(gamma_result):
    iwae = rows(gamma_result, "iwae")
    for k, row in iwae.iterrows():
        if row["groups"] < 2:
            assert math.isnan(row["variance"]) and "no variance estimate" in row["note"]
            continue
        assert abs(row["variance"] - polygamma(1, k * A)) <= 3 * row["variance_se"], k
        assert row["rmse"] == pytest.approx(math.sqrt(row["bias"] ** 2 + row["variance"]))


@pytest.mark.parametrize("order", [1, 2])
def test_jvi_bias_matches_the_jackknifed_digamma_oracle(gamma_result, order):
    jvi = rows(gamma_result, f"jvi{order}")
    assert min(jvi.index) > order  # cells with k < min_k are skipped, not crashed
    for k, row in jvi.iterrows():
        assert abs(row["bias"] - gamma_bias(k, A, order)) <= 3 * row["bias_se"], k


def test_cells_below_min_k_are_skipped_and_listed(gamma_result):
    assert "jvi1 needs k >= 2: skipped k = 1" in gamma_result.notes
    assert "jvi2 needs k >= 3: skipped k = 1, 2" in gamma_result.notes


def test_leading_order_theory_is_within_10_percent_for_k_at_least_50(gamma_result):
    theory = gamma_result.theory.set_index("k")
    iwae = rows(gamma_result, "iwae")
    for k in [k for k in iwae.index if k >= 50]:
        exact = gamma_bias(k, A)
        assert abs(theory.loc[k, "bias"] - exact) <= 0.10 * abs(exact), k
        measured, se = iwae.loc[k, "bias"], iwae.loc[k, "bias_se"]
        # Against the measurement: 10% plus its noise (at large k the bias is below the noise).
        assert abs(theory.loc[k, "bias"] - measured) <= 0.10 * abs(measured) + 3 * se, k
    # the pool's moments estimate mu2/mu^2 = 1/a, so the variance curve is 1/(ka)
    np.testing.assert_allclose(theory["variance"] * theory.index, 1 / A, rtol=0.03)


def test_extrapolation_recovers_log_p_within_its_standard_error(gamma_result):
    fits = gamma_result.fits.set_index("estimator")
    for name in ("iwae", "jvi1", "jvi2"):
        fit = fits.loc[name]
        assert fit["k_min"] == 10 and fit["k_max"] == K and fit["points"] == 8
        assert abs(fit["a"] - math.log(A)) <= 3 * fit["a_se"], name
    assert fits.loc["iwae", "b"] == pytest.approx(-1 / (2 * A), abs=0.15)


def test_iwae_bias_slope_is_minus_one(gamma_result):
    fit = gamma_result.fits.set_index("estimator").loc["iwae"]
    assert fit["bias_slope"] == pytest.approx(-1.0, abs=0.1)


def test_paired_gap_to_k_max_matches_the_oracle(gamma_result):
    # gap_to_kmax = estimate(k) - JVI-2(K_max) on the same samples; its expectation is
    # bias(k) - bias_JVI2(K_max), and its SE leaves out the noise that all k share.
    table = gamma_result.table
    anchor = gamma_bias(K, A, 2)
    for row in table.itertuples():
        order = {"iwae": 0, "jvi1": 1, "jvi2": 2}[row.estimator]
        exact = gamma_bias(row.k, A, order) - anchor
        assert abs(row.gap_to_kmax - exact) <= 3 * row.gap_to_kmax_se + 1e-12, (row.estimator, row.k)
    iwae = rows(gamma_result, "iwae")
    assert (iwae["gap_to_kmax_se"] < iwae["bias_se"] / 3).loc[10:].all()  # much tighter


@pytest.mark.slow
def test_measured_bias_slopes_are_about_minus_one_two_and_three():
    # Gamma(0.2): biases large enough to resolve JVI-1 and JVI-2 at small k. Exact slopes on
    # the resolved ranges: IWAE -1.04 (k = 3..2000), JVI-1 -1.9 to -2.0 (k = 3..20), JVI-2 -3.2
    # (k = 3..5). For Gamma the k^-3 term of the bias expansion vanishes, so JVI-2 falls like
    # k^-4 further out (-3.6 at k = 5..10), below what 2e6 samples resolve.
    from evalkit.analysis.diagnostics import bias_slope

    a = 0.2
    rng = np.random.default_rng(7)
    log_w = np.log(rng.gamma(a, size=(1000, 2000)))
    result = sweep(log_w, ks=[3, 5, 10, 20, 50, 100, 200, 500, 1000, 2000], reference=math.log(a), fit_min_k=3)
    fits = result.fits.set_index("estimator")
    assert fits.loc["iwae", "bias_slope"] == pytest.approx(-1.0, abs=0.1)
    assert fits.loc["jvi1", "bias_slope"] == pytest.approx(-2.0, abs=0.2)
    assert fits.loc["jvi2", "bias_slope"] == pytest.approx(-3.0, abs=0.5)
    anchor = gamma_bias(2000, a, 2)
    for name, order in (("jvi1", 1), ("jvi2", 2)):
        table = rows(result, name)
        used = [int(k) for k in fits.loc[name, "bias_slope_ks"].split(",")]
        assert len(used) >= 2
        exact = bias_slope(used, [gamma_bias(k, a, order) - anchor for k in used],
                           [table.loc[k, "gap_to_kmax_se"] for k in used], z=0)
        assert fits.loc[name, "bias_slope"] == pytest.approx(exact.slope, abs=0.25), name
        for k, row in table.iterrows():
            assert abs(row["bias"] - gamma_bias(k, a, order)) <= 3 * row["bias_se"], (name, k)
            assert abs(row["gap_to_kmax"] - (gamma_bias(k, a, order) - anchor)) <= 3 * row["gap_to_kmax_se"] + 1e-12


# -- one pool --------------------------------------------------------------------------------------


def test_every_k_uses_disjoint_groups_of_the_same_pool(gamma_log_w, gamma_result):
    per = gamma_result.per_datapoint
    at = per[(per["estimator"] == "iwae") & (per["k"] == 20)].sort_values("index")
    blocks = gamma_log_w.reshape(N, K // 20, 20)
    hand = (np.log(np.exp(blocks).sum(-1)) - math.log(20)).mean(1)
    np.testing.assert_allclose(at["mean"].to_numpy(), hand, rtol=1e-12)
    full = per[(per["estimator"] == "iwae") & (per["k"] == K)].sort_values("index")
    np.testing.assert_allclose(full["mean"].to_numpy(),
                               np.asarray(estimators.iwae(torch.from_numpy(gamma_log_w))), rtol=1e-13)


def test_unused_trailing_columns_at_a_k_that_does_not_divide_the_pool():
    log_w = np.random.default_rng(0).normal(size=(5, 10))
    result = sweep(log_w, ks=[3, 10], estimators=["iwae"], reference=0.0)
    row = rows(result, "iwae").loc[3]
    assert row["groups"] == 3
    blocks = log_w[:, :9].reshape(5, 3, 3)
    hand = (np.log(np.exp(blocks).sum(-1)) - math.log(3)).mean(1).mean()
    assert row["estimate"] == pytest.approx(hand, rel=1e-13)


def test_numpy_and_torch_inputs_agree_and_the_input_is_not_modified(gamma_log_w):
    small = gamma_log_w[:20, :100].copy()
    before = small.copy()
    with pytest.warns(WeightWarning):
        from_numpy = sweep(small, ks=[1, 10, 100], reference=0.0)
    with pytest.warns(WeightWarning):
        from_torch = sweep(torch.from_numpy(small), ks=[1, 10, 100], reference=0.0)
    np.testing.assert_array_equal(small, before)
    np.testing.assert_array_equal(from_numpy.table["bias"].to_numpy(), from_torch.table["bias"].to_numpy())


# -- references ------------------------------------------------------------------------------------


def test_without_a_reference_the_best_pool_estimate_is_used_and_labelled(gamma_log_w):
    result = sweep(gamma_log_w[:50, :500], ks=[1, 10, 100, 500])
    ref = result.reference
    assert ref.kind == "pool" and ref.estimator == "jvi2" and ref.k == 500
    assert "jvi2 at K = 500" in ref.label and "no exact log p(x)" in ref.label
    assert set(result.table["reference"]) == {"pool:jvi2@K=500"}
    assert "No exact log p(x) was available" in result.to_markdown()
    own = rows(result, "jvi2").loc[500]
    assert own["bias"] == 0.0 and "is the reference" in own["note"]
    np.testing.assert_allclose(ref.values, np.asarray(estimators.jvi(torch.from_numpy(gamma_log_w[:50, :500]), 2)),
                               rtol=1e-12)


def test_pool_reference_falls_back_to_iwae():
    log_w = np.random.default_rng(1).normal(size=(4, 30))
    with pytest.warns(WeightWarning):
        result = sweep(log_w, ks=[1, 30], estimators=["elbo"])
    assert result.reference.estimator == "iwae"


@pytest.mark.parametrize("kind", ["array", "tensor", "npy", "csv", "txt", "pt"])
def test_per_datapoint_reference_from_memory_or_file(tmp_path, kind):
    rng = np.random.default_rng(2)
    log_w = rng.normal(size=(6, 20))
    ref = rng.normal(size=6)
    if kind == "array":
        given = ref
    elif kind == "tensor":
        given = torch.from_numpy(ref)
    else:
        given = tmp_path / f"ref.{kind}"
        if kind == "npy":
            np.save(given, ref)
        elif kind == "pt":
            torch.save(torch.from_numpy(ref), given)
        else:
            np.savetxt(given, ref, delimiter=",")
    result = sweep(log_w, ks=[1, 20], estimators=["iwae"], reference=given)
    assert result.reference.kind == "user"
    np.testing.assert_allclose(result.reference.values, ref, rtol=1e-15)
    row = rows(result, "iwae").loc[1]
    assert row["bias"] == pytest.approx(row["estimate"] - ref.mean(), rel=1e-12)


def test_reference_errors():
    log_w = np.zeros((3, 4))
    with pytest.raises(InputError, match="reference has 2 values for 3 datapoints"):
        sweep(log_w, reference=[1.0, 2.0])
    with pytest.raises(InputError, match="must be finite"):
        sweep(log_w, reference=[1.0, np.nan, 2.0])
    with pytest.raises(DataError, match="does not exist"):
        sweep(log_w, reference="/nonexistent/ref.npy")


# -- input checking --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "log_w, kwargs, error, message",
    [
        (np.zeros(5), {}, InputError, r"non-empty \[N, K\] matrix"),
        (np.zeros((0, 5)), {}, InputError, r"non-empty \[N, K\] matrix"),
        (np.zeros((2, 3), dtype=np.int64), {}, InputError, "floating point"),
        (np.array([[0.0, np.nan]]), {}, InputError, "NaN"),
        (np.array([[0.0, np.inf]]), {}, InputError, r"\+inf"),
        (np.array([[0.0, 0.0], [-np.inf, -np.inf]]), {}, InputError, r"rows \[1\] is -inf"),
        (np.zeros((2, 10)), {"ks": [1, 20]}, InputError, "k = 20 exceeds the 10 log-weights"),
        (np.zeros((2, 10)), {"ks": [5, 2]}, InputError, "strictly increasing"),
        (np.zeros((2, 10)), {"ks": [0, 2]}, InputError, "positive integer"),
        (np.zeros((2, 10)), {"ks": []}, InputError, "ks is empty"),
        (np.zeros((2, 10)), {"data": np.zeros((2, 3))}, InputError, "data only apply when sweeping a model"),
        (np.zeros((2, 10)), {"device": "cpu"}, InputError, "device only apply when sweeping a model"),
        (np.zeros((2, 10)), {"estimators": []}, InputError, "no estimator chosen"),
        (np.zeros((2, 10)), {"fit_min_k": 0}, InputError, "fit_min_k must be a positive integer"),
    ],
)
def test_bad_inputs_raise_one_clear_error(log_w, kwargs, error, message):
    with pytest.raises(error, match=message):
        sweep(log_w, **kwargs)


def test_unknown_estimator_is_an_input_error():
    with pytest.raises(InputError):
        sweep(np.zeros((2, 10)), estimators=["nonsense"])


def test_minus_inf_entries_are_zero_weights():
    log_w = np.array([[0.0, -np.inf, 0.0, -np.inf]] * 3)
    result = sweep(log_w, ks=[2, 4], estimators=["iwae"], reference=0.0)
    assert rows(result, "iwae").loc[4, "bias"] == pytest.approx(math.log(0.5))


def test_one_datapoint_and_one_column_do_not_crash():
    result = sweep(np.array([[0.5]]), estimators=["iwae", "jvi1"], reference=0.0)
    assert list(result.table["k"]) == [1]
    assert math.isnan(result.table["bias_se"].iloc[0])
    assert any("one datapoint" in note for note in result.notes)


# -- weight diagnostics ----------------------------------------------------------------------------


def test_heavy_tailed_datapoints_are_named_in_a_warning():
    rng = np.random.default_rng(3)
    log_w = np.log(rng.gamma(2.0, size=(20, 1000)))
    # Pareto tails with index 1/2: the weights' variance is infinite and k-hat is about 2.
    log_w[[3, 7]] = -2.0 * np.log(rng.uniform(size=(2, 1000)))
    with pytest.warns(UserWarning, match=r"PSIS k-hat > 0.5 at 2 of 20 datapoints \(3, 7\)"):
        result = sweep(log_w, ks=[1, 10, 100, 1000], estimators=["iwae"], reference=0.0)
    w = result.weights
    assert list(w.above_bad) == [3, 7] and list(w.above_good) == [3, 7]
    assert w.fraction_above_bad == pytest.approx(0.1)
    assert w.khat[[3, 7]].min() > 1.0
    assert result.warnings == [w.warning]
    assert "asymptotics" in w.warning
    frame = w.to_frame()
    assert list(frame.columns) == ["index", "ess_fraction", "khat"] and len(frame) == 20
    np.testing.assert_allclose(frame["ess_fraction"],
                               1 / (np.exp(log_w - log_w.max(1, keepdims=True)) ** 2).sum(1)
                               * (np.exp(log_w - log_w.max(1, keepdims=True)).sum(1)) ** 2 / 1000, rtol=1e-10)


def test_well_behaved_weights_give_no_warning(gamma_log_w):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = sweep(gamma_log_w[:20], ks=[1, 100, 2000], estimators=["iwae"], reference=0.0)
    assert result.weights.warning is None and result.warnings == []


# -- outputs ---------------------------------------------------------------------------------------


def test_json_csv_and_markdown(gamma_result):
    doc = json.loads(gamma_result.to_json())
    assert doc["schema_version"] == 1
    assert doc["reference"]["kind"] == "user"
    assert len(doc["table"]) == len(gamma_result.table)
    last = [row for row in doc["table"] if row["estimator"] == "iwae" and row["k"] == K][0]
    assert last["variance"] is None  # NaN -> null
    assert doc["weights"]["fraction_khat_above_0.7"] == 0.0
    csv_lines = gamma_result.to_csv().splitlines()
    assert csv_lines[0].split(",") == TABLE_COLUMNS
    md = gamma_result.to_markdown()
    assert "| estimator" in md and "user-supplied log p(x)" in md and "Extrapolation" in md
    assert gamma_result.format("table") == str(gamma_result)
    with pytest.raises(InputError, match="unknown format"):
        gamma_result.format("yaml")


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".pt", ".csv"])
def test_load_log_weights_formats(tmp_path, suffix):
    log_w = np.random.default_rng(4).normal(size=(3, 5))
    path = tmp_path / f"lw{suffix}"
    if suffix == ".npy":
        np.save(path, log_w)
    elif suffix == ".npz":
        np.savez(path, log_weights=log_w, other=np.zeros(2))
    elif suffix == ".pt":
        torch.save({"log_weights": torch.from_numpy(log_w)}, path)
    else:
        np.savetxt(path, log_w, delimiter=",")
    np.testing.assert_allclose(load_log_weights(path).numpy(), log_w, rtol=1e-15)


def test_load_log_weights_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_log_weights(tmp_path / "missing.npy")
    bad = tmp_path / "lw.json"
    bad.write_text("{}")
    with pytest.raises(DataError, match="must end in .npy, .npz, .pt, .csv or .txt"):
        load_log_weights(bad)
    corrupt = tmp_path / "lw.npy"
    corrupt.write_bytes(b"not a numpy file")
    with pytest.raises(DataError, match="cannot read log-weights"):
        load_log_weights(corrupt)


def test_statistics_do_not_depend_on_the_thread_count(gamma_log_w):
    one = sweep(gamma_log_w[:40, :500], ks=[1, 2, 5, 50, 500], estimators=("iwae", "jvi1", "jvi2"),
                reference=0.0, threads=1)
    two = sweep(gamma_log_w[:40, :500], ks=[1, 2, 5, 50, 500], estimators=("iwae", "jvi1", "jvi2"),
                reference=0.0, threads=3)
    assert one.table.drop(columns=["note"]).equals(two.table.drop(columns=["note"]))
    assert one.per_datapoint.equals(two.per_datapoint)


def test_statistics_show_progress_only_when_asked(gamma_log_w, capsys):
    sweep(gamma_log_w[:20, :200], ks=[1, 10, 100], estimators=("iwae", "jvi1"), reference=0.0, progress=True)
    shown = capsys.readouterr().err
    # 20 datapoints x 200 log-weights, for 5 cells (iwae at 3 ks, jvi1 at 2; jvi1 needs k >= 2)
    assert "statistics" in shown and "/20.0k" in shown
    sweep(gamma_log_w[:20, :200], ks=[1, 10, 100], estimators=("iwae", "jvi1"), reference=0.0, progress=False)
    assert capsys.readouterr().err == ""


def test_a_datapoint_without_enough_positive_weights_is_named_in_the_notes():
    rng = np.random.default_rng(0)
    log_w = np.log(rng.gamma(1.0, size=(50, 100)))
    log_w[7, :98] = -np.inf  # two positive weights: -inf IWAE in most groups, JVI-2 undefined
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = sweep(log_w, ks=[5, 100], reference=0.0, indices=None, progress=False)
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]  # no raw numpy warnings
    # JVI-2's warning comes once for the whole sweep (not once per k), without the positions of
    # chunk-relative (row, group) cells that would mean nothing to the caller.
    undefined = [str(w.message) for w in caught if "JVI of order 2 is undefined" in str(w.message)]
    assert len(undefined) == 1 and "in some groups of k samples" in undefined[0] and "rows (" not in undefined[0]
    assert undefined == [text for text in result.warnings if "JVI" in text]
    table = result.table.set_index(["estimator", "k"])
    assert table.loc[("iwae", 5), "estimate"] == -math.inf
    assert "not finite for 1 of 50 datapoints (7)" in table.loc[("iwae", 5), "note"]
    assert math.isnan(table.loc[("jvi2", 100), "estimate"])
    assert "not finite for 1 of 50 datapoints (7)" in table.loc[("jvi2", 100), "note"]
    assert table.loc[("iwae", 100), "note"].startswith("one group")  # finite there: no such note
