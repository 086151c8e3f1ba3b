"""Contract of evalkit.estimators: kinds, shapes, edge cases, registry, properties."""
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp

from evalkit import estimators as E
from evalkit.errors import InputError
from evalkit.estimators.jackknife import AccuracyWarning

ROW_FUNCTIONS = {
    "elbo": E.elbo,
    "iwae": E.iwae,
    "jvi1": lambda x: E.jvi(x, 1),
    "jvi2": lambda x: E.jvi(x, 2),
    "jvi3": lambda x: E.jvi(x, 3),
    "dvi": E.dvi,
    "ess": E.ess,
    "psis_khat": E.psis_khat,
    "elbo_mc_variance": E.elbo_mc_variance,
    "iwae_mc_variance": E.iwae_mc_variance,
}


def _rows(seed=0, shape=(4, 50), scale=2.0, offset=-90.0):
    return np.random.default_rng(seed).normal(size=shape) * scale + offset


# ------------------------------------------------------------------------------------------
# Kinds, dtypes, shapes, no write-back
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ROW_FUNCTIONS))
def test_numpy_in_numpy_out_torch_in_torch_out(name):
    fn = ROW_FUNCTIONS[name]
    lw = _rows(shape=(2, 3, 40))
    out_np = fn(lw)
    out_t32 = fn(torch.from_numpy(lw.astype(np.float32)))
    out_t64 = fn(torch.from_numpy(lw))
    assert isinstance(out_np, np.ndarray) and out_np.shape == (2, 3) and out_np.dtype == np.float64
    assert isinstance(out_t64, torch.Tensor) and out_t64.shape == (2, 3) and out_t64.dtype == torch.float64
    np.testing.assert_array_equal(out_t64.numpy(), out_np)
    # float32 input: the same float32 values, reduced in float64
    np.testing.assert_array_equal(out_t32.numpy(), fn(lw.astype(np.float32).astype(np.float64)))


@pytest.mark.parametrize("name", sorted(ROW_FUNCTIONS))
def test_no_write_back(name):
    fn = ROW_FUNCTIONS[name]
    lw = _rows(shape=(3, 30))
    lw[0, 0] = -math.inf
    lw[1, :] += 20 * (np.arange(30) == 4)  # a dominant weight
    t = torch.from_numpy(lw.copy())
    before_np, before_t = lw.copy(), t.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn(lw)
        fn(t)
    np.testing.assert_array_equal(lw, before_np)
    assert torch.equal(t, before_t)


def test_one_row_gives_a_scalar():
    lw = np.array([0.0, -1.0, -2.0])
    out = E.iwae(lw)
    assert np.ndim(out) == 0 and isinstance(out, np.floating)
    t = E.iwae(torch.tensor(lw))
    assert isinstance(t, torch.Tensor) and t.shape == ()


def test_lists_and_integer_arrays_are_accepted():
    assert float(E.iwae([0, 0, 0])) == 0.0
    assert float(E.elbo(np.array([1, 2, 3]))) == 2.0


def test_requires_grad_input_is_fine():
    t = torch.zeros(2, 5, requires_grad=True)
    out = E.iwae(t)
    assert not out.requires_grad and torch.equal(out, torch.zeros(2, dtype=torch.float64))


# ------------------------------------------------------------------------------------------
# Bad input and edge cases
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ROW_FUNCTIONS))
def test_nan_raises_naming_the_rows(name):
    lw = _rows(shape=(4, 30))
    lw[1, 3] = math.nan
    lw[3, 0] = math.nan
    with pytest.raises(InputError, match=r"NaN in rows 1, 3\b"):
        ROW_FUNCTIONS[name](lw)
    with pytest.raises(ValueError):
        ROW_FUNCTIONS[name](torch.from_numpy(lw))


def test_nan_positions_in_a_3d_batch():
    lw = np.zeros((2, 3, 4))
    lw[1, 2, 0] = math.nan
    with pytest.raises(InputError, match=r"rows \(1, 2\)"):
        E.iwae(lw)


@pytest.mark.parametrize("name", sorted(ROW_FUNCTIONS))
def test_positive_infinity_raises(name):
    lw = _rows(shape=(2, 30))
    lw[0, 5] = math.inf
    with pytest.raises(InputError, match=r"\+inf in rows 0\b"):
        ROW_FUNCTIONS[name](lw)


