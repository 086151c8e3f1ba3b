r"""Monte Carlo standard error of a dataset mean when all rows share the same K samples.

A Bayesian network's predictive matrix ``log_w[n, k] = log p(y_n | x_n, w_k)`` uses the same
weight samples ``w_1..w_K`` in every row, so the rows' Monte Carlo errors are correlated (a
weight sample that happens to fit the data well raises every row at once). The usual formula
for independent rows (each datapoint with its own samples, as in the importance-sampling
engine),

.. math:: \mathrm{SE}_{\text{indep}} = \frac{1}{N} \sqrt{\textstyle\sum_n \widehat{\mathrm{Var}}_n},

adds per-row variances and omits every covariance; with shared columns it is too small, often
several times (the covariances are mostly positive). :func:`shared_column_mc_se` instead treats
the K columns as the iid units: the dataset-mean estimate
:math:`T(L) = \frac1N \sum_n f(L_{n, \cdot})` is a symmetric function of K iid columns, and the
grouped (delete-d) jackknife over columns estimates its variance, covariances included.
This module is pure: no model, no I/O.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Union

import numpy as np

from .arraykind import as_rows
from ..errors import InputError

DEFAULT_GROUPS = 100
"""Jackknife groups when K > 100 (leave-one-column-out when K <= 100)."""


def shared_column_mc_se(
    log_w: Any,
    estimator_fn: Union[str, Callable[[Any], Any]],
    *,
    groups: Optional[int] = None,
) -> float:
    r"""Return the jackknife Monte Carlo SE of ``mean_n estimator_fn(log_w)[n]`` over shared columns.

    Parameters
    ----------
    log_w : Tensor or ndarray, shape (N, K)
        Row n, column k: the log-weight of datapoint n under sample k, with sample k shared by
        all rows (a predictive matrix); N = 1 (an evidence row) is allowed.
    estimator_fn : str or callable
        An estimator name (``"iwae"``, ``"jvi1"``, ...; :func:`evalkit.estimators.get`) or a
        function ``[N, K'] -> [N]``.
    groups : int, optional
        Number G of jackknife groups, ``2 <= G <= K``. Default: K (leave one column out) when
        K <= 100, else 100. Groups are contiguous column ranges whose sizes differ by at most one.

    Returns
    -------
    float
        .. math::

            \mathrm{SE}_{\text{jack}} = \sqrt{\frac{G - 1}{G} \sum_{g=1}^{G} (T_{(-g)} - \bar T)^2},
            \qquad T_{(-g)} = \frac1N \sum_n f(L_{n, \text{columns} \notin g}),
            \quad \bar T = \frac1G \sum_g T_{(-g)}.

    Notes
    -----
    Cost: G evaluations of the estimator on ``[N, K - K/G]`` columns, O(G N K) for IWAE (and
    G times the estimator's cost in general); memory one copy of the matrix. With G = K and
    iid columns this is the classical jackknife variance of a smooth symmetric statistic
    (Efron & Stein 1981: it is conservative); the grouped version with G fixed is consistent
    as K grows with G - 1 degrees of freedom, so it is itself noisy by about
    ``1 / sqrt(2 (G - 1))`` relative (7% at G = 100). It estimates the spread of the estimate
    around its own expectation; the O(1/K) bias of IWAE is not part of it (use JVI to remove it).
    Compare with the independent-rows formula of :mod:`evalkit.analysis.estimate`
    (``sqrt(sum_n var_n) / N``), which is right only when rows have their own samples.
    """
    rows, _ = as_rows(log_w)
    if rows.ndim != 2:
        raise InputError(f"Expected log_w of shape (N, K), got {tuple(rows.shape)}.")
    k = rows.shape[1]
    g = jackknife_groups(k) if groups is None else groups
    if isinstance(g, bool) or not isinstance(g, int) or not 2 <= g <= k:
        raise InputError(f"Expected argument `groups` to be an int in [2, K={k}], got {groups!r}; K >= 2 is needed for a jackknife.")
    sums = leave_group_out_sums(rows, _resolve(estimator_fn), g)
    return jackknife_se(sums / rows.shape[0])


def jackknife_groups(k: int) -> int:
    """The default number of column groups: K (leave one column out) up to 100, else 100."""
    return k if k <= DEFAULT_GROUPS else DEFAULT_GROUPS


def leave_group_out_sums(rows: Any, fn: Callable[[Any], Any], groups: int) -> np.ndarray:
    """``S[g] = sum_n f(L_{n, columns not in g})`` for G contiguous column groups, shape (G,).

    Rows enter only through this sum, so a consumer can add the sums of blocks of rows and
    finish with :func:`jackknife_se` of ``S / N``: the result is that of the whole matrix.
    """
    k = rows.shape[1]
    bounds = group_bounds(k, groups)
    sums = np.empty(groups)
    for index in range(groups):
        keep = np.r_[0:bounds[index], bounds[index + 1]:k]
        sums[index] = float(np.sum(np.asarray(fn(rows[:, keep]), dtype=np.float64)))
    return sums


def group_bounds(k: int, groups: int) -> np.ndarray:
    """Column boundaries of G contiguous groups whose sizes differ by at most one, shape (G + 1,)."""
    return np.linspace(0, k, groups + 1).round().astype(int)


def leave_group_out_iwae_sums(rows: np.ndarray, groups: int) -> np.ndarray:
    """:func:`leave_group_out_sums` of IWAE in O(N K): no estimator call per group.

    The log-sum-exp of the columns outside group g is ``logaddexp`` of the log-sum-exps of the
    groups before and after it (running ``logaddexp`` from both ends), so nothing is subtracted
    and a dominant weight inside g costs no precision. ``rows``: float64 ``[N, K]``.
    """
    k = rows.shape[1]
    bounds = group_bounds(k, groups)
    per_group = np.stack([_row_logsumexp(rows[:, a:b]) for a, b in zip(bounds[:-1], bounds[1:])], axis=1)
    with np.errstate(invalid="ignore"):
        before = np.logaddexp.accumulate(per_group, axis=1)
        after = np.logaddexp.accumulate(per_group[:, ::-1], axis=1)[:, ::-1]
    outside = np.full_like(per_group, -np.inf)
    outside[:, 1:] = before[:, :-1]
    with np.errstate(invalid="ignore"):
        outside[:, :-1] = np.logaddexp(outside[:, :-1], after[:, 1:])
    return np.sum(outside - np.log(k - np.diff(bounds)), axis=0)


def leave_group_out_elbo_sums(rows: np.ndarray, groups: int) -> np.ndarray:
    """:func:`leave_group_out_sums` of the ELBO (the mean of the other columns) in O(N K)."""
    k = rows.shape[1]
    bounds = group_bounds(k, groups)
    per_group = np.add.reduceat(rows, bounds[:-1], axis=1)
    with np.errstate(invalid="ignore"):  # a -inf log-weight: the ELBO is -inf, its jackknife undefined
        return np.sum((rows.sum(axis=1, keepdims=True) - per_group) / (k - np.diff(bounds)), axis=0)


def _row_logsumexp(rows: np.ndarray) -> np.ndarray:
    top = rows.max(axis=1, keepdims=True)
    top[~np.isfinite(top)] = 0.0
    with np.errstate(divide="ignore"):
        return np.log(np.exp(rows - top).sum(axis=1)) + top[:, 0]


def jackknife_se(leave_out: np.ndarray) -> float:
    """``sqrt((G - 1) / G * sum_g (T_(-g) - mean T)^2)`` from the G leave-group-out estimates."""
    g = len(leave_out)
    return math.sqrt((g - 1) / g * float(np.sum((leave_out - leave_out.mean()) ** 2)))


def independent_rows_mc_se(mc_variance: Any) -> float:
    r"""Return ``sqrt(sum_n var_n) / N``: the MC SE of a dataset mean when rows have independent samples.

    ``mc_variance`` is the per-row Monte Carlo variance (e.g.
    :func:`evalkit.estimators.iwae_mc_variance`). Shown beside :func:`shared_column_mc_se` for
    the contrast; it is wrong (too small) for shared columns.
    """
    values = np.asarray(mc_variance, dtype=np.float64).reshape(-1)
    return math.sqrt(float(values.sum())) / values.size


def _resolve(estimator_fn: Union[str, Callable[[Any], Any]]) -> Callable[[Any], Any]:
    if isinstance(estimator_fn, str):
        from . import get

        return get(estimator_fn).fn
    if not callable(estimator_fn):
        raise InputError(f"Expected `estimator_fn` as an estimator name or a function [N, K] -> [N], got {estimator_fn!r}.")
    return estimator_fn


__all__ = ["shared_column_mc_se", "independent_rows_mc_se", "jackknife_groups", "jackknife_se", "leave_group_out_sums",
           "leave_group_out_elbo_sums", "leave_group_out_iwae_sums", "group_bounds", "DEFAULT_GROUPS"]
