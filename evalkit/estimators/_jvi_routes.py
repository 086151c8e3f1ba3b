"""JVI's routes other than the light series, and the planner that picks a route per row.

* ``_leave_one_out`` -- order 1 in closed form;
* ``_enumerate_rows`` -- explicit enumeration of every subset of up to ``order`` removed samples;
* ``_heavy_rows`` / ``_heavy_row`` -- the heavy/light split: a few large weights enumerated
  exactly, the rest through the light series (:mod:`evalkit.estimators._jvi_series`);
* ``_plan_rows`` -- per row, the series length or heavy-subset count each route needs.

Used by :mod:`evalkit.estimators.jackknife`, which accepts or rejects each route's result.
"""
from __future__ import annotations

import itertools
import math
from functools import lru_cache
from typing import Tuple

import numpy as np

from ._jvi_series import (_BUCKETS, _CACHE_ELEMS, _EPS, _buckets_needed, _heavy_table, _log_ratio_constant,
                          _rounding_factor, _row_chunks, _truncation_bounds, _tuple_sums, jackknife_coefficients)
from .rowreduce import row_any, row_max, row_sum

# A light-series ratio this small keeps the series short (about 10-30 terms at K = 5000).
_RHO_TARGET = 0.25
# At most this many heavy subsets per row (time and memory of the heavy/light route).
_SUBSET_CAP = 10_000
# At most this many heavy candidates scanned per row.
_H_SCAN = 256
# Full enumeration is used only while sum_{j<=m} C(K, j) stays below this ...
_ENUM_CAP = 200_000


