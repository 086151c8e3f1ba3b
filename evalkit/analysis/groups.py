"""Grouped evaluation of estimators over K from one pool of log-weights: the K ladder, the groups, bias and variance.

Pure functions of a ``[N, K_max]`` log-weight matrix (``log w[n, i]``, one row per datapoint,
i.i.d. columns): no model, no devices, no I/O. :func:`evalkit.analysis.sweep` strings them together
with :mod:`.asymptotics` and :mod:`.weights`.

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
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

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


def shared_columns_mc_se(group_sums: np.ndarray, n: int) -> float:
    """The Monte Carlo SE of the dataset-mean estimate when every row uses the same columns.

    Parameters
    ----------
    group_sums : ndarray, shape (G,)
        Each group's per-datapoint estimates summed over the ``n`` rows.
    n : int
        Rows (datapoints).

    Returns
    -------
    float
        ``sd(D_g) / sqrt(G)`` with ``D_g = group_sums[g] / n`` the dataset mean on group g; NaN
        when ``G < 2``.

    Notes
    -----
    The estimate at k is ``mean_g D_g``. The groups are disjoint sets of columns, each column an
    independent sample (a Bayesian network's weight draw), so the ``D_g`` are independent and
    identically distributed whatever the correlation between rows, and
    ``Var(mean_g D_g) = Var(D) / G``. The independent-rows formula ``sqrt(sum_n v_n / G) / n``
    leaves out the rows' covariances, which shared columns make positive: it understated the MC
    SE of a Bayesian network's predictive by about half.
    """
    d = np.asarray(group_sums, dtype=np.float64) / int(n)
    if d.size < 2:
        return float("nan")
    with np.errstate(invalid="ignore"):
        return float(np.std(d, ddof=1) / math.sqrt(d.size))


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
