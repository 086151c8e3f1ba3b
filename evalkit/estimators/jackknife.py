r"""Exact generalised-jackknife (JVI) estimates of log p(x) from log-weights.

For one datapoint with weights :math:`w_1..w_K` (log-weights ``l_i = log w_i``) the order-m
jackknife variational inference estimate of Nowozin (2018) [1]_ is the generalised jackknife
of Sharot (1976) [2]_ applied to the IWAE estimates of all sub-sample sizes:

.. math::

    \mathrm{JVI}_m = \sum_{j=0}^{m} c(K, m, j)\, \bar L_{K-j}, \qquad
    c(K, m, j) = \frac{(-1)^j (K-j)^m}{(m-j)!\, j!},

where :math:`\bar L_{K-j}` is the IWAE estimate :math:`\log \frac{1}{K-j}\sum_{i\notin R} w_i`
averaged over **all** :math:`\binom{K}{j}` removed sets R of size j (no random subsets).
``sum_j c_j = 1`` and ``sum_j c_j (K-j)^{-r} = 0`` for r = 1..m, which removes the
``O(K^-1) .. O(K^-m)`` terms of the IWAE bias [1]_.

How it is computed (DESIGN.md, "Estimators" and "Conditioning")
-----------------------------------------------------------------
The coefficients grow like ``K^m / m!`` (2.6e16 for K = 5000, m = 5) with alternating signs,
so ``sum_j c_j Lbar_{K-j}`` in float64 cancels catastrophically. Everything here computes
``JVI_m - IWAE_K = sum_j c_j A_j`` with

.. math::

    A_j = \bar L_{K-j} - \mathrm{IWAE}_K = \operatorname{mean}_{|R|=j} \log(1 - D_R/(K-j)),
    \quad D_R = \sum_{i\in R} \delta_i, \quad \delta_i = K \tilde w_i - 1,

and expands the logarithm so that every j-dependence is an exact rational function of j; the
sums over j are done in exact rational arithmetic (:class:`fractions.Fraction`) once per
``(K, m)`` and cached, and only then multiplied by floating-point data terms, which are all of
moderate size. Four routes, chosen per row:

* **order 1** -- exact O(K) leave-one-out: ``log(1 - delta_i/(K-1))`` by ``log1p`` for light
  weights, and for the (at most one) weight with normalised weight above about 1/2 from the
  log-sum of all the other weights (the exact leave-one-out mass, never ``S - w_i``); the
  linear term, which sums to zero, is removed before summing. No subtraction of large numbers,
  no epsilon guard.
* **light series** (no dominant weights; vectorised over rows) -- with ``x_i = delta_i / K``,
  ``E_{|R|=j}[D_R^k] = sum_d (j)_d/(K)_d Q_{k,d}`` where ``Q_{k,d} = K^k Q'_{k,d}`` and
  ``Q'_{k,d}`` is the sum over k-tuples of indices with exactly d distinct values of
  ``prod x``; ``sum_k Q'_{k,d} t^k/k! = e_d(e^{t x_1}-1, ..., e^{t x_K}-1)`` is computed from
  the power sums ``P_a = sum_i x_i^a`` by Newton's identities (the power sums of
  ``e^{t x}-1`` have exact Stirling-number coefficients). Then
  ``JVI_m - IWAE_K = -sum_{k>=2} sum_d G(K,m,k,d) Q'_{k,d}`` with
  ``G = K^k/(k (K)_d) * sum_j c_j (j)_d (K-j)^{-k}`` exact.
* **heavy/light series** (a few dominant weights) -- the h largest weights form H and every
  removed subset ``R_H`` of H with ``|R_H| <= m`` is enumerated; the rest is the light series
  above, now in ``y = (j + E)/z`` with ``E`` the centred light sum and
  ``z = K_L + |R_H| + W_{H\R_H}/mu_L`` (remaining masses are always added up directly, never
  obtained as ``S - W``). Hypergeometric probabilities of ``|R_H|`` given j and the powers of j
  are combined with ``c_j`` exactly.
* **enumeration** (small K, where no series converges) -- all subsets, each term as
  ``log1p(-t) + t`` (t = D_R/(K-j)), exact remaining mass for dominant removals. For very
  short rows (``sum_{j<=m} C(K, j) <= 256``, e.g. a sweep's k = 5..20 at order 2) it is the
  first route for every row: cheaper than any series there.

Every route is vectorised over rows (the heavy/light route over rows that share the heavy-set
size h and the series length r), and a row's value and error estimate do not depend on which
other rows are evaluated with it, so callers may split rows into blocks freely.

Each route returns an error estimate: the truncation of the series is bounded rigorously by
``sum_j |c_j| tau^(r+1) / ((r+1)(1-tau))`` (tau bounds |y| over all subsets); rounding errors
are bounded by a running-error analysis (the same recurrences on absolute values). When the
estimate exceeds ``1e-9 * max(1, |JVI|)`` an :class:`AccuracyWarning` states the attainable
accuracy; rows where no route applies within the cost caps are ``nan`` with a warning.

Cost per datapoint: O(K r) for the power sums (r the series length, typically 10-30) plus
O(m^2 r^2) for the recurrences, plus ``O(C(h, <=m) r)`` for the heavy subsets; memory O(K).
The exact coefficient tables cost O(m^2 r^2) rational operations once per (K, m, h).

References
----------
.. [1] S. Nowozin, "Debiasing evidence approximations: on importance-weighted autoencoders
   and jackknife variational inference", ICLR 2018.
.. [2] T. Sharot, "The generalized jackknife: finite samples and subsample sizes",
   JASA 71 (1976) 451-454.
.. [3] Y. Burda, R. Grosse, R. Salakhutdinov, "Importance weighted autoencoders", ICLR 2016.

Where the parts live: this module holds the public functions, the checks and the choice of route
per row (accepting a route's result only when its error estimate is small); the exact coefficient
tables, truncation bounds and power/tuple sums are :mod:`evalkit.estimators._jvi_series`; the
leave-one-out, explicit-enumeration and heavy/light routes and the row planner are
:mod:`evalkit.estimators._jvi_routes`.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, List, Tuple

import numpy as np

from ._jvi_routes import (_ENUM_CAP, _RHO_TARGET, _SUBSET_CAP, _enumerate_rows, _enumeration_size, _heavy_light_part,  # noqa: F401
                          _heavy_light_parts, _heavy_row, _heavy_rows, _leave_one_out, _plan_rows)
from ._jvi_series import (_EPS, _bucket, _buckets_needed, _light_rows, _row_chunks, _terms_needed,  # noqa: F401
                          _truncation_bound, _truncation_bounds, _tuple_sums, jackknife_coefficients)
from .arraykind import as_rows, format_positions
from ..errors import InputError
from .rowreduce import row_max, row_min, row_sum

__all__ = ["AccuracyWarning", "jackknife_coefficients", "jvi", "jvi_with_error", "ACCURACY_RTOL"]

#: Relative accuracy promised for every returned JVI value: |error| <= ACCURACY_RTOL * max(1, |value|).
ACCURACY_RTOL = 1e-9

# Longest series that the first, vectorised pass of the light route tries on every row.
_R_FAST = 64
# Enumeration is used for every row that the light route does not take while sum_{j<=m} C(K, j)
# stays below this (and below _jvi_routes._ENUM_CAP).
_ENUM_FAST = 2_048
# Below this many subsets per row, enumeration is cheaper than the light series for every row
# (measured on [N, k] groups of a digits pool: k = 5 / 10 / 20 at order 2 run 2-3x faster
# enumerated; at k = 50, 1276 subsets, the two cost the same).
_ENUM_FIRST = 256
# Orders above this use enumeration only (the exact tables cost O(m^3 r) rational operations).
_SERIES_MAX_ORDER = 20
# A route's result is accepted when its error estimate is below this fraction of the promise.
_ACCEPT = 0.1


class AccuracyWarning(UserWarning):
    """A JVI value could not be computed to the documented accuracy, or is undefined."""


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def _check_order(order: Any, k: int) -> int:
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)):
        raise InputError(f"JVI order must be a non-negative int, got {order!r}; pass e.g. order=1")
    order = int(order)
    if order < 0:
        raise InputError(f"JVI order must be >= 0, got {order}; order 0 is IWAE")
    if order >= k:
        raise InputError(
            f"JVI order {order} needs K >= {order + 1} samples per row, got K = {k}: the jackknife removes up "
            f"to {order} samples and at least one must remain; lower the order or draw more samples"
        )
    return order


def _extremes(delta: np.ndarray, order: int) -> Tuple[np.ndarray, np.ndarray]:
    """Sums of the b largest and of the b smallest entries of each row, b = 1..order."""
    k = delta.shape[1]
    top = -np.sort(-np.partition(delta, k - order, axis=1)[:, k - order :], axis=1)
    bottom = np.sort(np.partition(delta, order - 1, axis=1)[:, :order], axis=1)
    return np.cumsum(top, axis=1), np.cumsum(bottom, axis=1)


def _jvi_rows(rows: np.ndarray, order: int) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """JVI of order m for every row of a float64 (N, K) array: values, error estimates, notes."""
    n_rows, k = rows.shape
    notes: List[str] = []
    finite = np.isfinite(rows)
    n_pos = row_sum(finite)
    largest = row_max(rows)
    shift = np.where(n_pos > 0, largest, 0.0)
    shifted = rows - shift[:, None]  # <= 0; -inf stays -inf (a zero weight)
    total = row_sum(np.exp(shifted))
    with np.errstate(divide="ignore"):
        log_total = np.log(total)
    iwae = shift + log_total - math.log(k)
    error = 2.0 * _EPS * (np.abs(shift) + np.abs(log_total) + math.log(k))
    value = iwae.copy()
    empty = n_pos == 0
    value[empty] = -math.inf
    error[empty] = 0.0
    if order == 0 or n_rows == 0:
        return value, error, notes
    undefined = (n_pos > 0) & (n_pos <= order)
    if undefined.any():
        value[undefined] = math.nan
        notes.append("undefined")
    equal = (n_pos == k) & (largest == row_min(rows))
    idx = np.flatnonzero(~(empty | undefined | equal))
    if idx.size == 0:
        return value, error, notes
    correction = np.zeros(n_rows)
    corr_err = np.zeros(n_rows)

    if order == 1 and k == 2:
        # Closed form (a sweep's k = 2 cell has N K_max / 2 rows): with the larger log-weight
        # shifted to 0 and the other at -d, JVI_1 - IWAE_2 = IWAE_2 - mean(l) = d/2 + log1p(e^-d) - log 2.
        # Its absolute rounding error is a few eps (the terms are O(1 + d)), far inside the promise.
        d = -row_min(shifted[idx])
        correction[idx] = 0.5 * d + np.log1p(np.exp(-d)) - math.log(2.0)
        corr_err[idx] = 4.0 * _EPS * (d + 2.0)
    elif order == 1:
        correction[idx], corr_err[idx] = _leave_one_out(shifted[idx], total[idx])
    elif order > _SERIES_MAX_ORDER and _enumeration_size(k, order) > _ENUM_CAP:
        correction[idx], corr_err[idx] = math.nan, math.inf
        notes.append(
            f"fail: order {order} exceeds the largest order ({_SERIES_MAX_ORDER}) of the series routes and a full "
            f"enumeration needs more than {_ENUM_CAP} subsets per row"
        )
    else:
        _series_and_enumeration(shifted, total, iwae, n_pos, idx, order, correction, corr_err, notes)
    value[idx] = iwae[idx] + correction[idx]
    error[idx] = error[idx] + corr_err[idx]
    return value, error, notes


def _series_and_enumeration(shifted, total, iwae, n_pos, idx, order, correction, corr_err, notes) -> None:
    """Orders >= 2: route every row in ``idx`` and fill ``correction`` (JVI - IWAE) and ``corr_err``."""
    k = shifted.shape[1]

    def scale_of(rr: np.ndarray) -> np.ndarray:  # max(1, |value|), with nan (no value yet) as 1
        return np.maximum(np.nan_to_num(np.abs(iwae[rr] + correction[rr]), nan=1.0), 1.0)

    correction[idx], corr_err[idx] = math.nan, math.inf
    pending = idx
    series_ok = order <= _SERIES_MAX_ORDER
    enumerated = _enumeration_size(k, order) <= _ENUM_FIRST
    if enumerated:
        # 0. Short rows (a sweep at small k): enumerating all subsets is the cheapest route.
        _run_enumeration(shifted, total, pending, order, correction, corr_err)
        pending = pending[~(corr_err[pending] <= _ACCEPT * ACCURACY_RTOL * scale_of(pending))]
    tau_of = np.full(shifted.shape[0], math.nan)  # bound of the light route, per row
    if series_ok and pending.size:
        wn = np.exp(shifted[pending]) / total[pending, None]  # normalised weights
        top, bottom = _extremes(k * wn - 1.0, order)
        b = np.arange(1, order + 1)
        tau0 = (np.maximum(np.abs(top), np.abs(bottom)) / (k - b)[None, :]).max(axis=1)
        # 1. Light route, vectorised, for rows without dominant weights (tau0 <= 1/4), and, where
        #    enumeration is expensive, for every row whose series has at most _R_FAST terms;
        #    rows are grouped by series length so that one wide row does not lengthen all
        #    series. Rows whose error estimate misses the target go on to the next steps.
        longest = _R_FAST if _enumeration_size(k, order) > _ENUM_FAST else 0
        buckets = _buckets_needed(tau0, k, order)
        fast = (buckets > 0) & ((tau0 <= _RHO_TARGET) | (buckets <= longest))
        _run_light_arrays(shifted, total, pending[fast], tau0[fast], buckets[fast], k, order, correction, corr_err)
        tau_of[pending] = tau0
        pending = pending[~(corr_err[pending] <= _ACCEPT * ACCURACY_RTOL * scale_of(pending))]
    # 2. Small K: enumerate all subsets, vectorised.
    if pending.size and not enumerated and _enumeration_size(k, order) <= _ENUM_FAST:
        _run_enumeration(shifted, total, pending, order, correction, corr_err)
        pending = pending[~(corr_err[pending] <= _ACCEPT * ACCURACY_RTOL * scale_of(pending))]
    # 3. Per-row plans (dominant weights, slowly converging series), tried in rounds: each
    #    row's next candidate runs only if the previous one missed the accuracy target.
    if pending.size and series_ok:
        plan_rows = pending
        ls_sorted = -np.sort(-shifted[plan_rows], axis=1)
        tau_c, h_c, r_c = _plan_rows(ls_sorted, k, order, n_pos[plan_rows], tau_of[plan_rows])
        for attempt in range(3):
            live = np.flatnonzero(np.isin(plan_rows, pending) & (r_c[:, attempt] > 0))
            if live.size == 0:
                break
            light, heavy = live[h_c[live, attempt] == 0], live[h_c[live, attempt] > 0]
            _run_light_arrays(shifted, total, plan_rows[light], tau_c[light, attempt], r_c[light, attempt], k,
                              order, correction, corr_err)
            _run_heavy_arrays(ls_sorted[heavy], plan_rows[heavy], h_c[heavy, attempt], tau_c[heavy, attempt],
                              r_c[heavy, attempt], k, order, correction, corr_err)
            pending = pending[~(corr_err[pending] <= _ACCEPT * ACCURACY_RTOL * scale_of(pending))]
    # 4. Enumeration as a last resort where affordable; otherwise the best value stands (a
    #    warning reports its accuracy) or the row fails.
    if pending.size and _ENUM_FAST < _enumeration_size(k, order) <= _ENUM_CAP:
        _run_enumeration(shifted, total, pending, order, correction, corr_err)
    failed = idx[np.isnan(correction[idx])]
    if failed.size:
        notes.append(
            f"fail: no series converged with at most {_SUBSET_CAP} heavy subsets, and a full enumeration "
            f"needs more than {_ENUM_CAP} subsets per row"
            if _enumeration_size(k, order) > _ENUM_CAP
            else "fail: no route converged"
        )


def _keep(rows_idx, value, error, correction, corr_err) -> None:
    """Store results where they improve on what is there (a smaller error estimate, or none yet)."""
    better = (error < corr_err[rows_idx]) | np.isnan(correction[rows_idx])
    correction[rows_idx] = np.where(better, value, correction[rows_idx])
    corr_err[rows_idx] = np.where(better, error, corr_err[rows_idx])


def _run_light_arrays(shifted, total, rows, taus, buckets, k, order, correction, corr_err) -> None:
    """Light route for rows ``rows`` with bounds ``taus`` and series lengths ``buckets``, batched by length."""
    for r_max in np.unique(buckets).tolist():
        members = buckets == r_max
        sel = rows[members]
        x = np.exp(shifted[sel]) / total[sel, None] - 1.0 / k
        v, e = _light_rows(x, k, order, r_max)
        e = e + _truncation_bounds(taus[members], np.full(sel.size, r_max), k, order)
        _keep(sel, v, e, correction, corr_err)


def _run_heavy_arrays(ls_sorted, rows, hs, taus, buckets, k, order, correction, corr_err) -> None:
    """Heavy/light route for ``rows`` (log-weights ``ls_sorted`` sorted descending), batched by (h, r)."""
    if rows.size == 0:
        return
    for h, r_max in sorted(set(zip(hs.tolist(), buckets.tolist()))):
        members = (hs == h) & (buckets == r_max)
        ls = ls_sorted[members]
        q, q_abs = _tuple_sums(_heavy_light_parts(ls, h)[1], order, r_max)
        v, e = _heavy_rows(ls, k, order, h, r_max, taus[members], q, q_abs)
        _keep(rows[members], v, e, correction, corr_err)


def _run_enumeration(shifted, total, rows_idx, order, correction, corr_err) -> None:
    for chunk in _row_chunks(len(rows_idx), 1, 4096):
        sel = rows_idx[chunk]
        v, e = _enumerate_rows(shifted[sel], total[sel], order)
        _keep(sel, v, e, correction, corr_err)




def _emit(notes: List[str], value: np.ndarray, error: np.ndarray, order: int, k: int, kind, stacklevel: int) -> None:
    """One warning per kind of problem, naming the rows."""
    if "undefined" in notes:
        bad = np.isnan(value) & np.isfinite(error)
        warnings.warn(
            f"JVI of order {order} is undefined (nan) in {format_positions(bad, kind.batch_shape)}: they have at most "
            f"{order} finite log-weights, so some leave-{order}-out subsets have zero total weight; use a lower order "
            f"or more samples",
            AccuracyWarning,
            stacklevel=stacklevel,
        )
    failed = [n for n in notes if n.startswith("fail: ")]
    if failed:
        bad = np.isinf(error)
        warnings.warn(
            f"JVI of order {order} could not be computed (nan) in {format_positions(bad, kind.batch_shape)}: "
            f"{failed[0][6:]}; use a lower order",
            AccuracyWarning,
            stacklevel=stacklevel,
        )
    scale = np.maximum(np.abs(value), 1.0)
    with np.errstate(invalid="ignore"):
        loose = np.isfinite(value) & np.isfinite(error) & (error > ACCURACY_RTOL * scale)
    if loose.any():
        worst = float((error[loose] / scale[loose]).max())
        biggest = max(abs(float(c)) for c in jackknife_coefficients(k, order))
        warnings.warn(
            f"JVI of order {order} is accurate only to about {worst:.1e} * max(1, |value|) (not {ACCURACY_RTOL:g}) in "
            f"{format_positions(loose, kind.batch_shape)}: at K = {k} the jackknife coefficients reach {biggest:.1e} "
            f"and amplify rounding; use a lower order",
            AccuracyWarning,
            stacklevel=stacklevel,
        )


def jvi_with_error(log_w: Any, order: int) -> Tuple[Any, Any]:
    """JVI estimates with an a-posteriori error estimate for each row.

    Parameters
    ----------
    log_w : Tensor or ndarray, shape (..., K)
    order : int
        Jackknife order m, ``0 <= m < K``.

    Returns
    -------
    value, error : same kind as ``log_w``, shape (...)
        ``error`` bounds ``|value - JVI_m|`` under standard rounding-error analysis plus a
        rigorous bound on the series truncation (``inf`` where no value could be computed).
        No warning is issued; :func:`jvi` warns where ``error > 1e-9 * max(1, |value|)``.
    """
    rows, kind = as_rows(log_w)
    order = _check_order(order, rows.shape[1])
    value, error, _ = _jvi_rows(rows, order)
    return kind.restore(value), kind.restore(error)


def jvi(log_w: Any, order: int) -> Any:
    """Jackknife variational inference estimate of order m (exact over all subsets).

    See the module docstring for the formula and method; :func:`evalkit.estimators.jvi` is the
    documented public entry point.
    """
    return _jvi(log_w, order, stacklevel=4)


def _jvi(log_w: Any, order: int, stacklevel: int) -> Any:
    """:func:`jvi` with warnings attributed ``stacklevel`` frames up from :func:`_emit`."""
    rows, kind = as_rows(log_w)
    order = _check_order(order, rows.shape[1])
    value, error, notes = _jvi_rows(rows, order)
    _emit(notes, value, error, order, rows.shape[1], kind, stacklevel)
    return kind.restore(value)
