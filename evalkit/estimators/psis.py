"""Pareto k-hat of importance weights: the PSIS reliability diagnostic, per datapoint.

Pareto smoothed importance sampling [1]_ fits a generalised Pareto distribution (GPD) to the
largest importance weights of each datapoint; its shape estimate k-hat says how many moments
the weight distribution has (about ``1/k``):

* ``k-hat < KHAT_GOOD = 0.5``: finite variance; the IWAE/JVI bias and variance expansions
  (which need the second and higher moments of the weights) apply;
* ``0.5 <= k-hat < KHAT_BAD = 0.7``: infinite variance, but the estimate still converges at a
  usable rate; treat the asymptotic error bars with care;
* ``k-hat >= 0.7``: the estimate converges impractically slowly; neither IWAE's nor JVI's
  asymptotics can be trusted for that datapoint. With few samples the practical threshold
  is lower, :func:`khat_threshold` ``= min(1 - 1/log10(S), 0.7)`` [1]_.

The tail is the ``M = ceil(min(S/5, 3 sqrt(S)))`` largest of the S weights (iid samples,
relative efficiency 1), as exceedances over the next largest; the fit is the empirical-Bayes
estimate of Zhang & Stephens [2]_ with the weakly informative prior on k of Vehtari et al.
(the ``(n k + 10 * 0.5) / (n + 10)`` adjustment) -- the same estimator as ArviZ's ``_gpdfit``,
vectorised over datapoints here.

References
----------
.. [1] A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry, "Pareto smoothed importance
   sampling", JMLR 25 (2024); arXiv:1507.02646 (2015).
.. [2] J. Zhang, M. A. Stephens, "A new and efficient estimation method for the generalized
   Pareto distribution", Technometrics 51 (2009) 316-325.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Tuple

import numpy as np

from .arraykind import as_rows, format_positions
from ..errors import InputError, user_stacklevel

__all__ = ["KHAT_GOOD", "KHAT_BAD", "khat_threshold", "psis_khat", "gpd_fit", "tail_length"]

#: Below this k-hat the weights have finite variance (Vehtari et al.).
KHAT_GOOD = 0.5
#: The cap of :func:`khat_threshold`: above it the estimate is unreliable whatever the sample size (Vehtari et al.).
KHAT_BAD = 0.7

# The smallest tail the generalised Pareto fit accepts (as in PSIS).
MIN_TAIL_LENGTH = 5
# Prior of Vehtari et al. on k: a weak pull towards 0.5 worth 10 observations; and the prior
# scale of the Zhang-Stephens grid over b.
_PRIOR_K_WEIGHT = 10.0
_PRIOR_BS = 3.0
_LOG_TINY = math.log(np.finfo(np.float64).tiny)


class KhatWarning(UserWarning):
    """PSIS k-hat could not be computed for some rows (too few distinct tail weights).

    A ``UserWarning``, so existing filters apply; its own class so that a caller (the CLI) can
    tell evalkit's warnings from a library's.
    """


def khat_threshold(num_samples: int) -> float:
    """Sample-size-dependent k-hat threshold ``min(1 - 1/log10(S), 0.7)`` of Vehtari et al. (JMLR 2024).

    The one definition evalkit judges k-hat by (warnings, fractions, reports): with S samples a
    k-hat above it means the importance-sampling estimate is unreliable [1]_ (Sec. 3.2.4 of the
    JMLR 25 (2024) version; R's loo since 2.7). 0.5 at S = 100, 0.6667 at S = 1000, 0.7 from
    S = 10**(10/3) ~ 2154 on.

    Parameters
    ----------
    num_samples : int
        S, the number of importance samples per datapoint (>= 1).

    Returns
    -------
    float
        ``<= 0`` for ``S <= 10`` (0 at S = 10, negative below) and ``-inf`` at S = 1, where
        ``log10(1) = 0``: so few samples certify no tail at all. (evalkit fits k-hat only from
        S = 21 on; below it k-hat is NaN and counted as undefined, never as above or below.)
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise InputError(f"num_samples must be an int >= 1, got {num_samples!r}; pass the number of samples K")
    if int(num_samples) == 1:
        return -math.inf
    return min(1.0 - 1.0 / math.log10(int(num_samples)), KHAT_BAD)


def tail_length(num_samples: int) -> int:
    """Number of largest weights PSIS fits: ``ceil(min(S/5, 3 sqrt(S)))``."""
    return int(math.ceil(min(0.2 * num_samples, 3.0 * math.sqrt(num_samples))))


def khat_defined(num_samples: int) -> bool:
    """Whether K samples give a tail long enough (``MIN_TAIL_LENGTH``) for a k-hat fit (K >= 21)."""
    return tail_length(num_samples) >= MIN_TAIL_LENGTH


def gpd_fit(exceedances: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Zhang-Stephens empirical-Bayes GPD fit with the weak prior on k, vectorised over rows.

    Parameters
    ----------
    exceedances : ndarray, shape (N, n), float64
        Positive exceedances over the threshold, sorted ascending along each row (n >= 5).

    Returns
    -------
    k, sigma : ndarray, shape (N,)
        Shape (with the prior adjustment) and scale estimates. k is invariant to rescaling
        the exceedances, so callers may pass them in any unit.

    Notes
    -----
    For a grid ``b_i = 1/x_max + (1 - sqrt(m / (i - 1/2))) / (3 x_q)`` (i = 1..m,
    ``m = 30 + floor(sqrt(n))``, x_q the first-quartile order statistic) the profile
    log-likelihood is ``L(b) = n (log(-b/k(b)) - k(b) - 1)`` with ``k(b) = mean log1p(-b x)``;
    the posterior mean of b under these weights (softmax of L, negligible ones dropped) gives
    ``k = mean log1p(-b x)``, ``sigma = -k/b`` and finally ``k <- (n k + 5) / (n + 10)``.
    Cost O(N n sqrt(n)).
    """
    x = np.asarray(exceedances, dtype=np.float64)
    n = x.shape[1]
    m_est = 30 + int(math.sqrt(n))
    i = np.arange(1, m_est + 1, dtype=np.float64)
    quartile = x[:, int(n / 4 + 0.5) - 1]
    b = 1.0 / x[:, -1:] + (1.0 - np.sqrt(m_est / (i - 0.5)))[None, :] / (_PRIOR_BS * quartile[:, None])
    k_b = np.log1p(-b[:, :, None] * x[:, None, :]).mean(axis=2)
    profile = n * (np.log(-b / k_b) - k_b - 1.0)
    # Weights of the grid points: a softmax of the profile log-likelihood, formed stably.
    weights = np.exp(profile - profile.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    # As in PSIS: grid points with negligible weight are dropped before renormalising.
    weights = np.where(weights >= 10 * np.finfo(np.float64).eps, weights, 0.0)
    weights /= weights.sum(axis=1, keepdims=True)
    b_post = (b * weights).sum(axis=1)
    k_post = np.log1p(-b_post[:, None] * x).mean(axis=1)
    sigma = -k_post / b_post
    k_post = (n * k_post + _PRIOR_K_WEIGHT * 0.5) / (n + _PRIOR_K_WEIGHT)
    return k_post, sigma


def _khat_rows(rows: np.ndarray) -> np.ndarray:
    n_rows, s = rows.shape
    out = np.full(n_rows, math.nan)
    m = tail_length(s)
    if m < MIN_TAIL_LENGTH or n_rows == 0:
        return out
    finite_any = np.isfinite(rows).any(axis=1)
    shifted = rows - np.where(finite_any, rows.max(axis=1, initial=-math.inf), 0.0)[:, None]
    top = np.sort(np.partition(shifted, s - m - 1, axis=1)[:, s - m - 1 :], axis=1)  # ascending, m + 1 values
    cutoff = np.maximum(top[:, 0], _LOG_TINY)
    # Exceedances in units of the threshold weight: expm1 keeps the small ones exact and the
    # fit does not depend on the unit.
    with np.errstate(invalid="ignore"):
        y = np.expm1(top[:, 1:] - cutoff[:, None])
    regular = finite_any & (y > 0).all(axis=1)
    if regular.any():
        out[regular] = gpd_fit(y[regular])[0]
    # Ties at the threshold (or -inf entries) shorten the tail: such rows are fitted one by one.
    for r in np.flatnonzero(finite_any & ~regular):
        yr = y[r][y[r] > 0]
        if yr.size >= MIN_TAIL_LENGTH:
            out[r] = gpd_fit(yr[None, :])[0][0]
    return out


def psis_khat(log_w: Any) -> Any:
    """Pareto k-hat of the importance weights of each datapoint (PSIS diagnostic).

    Parameters
    ----------
    log_w : Tensor or ndarray, shape (..., K)
        Log importance weights; ``-inf`` is a zero weight.

    Returns
    -------
    Tensor or ndarray, shape (...), float64
        Estimated GPD shape of the upper tail of the weights. ``nan`` where it cannot be
        estimated: fewer than 5 tail weights (always for ``K <= 20``, or when most weights are
        zero or tied) or a row of all ``-inf``; one :class:`UserWarning` names those rows.

    Notes
    -----
    Thresholds: :data:`KHAT_GOOD` (0.5), :data:`KHAT_BAD` (0.7) and the sample-size-dependent
    :func:`khat_threshold`. The tail is the ``ceil(min(K/5, 3 sqrt(K)))`` largest weights,
    fitted by :func:`gpd_fit` (Zhang & Stephens 2009 with the prior of Vehtari et al.).
    Shifting all log-weights of a row by a constant does not change k-hat. Cost O(K) per row
    for the tail selection plus O(K^0.75) for the fit.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> log_w = np.log(rng.pareto(1 / 0.8, size=(4, 5000)) + 1.0)  # a Pareto tail with k = 0.8
    >>> khat = psis_khat(log_w)
    >>> bool(np.all(np.abs(khat - 0.8) < 0.3))
    True
    """
    rows, kind = as_rows(log_w)
    out = _khat_rows(rows)
    bad = np.isnan(out)
    if rows.shape[0] and bad.any():
        warnings.warn(
            f"PSIS k-hat is nan in {format_positions(bad, kind.batch_shape)}: fewer than {MIN_TAIL_LENGTH} distinct positive "
            f"tail weights among K = {rows.shape[1]} (the tail is the ceil(min(K/5, 3 sqrt(K))) largest); "
            + ("use K >= 21 samples to get a k-hat" if rows.shape[1] <= 20 else
               "the largest weights are tied: all equal (the best case, ESS = K; nothing to fit) or mostly zero "
               "(check those rows' ESS)"),
            KhatWarning,
            stacklevel=user_stacklevel(),  # the user's line, not evalkit's caller inside estimate/sweep
        )
    return kind.restore(out)