def _leave_one_out(shifted: np.ndarray, total: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Order 1 in O(K): returns JVI_1 - IWAE_K and an error estimate, per row.

    ``JVI_1 - IWAE = -(K-1)/K * sum_i [log(1 - x_i) + x_i]``, ``x_i = delta_i / (K-1)``, using
    ``sum_i x_i = 0``; every bracket is <= 0, so the sum does not cancel. For the (at most one)
    weight with ``x_i > 1/2`` the remaining mass is the log-sum of the other weights, never
    ``S - w_i``. (Equivalent to logaddexp of prefix and suffix cumulative log-sums for every i,
    at the cost of one extra pass for that single entry only.)
    """
    n_rows, k = shifted.shape
    value = np.empty(n_rows)
    error = np.empty(n_rows)
    for rows in _row_chunks(n_rows, k):
        s = shifted[rows]
        x = np.exp(s)
        x *= k / total[rows, None]
        x -= 1.0
        x /= k - 1
        heavy = x > 0.5
        term = np.log1p(-np.minimum(x, 0.5))
        term += x
        heavy_rows = np.flatnonzero(row_any(heavy))
        if heavy_rows.size:
            # All heavy rows at once (small K in a sweep makes them common): the dominant weight
            # is masked to -inf and the rest added up in log space, never as S - w_i.
            top = np.argmax(x[heavy_rows], axis=1)
            others = s[heavy_rows].copy()
            others[np.arange(heavy_rows.size), top] = -math.inf
            without = _lse(others, axis=1)  # log sum_{l != i} w_l
            term[heavy_rows, top] = (
                (without - np.log(total[rows][heavy_rows])) + math.log(k / (k - 1)) + x[heavy_rows, top]
            )
        value[rows] = -((k - 1) / k) * row_sum(term)
        error[rows] = _EPS * (8.0 + math.log2(k)) * ((k - 1) / k) * row_sum(np.abs(term))
    return value, error


@lru_cache(maxsize=32)
def _combinations(k: int, j: int) -> Tuple[np.ndarray, np.ndarray]:
    chosen = np.array(list(itertools.combinations(range(k), j)), dtype=np.int64).reshape(math.comb(k, j), j)
    mask = np.ones((len(chosen), k), dtype=bool)
    np.put_along_axis(mask, chosen, False, axis=1)
    rest = np.nonzero(mask)[1].reshape(len(chosen), k - j)
    return chosen, rest


def _enumerate_rows(shifted: np.ndarray, total: np.ndarray, order: int) -> Tuple[np.ndarray, np.ndarray]:
    """All removed subsets (small K): JVI - IWAE and an error estimate, per row.

    Each subset contributes ``log(1 - t) + t`` (``t = D_R/(K-j)``, whose mean over subsets is 0),
    by ``log1p`` when t <= 1/2 and otherwise from the remaining mass added up in log space.
    """
    n_rows, k = shifted.shape
    c = jackknife_coefficients(k, order)
    wn = np.exp(shifted) / total[:, None]
    log_total = np.log(total)
    delta = k * wn - 1.0
    value = np.zeros(n_rows)
    magnitude = np.zeros(n_rows)
    for j in range(1, order + 1):
        chosen, rest = _combinations(k, j)
        n_sets = chosen.shape[0]
        mean_f = np.empty(n_rows)
        mean_abs = np.empty(n_rows)
        for rows in _row_chunks(n_rows, n_sets * k):
            d = delta[rows]
            t = np.ascontiguousarray(d[:, chosen[:, 0]])  # fancy indexing may give F order; sums follow layout
            for q in range(1, j):
                t += d[:, chosen[:, q]]
            t /= k - j
            f = np.log1p(-np.minimum(t, 0.5)) + t
            heavy = t > 0.5
            if heavy.any():
                r_idx, s_idx = np.nonzero(heavy)
                kept = shifted[rows][r_idx[:, None], rest[s_idx]]
                log_rest = _lse(kept, axis=1) - log_total[rows][r_idx]
                f[r_idx, s_idx] = log_rest + math.log(k / (k - j)) + t[r_idx, s_idx]
            mean_f[rows] = row_sum(f) / n_sets
            mean_abs[rows] = row_sum(np.abs(f)) / n_sets
        value += float(c[j]) * mean_f
        magnitude += abs(float(c[j])) * mean_abs * (8.0 + j + math.log2(n_sets) + math.log2(k))
    return value, _EPS * magnitude


def _lse(values: np.ndarray, axis: int = -1):
    """log-sum-exp along ``axis``: shifted by the maximum, then a pairwise sum (error ~ log2(n) eps).

    ``-inf`` for an empty or all ``-inf`` slice. (``np.logaddexp.reduce`` is sequential and
    accumulates an error growing like n eps.)
    """
    values = np.asarray(values)
    if values.ndim == 2 and axis in (1, -1):  # many rows: reductions that stay fast for short rows
        top = row_max(values)[:, None]
        safe = np.where(np.isfinite(top), top, 0.0)
        with np.errstate(divide="ignore"):
            return np.log(row_sum(np.exp(values - safe))) + safe[:, 0]
    top = np.max(values, axis=axis, keepdims=True, initial=-math.inf)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(values - safe), axis=axis)) + np.squeeze(safe, axis=axis)
    return float(out) if out.ndim == 0 else out


def _plan_rows(ls: np.ndarray, k: int, order: int, n_pos: np.ndarray, tau0: np.ndarray):
    """Series candidates for many rows at once, best first: ``(tau, h, r)`` arrays of shape (P, 3).

    ``ls`` (P, K) holds each row's log-weights sorted in descending order, ``tau0`` the bound of
    the light route (h = 0). For each size h of the heavy set, tau bounds ``|(j + E)/z|`` over
    all removed sets (j <= m):
    ``max_a (a mu_L + top_{m-a}(L)) / ((K_L + a) mu_L + bottom_{h-a}(H))``; r is the series
    length (a bucket of :data:`_BUCKETS`) that makes the truncation negligible. A row's first
    candidate is the smallest h with ``tau <= 1/4`` if there is one (cheap and accurate), the
    others follow by increasing tau; the scan over h stops at ``tau <= 1/16`` or three sizes
    past the first. Missing candidates have ``r = 0``. All masses are handled in log space:
    a row may span far more than the ~745 nats that float64 weights can hold at once. The
    loop runs over h and a; every step is vectorised over the rows.
    """
    n_rows = ls.shape[0]
    h_cap = 0
    for h in range(1, min(k - 1, _H_SCAN) + 1):
        if sum(math.comb(h, a) for a in range(min(h, order) + 1)) > _SUBSET_CAP:
            break
        h_cap = h
    # log_suffix[:, h] = log sum_{i >= h} w_i, added from the smallest up.
    log_suffix = np.logaddexp.accumulate(ls[:, ::-1], axis=1)[:, ::-1]
    # middle[:, t] = log sum_{i = order}^{order + t} w_i (the heavy weights that no a reaches).
    middle_acc = np.logaddexp.accumulate(ls[:, order:], axis=1) if k > order else np.zeros((n_rows, 0))
    h_lim = np.minimum(np.minimum(n_pos, k - 1), h_cap)
    taus = np.full((n_rows, h_cap + 1), math.inf)
    buckets = np.zeros((n_rows, h_cap + 1), dtype=np.int64)
    taus[:, 0] = tau0
    buckets[:, 0] = _buckets_needed(tau0, k, order)
    taus[buckets[:, 0] == 0, 0] = math.inf
    first = np.zeros(n_rows, dtype=np.int64)  # 0: none yet
    active = h_lim >= 1
    for h in range(1, h_cap + 1):
        rows = np.flatnonzero(active & (h <= h_lim))
        if rows.size == 0:
            break
        # Only short windows of each row are read below: index them, never copy whole rows.
        window = ls[rows, : min(k, max(h, order) + order)]
        middle = middle_acc[rows, h - 1 - order] if h - 1 >= order else np.full(rows.size, -math.inf)
        k_light = k - h
        log_mu = log_suffix[rows, h] - math.log(k_light)
        tau = np.zeros(rows.size)
        for a in range(0, min(h, order) + 1):
            b = min(order - a, k_light)
            log_top = _lse(window[:, h : h + b], axis=1) if b else np.full(rows.size, -math.inf)
            if a < h:
                head = _lse(window[:, a : min(h, order)], axis=1) if a < min(h, order) else np.full(rows.size, -math.inf)
                log_bottom = np.logaddexp(middle, head)
            else:
                log_bottom = np.full(rows.size, -math.inf)
            log_num = np.logaddexp(math.log(a) + log_mu, log_top) if a else log_top
            log_den = np.logaddexp(math.log(k_light + a) + log_mu, log_bottom)
            with np.errstate(invalid="ignore"):
                ratio = np.exp(np.minimum(log_num - log_den, 50.0))
            tau = np.where(log_num > -math.inf, np.maximum(tau, ratio), tau)
        bucket = _buckets_needed(tau, k, order)
        ok = bucket > 0
        taus[rows[ok], h] = tau[ok]
        buckets[rows[ok], h] = bucket[ok]
        new_first = ok & (first[rows] == 0) & (tau <= _RHO_TARGET)
        first[rows[new_first]] = h
        stop = ok & ((tau <= _RHO_TARGET / 4) | ((first[rows] > 0) & (h >= first[rows] + 3)))
        active[rows[stop]] = False
    # Order: the first candidate, then the others by increasing tau (ties: smaller h first).
    key = taus.copy()
    has_first = first > 0
    key[np.flatnonzero(has_first), first[has_first]] = -1.0
    best = np.argsort(key, axis=1, kind="stable")[:, :3]
    tau_out = np.take_along_axis(taus, best, axis=1)
    r_out = np.where(np.isfinite(tau_out), np.take_along_axis(buckets, best, axis=1), 0)
    return tau_out, best, r_out


def _enumeration_size(k: int, order: int) -> int:
    """``sum_{j<=m} C(K, j)``, the number of removed sets of a full enumeration (capped above _ENUM_CAP)."""
    total, term = 0, 1
    for j in range(order + 1):
        total += term
        if total > _ENUM_CAP:
            return _ENUM_CAP + 1
        term = term * (k - j) // (j + 1)
    return total


def _heavy_light_parts(ls: np.ndarray, h: int) -> Tuple[np.ndarray, np.ndarray]:
    """Log light masses (G,) and centred scaled light weights ``x_i = w_i / S_L - 1/K_L`` (G, K-h).

    ``ls`` (G, K) holds rows sorted in descending order; a row without light mass gets x = 0
    (nothing to expand).
    """
    log_s_light = _lse(ls[:, h:], axis=1)
    with np.errstate(invalid="ignore"):
        x = np.exp(ls[:, h:] - log_s_light[:, None]) - 1.0 / (ls.shape[1] - h)
    x[log_s_light == -math.inf] = 0.0
    return log_s_light, x


def _heavy_light_part(ls: np.ndarray, h: int) -> Tuple[float, np.ndarray]:
    """:func:`_heavy_light_parts` of one row ``ls`` (K,)."""
    log_s_light, x = _heavy_light_parts(ls[None, :], h)
    return float(log_s_light[0]), x[0]


def _heavy_rows(
    ls: np.ndarray, k: int, order: int, h: int, r_max: int, tau: np.ndarray, q: np.ndarray, q_abs: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
    r"""Heavy/light route for rows sharing h and r (log-weights ``ls`` (G, K) sorted descending).

    Returns JVI - IWAE and an error estimate per row, shape (G,). For a removed set
    ``R = R_H + R_L`` (``|R_H| = a``, ``|R_L| = b``, ``j = a + b``):
    ``log(1 - D_R/(K-j)) = log zeta(R_H) + log(1 - (j + E)/z(R_H)) - log(1 - j/K)`` with
    ``zeta = (S_L + W_{H\R_H} + a mu_L)/S``, ``z = K_L + a + W_{H\R_H}/mu_L`` and E the sum of
    the centred light weights ``w_i/mu_L - 1`` over R_L; the logarithm is expanded in
    ``(j + E)/z``, whose moments over R_L are polynomials in b with coefficients ``q``
    (:func:`_tuple_sums` of the light weights, shape (G, r_max+1, m+1)). The polynomial in
    ``rho = K_L / z`` is evaluated by Horner's rule, on the coefficients and (for the error
    estimate) on their absolute values.
    """
    l0, poly, light = _heavy_table(k, order, h, r_max)
    n_rows = ls.shape[0]
    k_light = k - h
    l_heavy = ls[:, :h]
    log_s_light = _lse(ls[:, h:], axis=1)
    log_total = np.logaddexp(log_s_light, _lse(l_heavy, axis=1))
    light_mass = log_s_light > -math.inf
    value = np.full(n_rows, _log_ratio_constant(k, order))
    magnitude = np.abs(value)
    for a in range(min(h, order) + 1):
        n_sets = math.comb(h, a)
        chosen = np.array(list(itertools.combinations(range(h), a)), dtype=np.int64).reshape(n_sets, a)
        removed = np.zeros((n_sets, h), dtype=bool)
        np.put_along_axis(removed, chosen, True, axis=1)
        coef = poly[a][None, :] + np.einsum("rkd,gkd->gr", light[a], q)
        coef_abs = np.abs(poly[a])[None, :] + np.einsum("rkd,gkd->gr", np.abs(light[a]), q_abs)
        for rows in _row_chunks(n_rows, n_sets * max(h, r_max), _CACHE_ELEMS):
            g = rows.stop - rows.start
            if h > a:
                kept = np.where(removed[None, :, :], -math.inf, l_heavy[rows, None, :])
                log_rest = _lse(kept.reshape(g * n_sets, h), axis=1).reshape(g, n_sets)
            else:
                log_rest = np.full((g, n_sets), -math.inf)
            lsl = log_s_light[rows, None]
            if a > 0:
                log_zeta = np.logaddexp(lsl + math.log1p(a / k_light), log_rest) - log_total[rows, None]
                value[rows] += l0[a] * log_zeta.sum(axis=1)
                magnitude[rows] += abs(l0[a]) * np.abs(log_zeta).sum(axis=1)
            with np.errstate(over="ignore", invalid="ignore"):
                rho = 1.0 / (1.0 + a / k_light + np.exp(log_rest - lsl))
            rho = np.where(light_mass[rows, None], rho, 0.0)
            c, c_abs = coef[rows], coef_abs[rows]
            acc = np.broadcast_to(c[:, r_max, None], rho.shape).copy()
            acc_abs = np.broadcast_to(c_abs[:, r_max, None], rho.shape).copy()
            for p in range(r_max - 1, -1, -1):
                acc *= rho
                acc += c[:, p, None]
                acc_abs *= rho
                acc_abs += c_abs[:, p, None]
            value[rows] += acc.sum(axis=1)
            magnitude[rows] += acc_abs.sum(axis=1)
    error = magnitude * _rounding_factor(r_max, order, k) + _truncation_bounds(tau, np.full(n_rows, r_max), k, order)
    return value, error


def _heavy_row(
    ls: np.ndarray, k: int, order: int, h: int, r_max: int, tau: float, q: np.ndarray, q_abs: np.ndarray
) -> Tuple[float, float]:
    """:func:`_heavy_rows` for one row (``ls`` (K,), ``q`` (r_max+1, m+1)): JVI - IWAE and an error estimate."""
    value, error = _heavy_rows(ls[None, :], k, order, h, r_max, np.array([tau]), q[None], q_abs[None])
    return float(value[0]), float(error[0])

