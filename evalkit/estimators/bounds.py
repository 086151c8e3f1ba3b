"""The estimators themselves: ELBO, IWAE, JVI (see :mod:`.jackknife`), DVI, ESS and their
Monte Carlo variances, as pure functions ``log_w (..., K) -> (...)`` (contract in
:mod:`evalkit.estimators`).
"""
from __future__ import annotations

import math
from typing import Any, Tuple

import numpy as np

from .arraykind import as_rows
from ..errors import InputError
from .jackknife import _jvi
from .rowreduce import row_any, row_max, row_sum

def _normalised(rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shift each row by its maximum: (shifted log-weights, row max, sum of weights, empty-row mask).

    After the shift every weight is in [0, 1] and the largest is 1, so sums neither overflow
    nor underflow to zero.
    """
    empty = ~row_any(np.isfinite(rows))
    top = np.where(empty, 0.0, row_max(rows))
    shifted = rows - top[:, None]
    total = row_sum(np.exp(shifted))
    return shifted, top, total, empty


def _iwae_rows(rows: np.ndarray) -> np.ndarray:
    _, row_max, total, empty = _normalised(rows)
    with np.errstate(divide="ignore"):
        out = row_max + np.log(total) - math.log(rows.shape[1])
    return np.where(empty, -math.inf, out)


def _delta_square_sum(rows: np.ndarray) -> np.ndarray:
    """``sum_i delta_i^2`` with ``delta_i = K w~_i - 1``: equals ``K (K sum w~^2 - 1)`` without the subtraction.

    nan for a row of all ``-inf`` (no normalised weights exist).
    """
    shifted, _, total, _ = _normalised(rows)
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = rows.shape[1] * np.exp(shifted) / total[:, None] - 1.0
    return np.einsum("ij,ij->i", delta, delta)


def elbo(log_w: Any) -> Any:
    """Evidence lower bound: the mean log-weight of each row.

    Parameters
    ----------
    log_w : Tensor or ndarray, shape (..., K)

    Returns
    -------
    Tensor or ndarray, shape (...)
        ``ELBO = (1/K) sum_i log w_i``; ``-inf`` if any log-weight is ``-inf``.

    Notes
    -----
    An unbiased estimate of ``E_q[log w] = log p(x) - KL(q || p(z|x))``, so a lower bound on
    ``log p(x)`` in expectation whatever K. Cost O(K).
    """
    rows, kind = as_rows(log_w)
    return kind.restore(rows.mean(axis=1))


def iwae(log_w: Any) -> Any:
    """Importance-weighted (IWAE) estimate: the log of the mean weight of each row.

    Parameters
    ----------
    log_w : Tensor or ndarray, shape (..., K)

    Returns
    -------
    Tensor or ndarray, shape (...)
        ``IWAE_K = log (1/K) sum_i w_i = logsumexp(log_w) - log K``; ``-inf`` for a row of
        all ``-inf``.

    Notes
    -----
    Computed as ``max + log sum exp(log_w - max) - log K`` in float64 (no overflow, at most
    one weight equal to 1 after the shift). ``E[IWAE_K] <= log p(x)``, increasing in K, with
    bias ``-mu2/(2 K mu^2) + O(K^-2)`` (Burda et al. 2016 [1]_; Nowozin 2018 [2]_). Cost O(K).

    Examples
    --------
    >>> import numpy as np
    >>> lw = np.array([[-1000.0, -1001.0, -1002.0]])
    >>> round(float(iwae(lw)[0]), 6)    # naive np.log(np.mean(np.exp(lw))) gives -inf
    -1000.691006
    """
    rows, kind = as_rows(log_w)
    return kind.restore(_iwae_rows(rows))


def jvi(log_w: Any, order: int) -> Any:
    r"""Jackknife variational inference (JVI) estimate of order m, exact over all subsets.

    Parameters
    ----------
    log_w : Tensor or ndarray, shape (..., K)
    order : int
        Jackknife order m, ``0 <= m < K``; ``order = 0`` is :func:`iwae`.

    Returns
    -------
    Tensor or ndarray, shape (...)
        ``JVI_m = sum_{j=0}^m c(K, m, j) Lbar_{K-j}`` with
        ``c(K, m, j) = (-1)^j (K-j)^m / ((m-j)! j!)`` and ``Lbar_{K-j}`` the IWAE estimate
        averaged over **all** ``C(K, j)`` subsets of size K - j. ``-inf`` for a row of all
        ``-inf``; ``nan`` (with an :class:`AccuracyWarning`) for a row with at most m finite
        log-weights, where some leave-j-out subsets have zero weight and the sum is undefined.

    Raises
    ------
    InputError
        ``order`` is not an int with ``0 <= order < K``.

    Warns
    -----
    AccuracyWarning
        Where the result cannot be guaranteed to ``1e-9 * max(1, |value|)`` (the message gives
        the attainable accuracy), or cannot be computed at all (nan).

    Notes
    -----
    Nowozin (2018) [2]_, the generalised jackknife of Sharot (1976): the bias falls from
    O(1/K) to O(K^-(m+1)) while the leading variance ``mu2/(K mu^2)`` is unchanged. The
    coefficients grow like ``K^m/m!`` with alternating signs, so the direct sum cancels
    catastrophically; this implementation computes ``JVI_m - IWAE_K`` from small quantities
    (leave-one-out ``log1p`` for m = 1; for m >= 2 power-sum series whose coefficients are
    combined over j in exact rational arithmetic, with dominant weights enumerated and, for
    small K, all subsets) -- see :mod:`evalkit.estimators.jackknife`. Cost O(K) for m = 1 and
    O(K r + m^2 r^2) per row for m >= 2 (r, the series length, is typically 10 to 30),
    memory O(K) per row; :func:`jvi_with_error` also returns the per-row error estimate.

    Examples
    --------
    >>> import numpy as np
    >>> lw = np.log(np.random.default_rng(0).gamma(1.0, size=(3, 5000)))
    >>> d = jvi(lw, 3) - iwae(lw)   # shape (3,); about mu2/(2 K mu^2) = 1/(2K) = 1e-4 here
    >>> bool(np.all(np.abs(d - 1e-4) < 3e-5))
    True
    """
    return _jvi(log_w, order, stacklevel=4)


def dvi(log_w: Any) -> Any:
    r"""Delta-method debiased IWAE (DVI) estimate.

    Parameters
    ----------
    log_w : Tensor or ndarray, shape (..., K), K >= 2

    Returns
    -------
    Tensor or ndarray, shape (...)
        ``DVI = IWAE_K + mu2_hat / (2 K mu_hat^2)`` with
        ``mu2_hat / mu_hat^2 = K/(K-1) (K sum_i w~_i^2 - 1)`` (w~ the normalised weights),
        i.e. ``IWAE_K + sum_i delta_i^2 / (2 K (K-1))``, ``delta_i = K w~_i - 1``; ``-inf``
        for a row of all ``-inf``.

    Notes
    -----
    Removes the leading ``-mu2/(2 K mu^2)`` term of the IWAE bias (Nowozin 2018 [2]_, Sec. 4),
    leaving O(K^-2). ``sum delta^2`` is a sum of squares, so no ``K sum w~^2 - 1`` subtraction
    is formed. Cost O(K).
    """
    rows, kind = as_rows(log_w)
    k = rows.shape[1]
    if k < 2:
        raise InputError(f"dvi needs K >= 2 samples per row to estimate the weight variance, got K = {k}; draw more samples")
    out = _iwae_rows(rows) + _delta_square_sum(rows) / (2.0 * k * (k - 1))
    empty = ~np.isfinite(rows).any(axis=1)  # there the correction is 0/0
    return kind.restore(np.where(empty, -math.inf, out))


def ess(log_w: Any) -> Any:
    """Effective sample size ``1 / sum_i w~_i^2`` of each row's normalised weights.

    Parameters
    ----------
    log_w : Tensor or ndarray, shape (..., K)

    Returns
    -------
    Tensor or ndarray, shape (...)
        Between 1 (one weight carries everything) and K (equal weights); 0 for a row of all
        ``-inf`` (no sample carries weight).

    Notes
    -----
    Computed as ``(sum w)^2 / sum w^2`` after shifting by the row maximum. Cost O(K).
    """
    rows, kind = as_rows(log_w)
    shifted, _, total, empty = _normalised(rows)
    w = np.exp(shifted)
    with np.errstate(invalid="ignore"):
        out = total * total / np.einsum("ij,ij->i", w, w)
    return kind.restore(np.where(empty, 0.0, out))


def elbo_mc_variance(log_w: Any) -> Any:
    """Estimated Monte Carlo variance of :func:`elbo` at this K: ``var(log w, ddof=1) / K``.

    ``nan`` for K = 1 (one sample has no spread) and for rows with a ``-inf`` log-weight.
    """
    rows, kind = as_rows(log_w)
    k = rows.shape[1]
    if k < 2:
        return kind.restore(np.full(rows.shape[0], math.nan))
    finite = np.isfinite(rows).all(axis=1)
    with np.errstate(invalid="ignore"):
        out = rows.var(axis=1, ddof=1) / k
    return kind.restore(np.where(finite, out, math.nan))


def iwae_mc_variance(log_w: Any) -> Any:
    r"""Delta-method Monte Carlo variance of IWAE_K (and of DVI / JVI_m) at this K.

    Returns ``mu2_hat / (K mu_hat^2) = (K sum_i w~_i^2 - 1) / (K - 1)``, computed as
    ``sum_i delta_i^2 / (K (K-1))``. This is the leading ``O(1/K)`` term of
    ``Var[IWAE_K] = mu2/(K mu^2) + O(K^-2)`` (Nowozin 2018, Prop. 2); debiasing (DVI, JVI)
    changes only higher-order terms of the variance, so the same leading term serves them.
    ``nan`` for K = 1 and for a row of all ``-inf``.
    """
    rows, kind = as_rows(log_w)
    k = rows.shape[1]
    if k < 2:
        return kind.restore(np.full(rows.shape[0], math.nan))
    out = _delta_square_sum(rows) / (k * (k - 1))
    return kind.restore(out)