@pytest.mark.parametrize("name", sorted(ROW_FUNCTIONS))
def test_empty_last_axis_raises(name):
    with pytest.raises(InputError, match="K = 0"):
        ROW_FUNCTIONS[name](np.zeros((3, 0)))


def test_scalar_and_non_numeric_input_raise():
    with pytest.raises(InputError, match="scalar"):
        E.iwae(np.float64(1.0))
    with pytest.raises(InputError, match="real numbers"):
        E.iwae(np.array(["a", "b"]))
    with pytest.raises(InputError, match="real numbers"):
        E.iwae(torch.zeros(3, dtype=torch.complex64))


def test_zero_rows_give_an_empty_result():
    assert E.iwae(np.zeros((0, 5))).shape == (0,)
    assert E.jvi(np.zeros((0, 5)), 2).shape == (0,)


def test_all_neg_inf_row_documented_values():
    lw = np.full((2, 30), -math.inf)
    lw[1] = _rows(shape=(1, 30))[0]
    assert E.elbo(lw)[0] == -math.inf
    assert E.iwae(lw)[0] == -math.inf
    assert E.dvi(lw)[0] == -math.inf
    for m in (1, 2, 3):
        assert E.jvi(lw, m)[0] == -math.inf
    assert E.ess(lw)[0] == 0.0
    assert math.isnan(E.iwae_mc_variance(lw)[0]) and math.isnan(E.elbo_mc_variance(lw)[0])
    with pytest.warns(UserWarning, match="k-hat is nan"):
        assert math.isnan(E.psis_khat(lw)[0])
    assert np.isfinite(E.iwae(lw)[1]) and np.isfinite(E.dvi(lw)[1])


def test_neg_inf_entries_are_zero_weights():
    lw = np.array([[0.0, -1.0, -math.inf, -2.0]])
    w = np.exp([0.0, -1.0, -2.0])
    assert E.iwae(lw)[0] == pytest.approx(math.log(w.sum() / 4), abs=1e-15)
    assert E.elbo(lw)[0] == -math.inf
    assert E.ess(lw)[0] == pytest.approx(w.sum() ** 2 / (w**2).sum(), rel=1e-14)
    assert math.isnan(E.elbo_mc_variance(lw)[0])


def test_k_equal_one():
    lw = np.array([[-4.5], [1e3]])
    np.testing.assert_array_equal(E.elbo(lw), [-4.5, 1e3])
    np.testing.assert_array_equal(E.iwae(lw), [-4.5, 1e3])
    np.testing.assert_array_equal(E.jvi(lw, 0), [-4.5, 1e3])
    np.testing.assert_array_equal(E.ess(lw), [1.0, 1.0])
    assert np.isnan(E.iwae_mc_variance(lw)).all() and np.isnan(E.elbo_mc_variance(lw)).all()
    with pytest.raises(InputError, match="K >= 2"):
        E.dvi(lw)
    with pytest.raises(InputError, match="K >= 2"):
        E.jvi(lw, 1)


# ------------------------------------------------------------------------------------------
# Values against independent formulas
# ------------------------------------------------------------------------------------------


def test_iwae_is_log_mean_exp_at_extreme_magnitudes():
    for offset in (-1e5, -745.0, 0.0, 700.0, 1e5):
        lw = _rows(seed=3, shape=(5, 64), scale=3.0, offset=offset)
        expected = logsumexp(lw, axis=1) - math.log(64)
        np.testing.assert_allclose(E.iwae(lw), expected, rtol=1e-15, atol=1e-12)
    # naive exp would underflow to log(0) = -inf
    assert np.isfinite(E.iwae(np.array([-1000.0, -1001.0, -1002.0])))


def test_elbo_is_the_mean():
    lw = _rows(seed=4)
    np.testing.assert_allclose(E.elbo(lw), lw.mean(axis=1), rtol=1e-15)


