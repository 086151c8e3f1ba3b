"""Asymptotic theory of IWAE over K, and fits of it, from one pool of log-weights.

* :func:`moment_ratios` -- ``mu2 / mu^2`` and ``mu3 / mu^3`` of the weights per datapoint;
* :func:`iwae_theory` -- Nowozin's (2018) [1]_ asymptotic bias and variance curves from them;
* :func:`fit_inverse_k` -- ``E[IWAE_k] ~ a - b / k`` fitted to the grouped means (:class:`AsymptoticFit`);
* :func:`bias_slope` -- the slope of the bias against ``1/k`` (:class:`BiasSlope`).

Pure functions of arrays; the grouped statistics they take come from :mod:`evalkit.analysis.groups`.

References
----------
.. [1] S. Nowozin, "Debiasing evidence approximations: on importance-weighted autoencoders and
   jackknifed variational inference", ICLR 2018 (Propositions 1 and 2: asymptotic bias and
   variance of IWAE).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch

from .groups import mean_se


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


def valid_iwae_theory(r2: np.ndarray, r3: np.ndarray, ks: Sequence[int], khat: np.ndarray) -> pd.DataFrame:
    """:func:`iwae_theory` only where its expansion holds: light-tailed datapoints, large enough K.

    Parameters
    ----------
    r2, r3 : ndarray, shape (N,)
        Weight-moment ratios per datapoint (:func:`moment_ratios`).
    ks : sequence of int
    khat : ndarray, shape (N,)
        PSIS k-hat per datapoint (NaN where it could not be estimated).

    Returns
    -------
    DataFrame
        The columns of :func:`iwae_theory` plus ``datapoints`` (how many it averages): the mean
        over the datapoints with finite k-hat < 0.5 (the moments the expansion needs exist), at
        the K where both second-order terms are smaller in magnitude than the leading ones,
        :math:`|c_b| / K^2 < |b_1| / K` and :math:`|c_v| / K^2 < v_1 / K`. So the variance through
        ``1/K^2`` is always positive. Empty when no datapoint or no K qualifies.
    """
    khat = np.asarray(khat, dtype=np.float64)
    good = np.isfinite(khat) & (khat < 0.5)
    columns = ["k", "bias", "variance", "bias_2", "variance_2", "datapoints"]
    if not good.any() or len(ks) == 0:
        return pd.DataFrame({c: pd.Series(dtype=np.int64 if c in ("k", "datapoints") else np.float64)
                             for c in columns})
    frame = iwae_theory(np.asarray(r2)[good], np.asarray(r3)[good], ks)
    lead_b, lead_v = frame["bias"].abs(), frame["variance"]
    ok = ((frame["bias_2"] - frame["bias"]).abs() < lead_b) & ((frame["variance_2"] - frame["variance"]).abs() < lead_v)
    frame = frame[ok.to_numpy() & np.isfinite(frame["variance_2"].to_numpy())].reset_index(drop=True)
    frame["datapoints"] = int(good.sum())
    return frame[columns]


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

