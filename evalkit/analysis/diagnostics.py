"""Bias, variance and weight diagnostics over K from one pool of log-weights.

Pure functions of a ``[N, K_max]`` log-weight matrix (``log w[n, i]``, one row per datapoint,
i.i.d. columns): no model, no devices, no I/O. :func:`evalkit.analysis.sweep` strings them together.

The one idea: **one pool serves every k**. For ``k <= K_max`` the first ``G * k`` columns,
``G = floor(K_max / k)``, split into ``G`` disjoint groups of ``k`` columns. Each group gives
one independent draw of an estimator at sample size ``k``, so per datapoint we get its mean and
(for ``G >= 2``) its Monte Carlo variance without touching the model again.

Statistics at one k (``est[n, g]`` = estimator on group g of datapoint n, ``ref[n]`` = reference):

* ``m_n = mean_g est[n, g]``, ``v_n = var_g est[n, g]`` (ddof = 1; needs ``G >= 2``);
* estimate ``= mean_n m_n`` with SE ``sd_n(m_n) / sqrt(N)`` (data + Monte Carlo variability) and
  Monte Carlo SE ``sqrt(mean_n v_n / (G N))``;
* bias ``= mean_n (m_n - ref_n)`` with SE ``sd_n(m_n - ref_n) / sqrt(N)``: the differences are
  per datapoint, so this one spread carries both the Monte Carlo noise and the variation of the
  bias between datapoints;
* variance ``= mean_n v_n`` (the Monte Carlo variance of one estimate at k, averaged over
  datapoints) with SE ``sd_n(v_n) / sqrt(N)``;
* RMSE ``= sqrt(bias^2 + variance)`` with a delta-method SE that uses the covariance over
  datapoints of ``(m_n - ref_n, v_n)``.

References
----------
.. [1] S. Nowozin, "Debiasing evidence approximations: on importance-weighted autoencoders and
   jackknifed variational inference", ICLR 2018 (Propositions 1 and 2: asymptotic bias and
   variance of IWAE).
.. [2] A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry, "Pareto smoothed importance
   sampling", JMLR 25 (2024) (k-hat thresholds 0.5 and 0.7).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from ..estimators.psis import khat_defined
from ..errors import InputError

#: Elements of one ``[rows, G, k]`` slice handed to an estimator at once (float64: 32 MiB).
DEFAULT_MAX_ELEMENTS = 1 << 22


# ----------------------------------------------------------------------------------------------
# The K ladder and the grouped evaluation
# ----------------------------------------------------------------------------------------------


def ladder(k_max: int) -> List[int]:
    """Return the 1-2-5 ladder ``1, 2, 5, 10, 20, 50, ...`` up to ``k_max``, ending at ``k_max``.

    Parameters
    ----------
    k_max : int
        Largest sample size (the pool width), ``>= 1``.

    Returns
    -------
    list of int
        Strictly increasing; ``k_max`` is always the last entry.

    Examples
    --------
    >>> ladder(5000)
    [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
    >>> ladder(300)
    [1, 2, 5, 10, 20, 50, 100, 200, 300]
    """
    k_max = _positive_int(k_max, "k_max")
    ks: List[int] = []
    decade = 1
    while decade <= k_max:
        ks.extend(m * decade for m in (1, 2, 5) if m * decade < k_max)
        decade *= 10
    ks.append(k_max)
    return ks


def group_columns(log_w: torch.Tensor, k: int) -> torch.Tensor:
    """View the first ``G * k`` columns of ``log_w`` as ``G = floor(K / k)`` disjoint groups.

    Parameters
    ----------
    log_w : Tensor, shape (N, K)
    k : int
        Group size, ``1 <= k <= K``.

    Returns
    -------
    Tensor, shape (N, G, k)
        Group ``g`` holds columns ``g*k .. g*k + k - 1`` (a view, no copy). The trailing
        ``K - G*k`` columns are not used at this ``k``.
    """
    n, width = log_w.shape
    k = _positive_int(k, "k")
    if k > width:
        raise InputError(f"k = {k} exceeds the pool of {width} samples per datapoint; use k <= {width}")
    groups = width // k
    return log_w[:, : groups * k].reshape(n, groups, k)


def evaluate_groups(
    log_w: torch.Tensor,
    k: int,
    fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> np.ndarray:
    """Apply an estimator to every disjoint group of ``k`` columns.

    Parameters
    ----------
    log_w : Tensor, shape (N, K)
        Log-weights (float64 recommended).
    k : int
        Group size.
    fn : callable
        Estimator ``[..., k] -> [...]`` (e.g. ``evalkit.estimators.get("iwae").fn``).
    max_elements : int
        At most this many log-weights are passed to ``fn`` at once; rows are processed in
        chunks, so memory stays bounded whatever ``N``. Does not change the numbers.

    Returns
    -------
    ndarray, shape (N, G), float64
        ``est[n, g]``, the estimator on group ``g`` of datapoint ``n``.
    """
    grouped = group_columns(log_w, k)
    n, groups, _ = grouped.shape
    rows = max(1, int(max_elements) // max(1, groups * k))
    out = np.empty((n, groups), dtype=np.float64)
    for start in range(0, n, rows):
        chunk = fn(grouped[start : start + rows])
        out[start : start + rows] = _to_numpy(chunk).reshape(-1, groups)
    return out


# ----------------------------------------------------------------------------------------------
# Bias / variance / RMSE at one k
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BiasVariance:
    """Dataset-level statistics of one estimator at one k (all in nats, or nats^2 for variance).

    Attributes
    ----------
    k, groups : int
        Sample size and number of disjoint groups ``G = floor(K_max / k)``.
    estimate, estimate_se, mc_se : float
        ``mean_n m_n``; its SE over datapoints; its Monte Carlo SE (NaN when ``G < 2``).
    bias, bias_se : float
        ``mean_n (m_n - ref_n)`` and its SE over datapoints.
    variance, variance_se : float
        ``mean_n v_n`` (Monte Carlo variance of one estimate at k) and its SE; NaN when
        ``G < 2``.
    rmse, rmse_se : float
        ``sqrt(bias^2 + variance)`` and its delta-method SE.
    note : str
        Why a value is NaN, or ``""``.
    """

    k: int
    groups: int
    estimate: float
    estimate_se: float
    mc_se: float
    bias: float
    bias_se: float
    variance: float
    variance_se: float
    rmse: float
    rmse_se: float
    note: str = ""


def group_moments(est: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-datapoint mean and variance (ddof 1) over groups: the sufficient statistics at one k.

    Parameters
    ----------
    est : ndarray, shape (N, G)

    Returns
    -------
    mean, var : ndarray, shape (N,)
        ``var`` is NaN when ``G < 2``.
    """
    est = np.asarray(est, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # -inf or nan groups give a nan variance: reported, not an error
        mean = est.mean(axis=1)
        var = est.var(axis=1, ddof=1) if est.shape[1] >= 2 else np.full(est.shape[0], np.nan)
    return mean, var


def bias_variance(est: np.ndarray, reference: np.ndarray, *, k: int) -> BiasVariance:
    """Summarise grouped estimates ``est[n, g]`` against a per-datapoint reference.

    Parameters
    ----------
    est : ndarray, shape (N, G)
        Estimates on ``G`` disjoint groups of ``k`` samples per datapoint.
    reference : ndarray, shape (N,)
        Reference value of log p(x_n) per datapoint (exact, user-supplied or a pool estimate).
    k : int
        The group size (recorded in the result).

    Returns
    -------
    BiasVariance

    Notes
    -----
    With ``m_n`` and ``v_n`` the mean and variance (ddof 1) over groups, ``d_n = m_n - ref_n``:

    .. math::

        \\hat b = \\bar d, \\quad SE(\\hat b) = s_d / \\sqrt N, \\qquad
        \\hat V = \\bar v, \\quad SE(\\hat V) = s_v / \\sqrt N,

        RMSE = \\sqrt{\\hat b^2 + \\hat V}, \\quad
        SE(RMSE)^2 = g^T \\hat\\Sigma g / N, \\quad g = (\\hat b, 1/2) / RMSE,

    with :math:`\\hat\\Sigma` the sample covariance of :math:`(d_n, v_n)`. Datapoints are
    independent, so these SEs are valid whatever the correlation between groups of one
    datapoint's estimates at different k.
    """
    est = np.asarray(est, dtype=np.float64)
    mean, var = group_moments(est)
    return summarize_moments(mean, var, est.shape[1], reference, k=k)


def summarize_moments(mean: np.ndarray, var: np.ndarray, groups: int, reference: np.ndarray, *,
                      k: int, index: Optional[Sequence[int]] = None) -> BiasVariance:
    """:func:`bias_variance` from the per-datapoint sufficient statistics of :func:`group_moments`.

    ``index`` (dataset index of each row, default the positions) names the datapoints whose
    estimate is not finite in the note.
    """
    m = np.asarray(mean, dtype=np.float64)
    n = m.shape[0]
    reference = np.broadcast_to(np.asarray(reference, dtype=np.float64), (n,))
    notes = []
    undefined = ~np.isfinite(m)
    if undefined.any():
        # A group with no positive weight gives -inf; with at most m of them, JVI-m is nan.
        names = np.flatnonzero(undefined) if index is None else np.asarray(index)[undefined]
        notes.append(f"not finite for {int(undefined.sum())} of {n} datapoints ({_name_indices(names, 5)}): "
                     f"some of their groups of {k} have too few positive weights")
    d = m - reference
    estimate, estimate_se = mean_se(m)
    bias, bias_se = mean_se(d)
    if n < 2:
        notes.append("one datapoint: no standard errors over datapoints")
    if groups >= 2:
        v = np.asarray(var, dtype=np.float64)
        variance, variance_se = mean_se(v)
        mc_se = math.sqrt(variance / (groups * n)) if variance >= 0 else float("nan")
        rmse = math.sqrt(bias * bias + variance)
        rmse_se = float("nan")
        if n >= 2 and rmse > 0:
            cov = np.cov(np.stack([d, v]), ddof=1) / n
            grad = np.array([bias, 0.5]) / rmse
            rmse_se = math.sqrt(max(float(grad @ cov @ grad), 0.0))
    else:
        variance = variance_se = mc_se = rmse = rmse_se = float("nan")
        notes.append(f"one group of {k} samples (k > K_max/2): no variance estimate")
    return BiasVariance(
        k=int(k),
        groups=int(groups),
        estimate=estimate,
        estimate_se=estimate_se,
        mc_se=mc_se,
        bias=bias,
        bias_se=bias_se,
        variance=variance,
        variance_se=variance_se,
        rmse=rmse,
        rmse_se=rmse_se,
        note="; ".join(notes),
    )


# ----------------------------------------------------------------------------------------------
# Theory curves from the pool's sample moments
# ----------------------------------------------------------------------------------------------


def moment_ratios(log_w: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Estimate ``mu2 / mu^2`` and ``mu3 / mu^3`` of the weights per datapoint.

    Parameters
    ----------
    log_w : Tensor or ndarray, shape (N, K)

    Returns
    -------
    r2, r3 : ndarray, shape (N,)
        With ``x_i = K * w_i / sum_j w_j`` (the weights over their sample mean, computed stably
        from log-weights): ``r2 = sum_i (x_i - 1)^2 / (K - 1)`` and
        ``r3 = K sum_i (x_i - 1)^3 / ((K - 1)(K - 2))``. NaN where ``K`` is too small (2 and 3
        samples) or a row has no finite weight.

    Notes
    -----
    ``r2 = K/(K-1) (K sum_i w~_i^2 - 1)`` as in DESIGN.md. Ratio estimators are consistent, not
    unbiased; with heavy-tailed weights (PSIS k-hat > 0.5) they do not converge at all.
    """
    lw = torch.as_tensor(log_w).to("cpu", torch.float64)
    n, k = lw.shape
    x = torch.softmax(lw, dim=-1) * k
    dev = x - 1.0
    r2 = (dev**2).sum(-1) / (k - 1) if k >= 2 else torch.full((n,), float("nan"), dtype=torch.float64)
    r3 = k * (dev**3).sum(-1) / ((k - 1) * (k - 2)) if k >= 3 else torch.full((n,), float("nan"), dtype=torch.float64)
    return r2.numpy(), r3.numpy()


def iwae_theory(r2: np.ndarray, r3: np.ndarray, ks: Sequence[int]) -> pd.DataFrame:
    """Asymptotic bias and variance of IWAE-k, averaged over datapoints.

    Parameters
    ----------
    r2, r3 : ndarray, shape (N,)
        ``mu2 / mu^2`` and ``mu3 / mu^3`` per datapoint (:func:`moment_ratios`).
    ks : sequence of int

    Returns
    -------
    DataFrame
        Columns ``k``, ``bias`` and ``variance`` (leading order), ``bias_2`` and
        ``variance_2`` (through order ``1/k^2``), each the mean over datapoints.

    Notes
    -----
    Nowozin (2018), Propositions 1-2, with ``mu`` the mean and ``mu_r`` the r-th central moment
    of the weights:

    .. math::

        bias = -\\frac{\\mu_2}{2\\mu^2 k}
               + \\left(\\frac{\\mu_3}{3\\mu^3} - \\frac{3\\mu_2^2}{4\\mu^4}\\right)\\frac{1}{k^2},
        \\qquad
        var = \\frac{\\mu_2}{\\mu^2 k}
              - \\left(\\frac{\\mu_3}{\\mu^3} - \\frac{5\\mu_2^2}{2\\mu^4}\\right)\\frac{1}{k^2}.

    Valid only for weights with enough finite moments (PSIS k-hat < 0.5).
    """
    r2 = np.asarray(r2, dtype=np.float64)
    r3 = np.asarray(r3, dtype=np.float64)
    ks = np.asarray(list(ks), dtype=np.float64)
    lead_bias = -np.mean(r2) / 2.0
    lead_var = np.mean(r2)
    second_bias = np.mean(r3 / 3.0 - 0.75 * r2**2)
    second_var = -np.mean(r3 - 2.5 * r2**2)
    return pd.DataFrame(
        {
            "k": ks.astype(np.int64),
            "bias": lead_bias / ks,
            "variance": lead_var / ks,
            "bias_2": lead_bias / ks + second_bias / ks**2,
            "variance_2": lead_var / ks + second_var / ks**2,
        }
    )


# ----------------------------------------------------------------------------------------------
# The a + b/K + c/K^2 fit
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AsymptoticFit:
    """Weighted least-squares fit ``E[estimate_k] = a + b/k + c/k^2`` over the sweep's ks.

    Attributes
    ----------
    a, a_se : float
        Extrapolated value at ``k -> infinity`` (an estimate of mean log p(x)) and its SE.
    a_minus_reference, a_minus_reference_se : float
        ``a - mean_n ref_n`` and its paired SE over datapoints (NaN without a reference): the
        extrapolation's remaining error, without the spread of log p(x) between datapoints.
    b, c : float
        The fitted ``1/k`` and ``1/k^2`` coefficients.
    ks : tuple of int
        The ks the fit used.
    note : str
        Why the fit is NaN, or caveats.
    """

    a: float
    a_se: float
    b: float
    c: float
    ks: tuple = field(default_factory=tuple)
    note: str = ""
    a_minus_reference: float = math.nan
    a_minus_reference_se: float = math.nan


def fit_inverse_k(ks: Sequence[int], means: np.ndarray, se: Sequence[float],
                  reference: Optional[np.ndarray] = None) -> AsymptoticFit:
    """Fit ``a + b/k + c/k^2`` to per-k estimates; extrapolate to ``k -> infinity``.

    Parameters
    ----------
    ks : sequence of int, length P
        Sample sizes, ``P >= 3``.
    means : ndarray, shape (N, P)
        Per-datapoint group means ``m_n(k)`` at each k.
    se : sequence of float, length P
        Standard errors of the dataset estimates ``mean_n m_n(k)``; the fit weights are
        ``1 / se^2`` (equal weights where an SE is not finite and positive).
    reference : ndarray, shape (N,), optional
        Per-datapoint reference log p(x_n), for ``a_minus_reference``.

    Returns
    -------
    AsymptoticFit

    Notes
    -----
    The point estimate is the weighted least-squares fit to the dataset estimates
    ``y_k = mean_n m_n(k)``: ``(a, b, c) = L y`` with ``L = (X^T W X)^{-1} X^T W``,
    ``X = [1, 1/k, 1/k^2]``, ``W = diag(1/se_k^2)``. All ks share the same samples, so the
    textbook WLS standard error (which assumes independent points) is wrong. Because ``L`` is
    linear, ``a`` is also the mean over datapoints of ``a_n = (L m_n)_0``, and datapoints *are*
    independent: the reported SE is ``sd_n(a_n) / sqrt(N)``, which accounts for the sharing.
    It is still approximate in that the weights and the choice of ks are taken as fixed, and
    ``a`` is only as good as the model ``a + b/k + c/k^2`` over the fitted range.
    """
    ks = np.asarray(list(ks), dtype=np.float64)
    means = np.asarray(means, dtype=np.float64)
    se = np.asarray(list(se), dtype=np.float64)
    if ks.size < 3:
        return AsymptoticFit(math.nan, math.nan, math.nan, math.nan, tuple(int(k) for k in ks),
                             f"needs >= 3 values of k in the fit range, got {ks.size}")
    if not np.all(np.isfinite(means)):
        return AsymptoticFit(math.nan, math.nan, math.nan, math.nan, tuple(int(k) for k in ks),
                             "non-finite estimates in the fit range")
    good = np.isfinite(se) & (se > 0)
    weights = np.where(good, 1.0 / np.where(good, se, 1.0) ** 2, np.nan)
    weights = np.where(np.isfinite(weights), weights, np.nanmean(weights) if good.any() else 1.0)
    design = np.stack([np.ones_like(ks), 1.0 / ks, 1.0 / ks**2], axis=1)
    root_w = np.sqrt(weights)[:, None]
    # L = pinv(sqrt(W) X) sqrt(W): stable even when 1/k^2 spans many decades.
    lin = np.linalg.pinv(root_w * design) * root_w.T
    coef = lin @ means.mean(axis=0)
    a_n = means @ lin[0]
    n = means.shape[0]
    a_se = mean_se(a_n)[1]
    gap = gap_se = math.nan
    if reference is not None:
        gap, gap_se = mean_se(a_n - np.broadcast_to(np.asarray(reference, dtype=np.float64), a_n.shape))
    note = "" if ks.size > 3 else "3 points: the fit interpolates"
    return AsymptoticFit(float(coef[0]), a_se, float(coef[1]), float(coef[2]),
                         tuple(int(k) for k in ks), note, gap, gap_se)


@dataclass(frozen=True)
class BiasSlope:
    """Log-log slope of measured |bias| against k.

    Attributes
    ----------
    slope, slope_se : float
        Fitted ``s`` in ``|bias| ∝ k^s`` and its (approximate) SE.
    ks : tuple of int
        The ks used: those where the bias is resolved (``|bias| > z SE``).
    note : str
    """

    slope: float
    slope_se: float
    ks: tuple = field(default_factory=tuple)
    note: str = ""


def bias_slope(ks: Sequence[int], bias: Sequence[float], bias_se: Sequence[float], *, z: float = 3.0) -> BiasSlope:
    """Fit ``log|bias| = const + s log k`` over the ks where the bias is resolved.

    Parameters
    ----------
    ks, bias, bias_se : sequences of equal length
        Per-k measured bias and its SE (a sweep table's columns).
    z : float
        Use only points with ``|bias| > z * SE`` (default 3): below that, |bias| is mostly noise
        and its logarithm is biased towards the noise floor.

    Returns
    -------
    BiasSlope
        IWAE's bias falls like ``k^-1``; JVI-m's like ``k^-(m+1)`` when the weights' expansion
        has a nonzero ``k^-(m+1)`` term (for Gamma weights the ``k^-3`` term vanishes, so JVI-2
        falls like ``k^-4`` there).

    Notes
    -----
    Weighted least squares with ``SE(log|b|) = SE(b) / |b|``. The points share samples, so the
    SE treats them as independent and is approximate (usually too small).
    """
    k = np.asarray(list(ks), dtype=np.float64)
    b = np.abs(np.asarray(list(bias), dtype=np.float64))
    se = np.asarray(list(bias_se), dtype=np.float64)
    use = np.isfinite(b) & np.isfinite(se) & (se > 0) & (b > z * se)
    if use.sum() < 2:
        return BiasSlope(math.nan, math.nan, tuple(int(v) for v in k[use]),
                         f"needs >= 2 values of k with |bias| > {z:g} SE, got {int(use.sum())}")
    x, y, sy = np.log(k[use]), np.log(b[use]), se[use] / b[use]
    design = np.stack([np.ones_like(x), x], axis=1)
    weights = 1.0 / sy**2
    cov = np.linalg.inv(design.T @ (design * weights[:, None]))
    coef = cov @ (design.T @ (weights * y))
    slope_se = math.sqrt(cov[1, 1]) if use.sum() > 2 else math.nan
    return BiasSlope(float(coef[1]), slope_se, tuple(int(v) for v in k[use]),
                     "" if use.sum() > 2 else "2 points: no SE")


# ----------------------------------------------------------------------------------------------
# Weight diagnostics
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightDiagnostics:
    """Per-datapoint importance-weight diagnostics on the full pool, and their summary.

    Attributes
    ----------
    index : ndarray, shape (N,)
        Dataset index of each row (positions ``0..N-1`` unless given).
    ess_fraction : ndarray, shape (N,)
        Effective sample size over K, ``1 / (K sum_i w~_i^2)`` in ``[1/K, 1]``.
    khat : ndarray, shape (N,)
        PSIS Pareto k-hat (NaN where it cannot be fitted, e.g. very small K).
    good, bad : float
        Thresholds 0.5 (finite variance below it) and 0.7 (unreliable above it).
    threshold : float
        The sample-size dependent threshold ``min(1 - 1/log10(K), 0.7)`` of Vehtari et al.
    fraction_above_good, fraction_above_bad : float
        Fractions of datapoints (with a finite k-hat) above 0.5 and 0.7.
    above_good, above_bad : ndarray of int
        Dataset indices of those datapoints.
    warning : str or None
        One sentence naming the datapoints above 0.5, or ``None``.
    """

    index: np.ndarray
    ess_fraction: np.ndarray
    khat: np.ndarray
    good: float
    bad: float
    threshold: float
    fraction_above_good: float
    fraction_above_bad: float
    above_good: np.ndarray
    above_bad: np.ndarray
    warning: Optional[str]

    def to_frame(self) -> pd.DataFrame:
        """One row per datapoint: ``index``, ``ess_fraction``, ``khat``."""
        return pd.DataFrame({"index": self.index, "ess_fraction": self.ess_fraction, "khat": self.khat})

    def summary(self) -> dict:
        """Plain-Python summary (JSON-ready)."""
        finite = np.isfinite(self.khat)
        return {
            "mean_ess_fraction": float(np.mean(self.ess_fraction)),
            "min_ess_fraction": float(np.min(self.ess_fraction)),
            "max_khat": float(np.max(self.khat[finite])) if finite.any() else None,
            "khat_threshold": self.threshold,
            "fraction_khat_above_0.5": self.fraction_above_good,
            "fraction_khat_above_0.7": self.fraction_above_bad,
            "indices_khat_above_0.5": [int(i) for i in self.above_good],
            "indices_khat_above_0.7": [int(i) for i in self.above_bad],
        }


def weight_diagnostics(log_w: torch.Tensor, *, index: Optional[Sequence[int]] = None) -> WeightDiagnostics:
    """ESS/K and PSIS k-hat per datapoint, with a warning naming untrustworthy datapoints.

    Parameters
    ----------
    log_w : Tensor, shape (N, K)
    index : sequence of int, optional
        Dataset index of each row, used to name datapoints in the warning.

    Returns
    -------
    WeightDiagnostics

    Notes
    -----
    k-hat estimates the shape of a generalised Pareto tail fitted to the largest weights: the
    weights have ``1/k`` finite moments. Above 0.5 the variance is infinite, so the IWAE/JVI
    bias and variance expansions (which need ``mu2``, ``mu3``) do not apply; above 0.7 the
    estimate itself converges impractically slowly [2]_.
    """
    from .. import estimators

    lw = torch.as_tensor(log_w).to("cpu", torch.float64)
    n, k = lw.shape
    ess = _to_numpy(estimators.ess(lw)) / k
    # Below K = 21 the tail is too short for a Pareto fit: k-hat is NaN, without psis_khat's warning.
    khat = _to_numpy(estimators.psis_khat(lw)) if khat_defined(k) else np.full(n, np.nan)
    return summarize_weights(ess, khat, k, index=index)


def summarize_weights(ess_fraction: np.ndarray, khat: np.ndarray, k: int, *,
                      index: Optional[Sequence[int]] = None) -> WeightDiagnostics:
    """:class:`WeightDiagnostics` from per-datapoint ESS/K and k-hat (e.g. computed block by block).

    Parameters
    ----------
    ess_fraction, khat : ndarray, shape (N,)
    k : int
        Samples per datapoint they were computed from.
    index : sequence of int, optional
        Dataset index of each row, used to name datapoints in the warning.
    """
    from .. import estimators

    n = len(khat)
    idx = np.arange(n) if index is None else np.asarray(index, dtype=np.int64)
    ess = np.asarray(ess_fraction, dtype=np.float64)
    khat = np.asarray(khat, dtype=np.float64)
    good, bad = float(estimators.KHAT_GOOD), float(estimators.KHAT_BAD)
    finite = np.isfinite(khat)
    count = max(int(finite.sum()), 1)
    above_good = idx[finite & (khat > good)]
    above_bad = idx[finite & (khat > bad)]
    warning = None
    if above_good.size:
        warning = (
            f"PSIS k-hat > {good:g} at {above_good.size} of {n} datapoints ({_name_indices(above_good)})"
            + (f", > {bad:g} at {above_bad.size} ({_name_indices(above_bad)})" if above_bad.size else "")
            + ": their importance weights have infinite variance, so the bias/variance asymptotics and "
            "theory curves do not hold there; use a better proposal or treat their estimates as unreliable"
        )
    return WeightDiagnostics(
        index=idx,
        ess_fraction=ess,
        khat=khat,
        good=good,
        bad=bad,
        threshold=float(estimators.khat_threshold(k)) if k >= 2 else bad,
        fraction_above_good=float(above_good.size / count),
        fraction_above_bad=float(above_bad.size / count),
        above_good=above_good,
        above_bad=above_bad,
        warning=warning,
    )


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _name_indices(indices: np.ndarray, shown: int = 10) -> str:
    head = ", ".join(str(int(i)) for i in indices[:shown])
    rest = indices.size - shown
    return f"{head} and {rest} more" if rest > 0 else head


def mean_se(values: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error ``sd / sqrt(N)`` over datapoints (SE NaN for one value)."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(np.mean(values))
    if values.size < 2:
        return mean, float("nan")
    with np.errstate(invalid="ignore"):  # an infinite value gives a nan SE, which the tables show
        return mean, float(np.std(values, ddof=1) / math.sqrt(values.size))


def _to_numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