def test_dvi_against_its_formula():
    lw = _rows(seed=5, shape=(6, 40), scale=1.5, offset=0.0)
    w = np.exp(lw)
    k = lw.shape[1]
    wn = w / w.sum(axis=1, keepdims=True)
    mu2_over_mu_sq = k / (k - 1) * (k * (wn**2).sum(axis=1) - 1)
    expected = np.log(w.mean(axis=1)) + mu2_over_mu_sq / (2 * k)
    np.testing.assert_allclose(E.dvi(lw), expected, rtol=1e-13)
    # equal weights: no correction
    assert E.dvi(np.full(7, -3.0)) == -3.0


def test_ess_extremes_and_formula():
    assert float(E.ess(np.zeros(17))) == pytest.approx(17.0, rel=1e-15)
    assert float(E.ess(np.array([0.0, -800.0, -900.0]))) == 1.0
    lw = _rows(seed=6, offset=0.0)
    w = np.exp(lw)
    np.testing.assert_allclose(E.ess(lw), w.sum(1) ** 2 / (w**2).sum(1), rtol=1e-13)


def test_mc_variances_against_their_formulas():
    lw = _rows(seed=8, shape=(5, 60), scale=1.0, offset=0.0)
    k = lw.shape[1]
    np.testing.assert_allclose(E.elbo_mc_variance(lw), lw.var(axis=1, ddof=1) / k, rtol=1e-13)
    wn = np.exp(lw) / np.exp(lw).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(E.iwae_mc_variance(lw), (k * (wn**2).sum(1) - 1) / (k - 1), rtol=1e-12)
    # equal weights: the delta-method variance is exactly 0
    assert float(E.iwae_mc_variance(np.full(9, 2.0))) == 0.0


def test_jvi_close_to_dvi_at_large_k():
    # Both remove the leading O(1/K) bias term; they differ by O(K^-2) per row.
    lw = np.log(np.random.default_rng(9).gamma(2.0, size=(20, 2000)))
    gap = np.abs(E.jvi(lw, 1) - E.dvi(lw))
    assert gap.max() < 5.0 / 2000**2
    assert np.abs(E.jvi(lw, 1) - E.iwae(lw)).min() > 1e-5


# ------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------


def test_available_names():
    assert E.available() == ["elbo", "iwae", "jvi1", "jvi2", "jvi3", "jvi4", "jvi5", "dvi", "sumo"]


@pytest.mark.parametrize("name", ["elbo", "iwae", "jvi1", "jvi2", "jvi3", "jvi4", "jvi5", "dvi"])
def test_get_standard_names(name):
    est = E.get(name)
    assert est.name == name
    assert isinstance(est.summary, str) and est.summary and "\n" not in est.summary
    assert est.mc_variance is not None
    lw = _rows(seed=10, shape=(3, 12))
    expected = {"elbo": E.elbo, "iwae": E.iwae, "dvi": E.dvi}.get(name)
    if expected is None:
        expected = lambda x: E.jvi(x, int(name[3:]))  # noqa: E731
    np.testing.assert_array_equal(est(lw), expected(lw))
    np.testing.assert_array_equal(est.fn(lw), expected(lw))


def test_min_k():
    assert E.get("elbo").min_k == 1 and E.get("iwae").min_k == 1 and E.get("dvi").min_k == 2
    assert E.get("jvi1").min_k == 2 and E.get("jvi5").min_k == 6


def test_get_is_case_insensitive_and_accepts_any_order():
    assert E.get("IWAE") is E.get("iwae")
    assert E.get(" Jvi2 ").name == "jvi2"
    est = E.get("jvi7")
    assert est.name == "jvi7" and est.min_k == 8
    lw = _rows(seed=11, shape=(2, 40))
    np.testing.assert_array_equal(est(lw), E.jvi(lw, 7))
    assert E.get("jvi12").min_k == 13


def test_unknown_name_lists_known_and_suggests():
    with pytest.raises(InputError, match=r"did you mean 'jvi2'\?.*elbo, iwae, jvi1.*dvi"):
        E.get("jiv2")
    with pytest.raises(ValueError, match="iwea|did you mean 'iwae'"):
        E.get("iwea")
    with pytest.raises(InputError, match="'jvi0' is 'iwae'"):
        E.get("jvi0")
    for bad in ("jvi-1", "jvi01", "", "jvi"):
        with pytest.raises(InputError, match="unknown estimator"):
            E.get(bad)
    with pytest.raises(InputError, match="string"):
        E.get(3)


def test_thresholds_defined_once():
    from evalkit.estimators import psis

    assert E.KHAT_GOOD == 0.5 and E.KHAT_BAD == 0.7
    assert E.KHAT_GOOD is psis.KHAT_GOOD and E.khat_threshold is psis.khat_threshold


def test_accuracy_warning_is_a_user_warning():
    assert issubclass(AccuracyWarning, UserWarning)


# ------------------------------------------------------------------------------------------
# Properties (hypothesis)
# ------------------------------------------------------------------------------------------

_log_weights = st.lists(
    st.one_of(st.floats(-30.0, 30.0, allow_nan=False), st.just(-math.inf)), min_size=1, max_size=24
).filter(lambda v: any(np.isfinite(v)))
_shift = st.floats(-1e3, 1e3, allow_nan=False)

_PROPERTY_ESTIMATORS = {
    "elbo": E.elbo,
    "iwae": E.iwae,
    "dvi": E.dvi,
    "jvi1": lambda x: E.jvi(x, 1),
    "jvi2": lambda x: E.jvi(x, 2),
    "jvi3": lambda x: E.jvi(x, 3),
}
_MIN_K = {"elbo": 1, "iwae": 1, "dvi": 2, "jvi1": 2, "jvi2": 3, "jvi3": 4}


def _defined(name, values):
    n_finite = int(np.isfinite(values).sum())
    return len(values) >= _MIN_K[name] and (not name.startswith("jvi") or n_finite > int(name[3:]))


@settings(max_examples=60, deadline=None)
@given(values=_log_weights, shift=_shift, name=st.sampled_from(sorted(_PROPERTY_ESTIMATORS)))
def test_shift_equivariance(values, shift, name):
    if not _defined(name, values):
        return
    fn = _PROPERTY_ESTIMATORS[name]
    lw = np.array(values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AccuracyWarning)
        base = float(fn(lw))
        moved = float(fn(lw + shift))
    if base == -math.inf:
        assert moved == -math.inf
        return
    assert abs(moved - (base + shift)) <= 1e-9 * max(1.0, abs(base), abs(shift))


@settings(max_examples=60, deadline=None)
@given(values=_log_weights, seed=st.integers(0, 2**16), name=st.sampled_from(sorted(_PROPERTY_ESTIMATORS)))
def test_permutation_invariance(values, seed, name):
    if not _defined(name, values):
        return
    fn = _PROPERTY_ESTIMATORS[name]
    lw = np.array(values)
    perm = np.random.default_rng(seed).permutation(len(lw))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AccuracyWarning)
        a, b = float(fn(lw)), float(fn(lw[perm]))
    assert a == b or abs(a - b) <= 1e-9 * max(1.0, abs(a))


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.floats(-30.0, 30.0, allow_nan=False), min_size=2, max_size=24), shift=_shift)
def test_ess_is_shift_invariant_and_between_1_and_k(values, shift):
    lw = np.array(values)
    a, b = float(E.ess(lw)), float(E.ess(lw + shift))
    assert 1.0 - 1e-12 <= a <= len(lw) * (1 + 1e-12)
    assert abs(a - b) <= 1e-9 * a


@settings(max_examples=40, deadline=None)
@given(value=st.floats(-1e4, 1e4, allow_nan=False), k=st.integers(1, 40))
def test_k_equal_weights_all_estimators_agree(value, k):
    lw = np.full(k, value)
    for name, fn in _PROPERTY_ESTIMATORS.items():
        if k >= _MIN_K[name]:
            assert abs(float(fn(lw)) - value) <= 1e-12 * max(1.0, abs(value))


@settings(max_examples=40, deadline=None)
@given(values=_log_weights)
def test_ordering_elbo_le_iwae_and_k1_equality(values):
    lw = np.array(values)
    assert float(E.elbo(lw)) <= float(E.iwae(lw)) + 1e-12 * max(1.0, abs(float(E.iwae(lw))))
    if len(lw) == 1:
        assert float(E.elbo(lw)) == float(E.iwae(lw)) == lw[0]


def test_docstring_examples_run():
    import doctest

    from evalkit.estimators import arraykind, jackknife, psis

    for module in (E, psis, jackknife, arraykind):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, module.__name__
