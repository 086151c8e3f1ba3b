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
"""
from __future__ import annotations

import itertools
import math
import warnings
from fractions import Fraction
from functools import lru_cache
from typing import Any, List, Optional, Tuple

import numpy as np

from .arraykind import as_rows, format_positions
from ..errors import InputError
from .rowreduce import row_any, row_max, row_min, row_sum

__all__ = ["AccuracyWarning", "jackknife_coefficients", "jvi", "jvi_with_error", "ACCURACY_RTOL"]

#: Relative accuracy promised for every returned JVI value: |error| <= ACCURACY_RTOL * max(1, |value|).
ACCURACY_RTOL = 1e-9

_EPS = float(np.finfo(np.float64).eps)
# A light-series ratio this small keeps the series short (about 10-30 terms at K = 5000).
_RHO_TARGET = 0.25
# Longest series: 170! is the largest factorial in float64 and the Newton recurrence works with
# exponential-generating-function coefficients Q'/k!.
_R_CAP = 150
# The truncation bound is made negligible next to rounding, not merely below the promise.
_TRUNC_TOL = 1e-17
# At most this many heavy subsets per row (time and memory of the heavy/light route).
_SUBSET_CAP = 10_000
# Longest series that the first, vectorised pass of the light route tries on every row.
_R_FAST = 64
# At most this many heavy candidates scanned per row.
_H_SCAN = 256
# Full enumeration is used only while sum_{j<=m} C(K, j) stays below this ...
_ENUM_CAP = 200_000
# ... and for every row that the light route does not take while it stays below this.
_ENUM_FAST = 2_048
# Below this many subsets per row, enumeration is cheaper than the light series for every row
# (measured on [N, k] groups of a digits pool: k = 5 / 10 / 20 at order 2 run 2-3x faster
# enumerated; at k = 50, 1276 subsets, the two cost the same).
_ENUM_FIRST = 256
# Orders above this use enumeration only (the exact tables cost O(m^3 r) rational operations).
_SERIES_MAX_ORDER = 20
# A route's result is accepted when its error estimate is below this fraction of the promise.
_ACCEPT = 0.1
# Elements per chunk for batched temporaries (about 32 MB of float64).
_CHUNK_ELEMS = 4_000_000
# Elements per chunk for the repeated passes of the power sums: small enough to stay in cache.
_CACHE_ELEMS = 1 << 16


class AccuracyWarning(UserWarning):
    """A JVI value could not be computed to the documented accuracy, or is undefined."""


# --------------------------------------------------------------------------------------------
# Exact coefficient algebra (cached per K, m, ...)
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def jackknife_coefficients(k: int, order: int) -> Tuple[Fraction, ...]:
    """Exact generalised-jackknife coefficients ``c(K, m, j) = (-1)^j (K-j)^m / ((m-j)! j!)``.

    Parameters
    ----------
    k : int
        Number of samples K.
    order : int
        Jackknife order m, ``0 <= m < K``.

    Returns
    -------
    tuple of Fraction, length m + 1
        ``c(K, m, j)`` for j = 0..m; they sum to 1 and annihilate ``(K-j)^-r`` for r = 1..m.
    """
    return tuple(
        Fraction((-1) ** j * (k - j) ** order, math.factorial(order - j) * math.factorial(j)) for j in range(order + 1)
    )


@lru_cache(maxsize=256)
def _abs_coef_sum(k: int, order: int) -> float:
    """``sum_j |c(K, m, j)|`` (float; via log-gamma so that it is cheap for any order)."""
    logs = [order * math.log(k - j) - math.lgamma(order - j + 1) - math.lgamma(j + 1) for j in range(order + 1)]
    top = max(logs)
    return math.exp(top) * math.fsum(math.exp(v - top) for v in logs)


def _terms_needed(tau: float, k: int, order: int) -> Optional[int]:
    """Smallest series length r with sum_j |c_j| tau^(r+1) / ((r+1)(1-tau)) <= _TRUNC_TOL, or None."""
    if tau <= 0.0:
        return 2
    if tau >= 1.0:
        return None
    log_c = math.log(_abs_coef_sum(k, order)) - math.log1p(-tau) - math.log(_TRUNC_TOL)
    # r + 1 >= (log_c - log(r+1)) / -log(tau); iterate (converges in a few steps).
    r = 2
    for _ in range(60):
        r_new = max(2, math.ceil((log_c - math.log(r + 1)) / -math.log(tau)) - 1)
        if r_new == r:
            break
        r = r_new
    while math.log(_abs_coef_sum(k, order)) + (r + 1) * math.log(tau) - math.log(r + 1) - math.log1p(-tau) > math.log(
        _TRUNC_TOL
    ):
        r += 1
    return r if r <= _R_CAP else None


def _truncation_bound(tau: float, r: int, k: int, order: int) -> float:
    if tau <= 0.0:
        return 0.0
    return _abs_coef_sum(k, order) * tau ** (r + 1) / ((r + 1) * (1.0 - tau))


# Series lengths actually used: a needed length is rounded up to one of these, so that few
# distinct (cached) coefficient tables are built. The last one is _R_CAP.
_BUCKETS = (8, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 112, 128, 150)


def _bucket(r: int) -> int:
    """Round a series length up so that few distinct (cached) tables are built."""
    for b in _BUCKETS:
        if r <= b:
            return b
    return r


def _buckets_needed(tau: np.ndarray, k: int, order: int) -> np.ndarray:
    """``_bucket(_terms_needed(tau))`` for many rows at once; 0 where no series length suffices.

    The bound ``sum_j |c_j| tau^(b+1) / ((b+1)(1-tau))`` decreases in b for 0 < tau < 1, so the
    smallest bucket that meets ``_TRUNC_TOL`` is the bucket of the smallest length that does
    (the per-row loop of :func:`_terms_needed` costs microseconds, and a sweep at small K
    routes hundreds of thousands of rows).
    """
    tau = np.asarray(tau, dtype=np.float64)
    out = np.zeros(tau.shape, dtype=np.int64)
    inside = (tau > 0.0) & (tau < 1.0)
    out[tau <= 0.0] = _BUCKETS[0]
    if inside.any():
        t = tau[inside]
        slack = math.log(_TRUNC_TOL) - math.log(_abs_coef_sum(k, order)) + np.log1p(-t)
        log_t = np.log(t)
        chosen = np.zeros(t.shape, dtype=np.int64)
        for b in reversed(_BUCKETS):  # ends with the smallest bucket that meets the bound
            ok = (b + 1) * log_t - math.log(b + 1) <= slack
            chosen[ok] = b
        out[inside] = chosen
    return out


def _truncation_bounds(tau: np.ndarray, r: np.ndarray, k: int, order: int) -> np.ndarray:
    """:func:`_truncation_bound` for arrays of ``tau`` and series lengths ``r``."""
    tau = np.asarray(tau, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        bound = _abs_coef_sum(k, order) * np.power(np.maximum(tau, 0.0), r + 1) / ((r + 1) * (1.0 - tau))
    return np.where(tau <= 0.0, 0.0, bound)


def _falling(x: int, d: int) -> int:
    out = 1
    for i in range(d):
        out *= x - i
    return out


@lru_cache(maxsize=64)
def _newton_coefficients(r_max: int, order: int) -> np.ndarray:
    """``k! S(a, k) / a!`` as float, shape (order+1, r_max+1): the power sums of ``e^{t x} - 1``.

    ``sum_i (e^{t x_i} - 1)^k = sum_{a>=k} k! S(a,k) P_a t^a / a!`` (S: Stirling numbers of the
    second kind), exact integers before the one division, so no cancellation arises here.
    """
    stirling = [[0] * (order + 1) for _ in range(r_max + 1)]
    stirling[0][0] = 1
    for a in range(1, r_max + 1):
        for kk in range(1, min(a, order) + 1):
            stirling[a][kk] = kk * stirling[a - 1][kk] + stirling[a - 1][kk - 1]
    out = np.zeros((order + 1, r_max + 1))
    for kk in range(1, order + 1):
        for a in range(kk, r_max + 1):
            out[kk, a] = float(Fraction(math.factorial(kk) * stirling[a][kk], math.factorial(a)))
    return out


def _common_denominator(fractions) -> Tuple[List[int], int]:
    """Integers ``F_j`` and D with ``f_j = F_j / D``, so that sums over j are exact integer sums.

    Python's ``int / int`` is correctly rounded, so ``float(sum_j F_j n_j / (D * ...))`` rounds
    the exact value once, without the gcd cost of :class:`fractions.Fraction` arithmetic.
    """
    den = math.lcm(*[f.denominator for f in fractions]) if fractions else 1
    return [f.numerator * (den // f.denominator) for f in fractions], den


@lru_cache(maxsize=64)
def _light_table(k: int, order: int, r_max: int) -> np.ndarray:
    """Coefficients ``-G(K, m, r, d)`` of ``Q'_{r,d}``, shape (r_max+1, m+1).

    ``G = K^r / (r (K)_d) * sum_j c_j (j)_d (K-j)^{-r}``, the sum over j in exact arithmetic
    and rounded once. The caller multiplies by ``Q'_{r,d} = r! e_d[r]`` formed first, so that no
    product overflows.
    """
    c = jackknife_coefficients(k, order)
    table = np.zeros((r_max + 1, order + 1))
    for r in range(2, r_max + 1):
        # c_j K^r / (K-j)^r over one common denominator
        terms, den = _common_denominator([c[j] * Fraction(k**r, (k - j) ** r) for j in range(order + 1)])
        for d in range(1, min(r, order) + 1):
            num = sum(terms[j] * _falling(j, d) for j in range(d, order + 1))
            table[r, d] = -(num / (den * r * _falling(k, d)))
    return table


@lru_cache(maxsize=64)
def _log_ratio_constant(k: int, order: int) -> float:
    """``sum_j c_j log(K/(K-j))`` to full precision (mpmath, enough digits to absorb the cancellation)."""
    import mpmath

    c = jackknife_coefficients(k, order)
    digits = 30 + int(math.log10(_abs_coef_sum(k, order) + 1.0))
    with mpmath.workdps(digits):
        total = mpmath.mpf(0)
        for j in range(1, order + 1):
            total += mpmath.mpf(c[j].numerator) / c[j].denominator * mpmath.log(mpmath.mpf(k) / (k - j))
        return float(total)


@lru_cache(maxsize=64)
def _heavy_table(k: int, order: int, h: int, r_max: int):
    """Exact-then-rounded coefficient tables of the heavy/light route for (K, m, h, r_max).

    With ``P(a|j) = C(h,a) C(K-h, j-a) / C(K, j)`` (probability that a removed set of size j
    takes a of the h heavy weights), ``Lambda_a(s) = sum_j c_j P(a|j) j^s`` and
    ``Psi_a(s, d) = sum_j c_j P(a|j) j^s (j-a)_d / (K_L)_d`` (all sums over j exact):

    * ``l0[a] = Lambda_a(0) / C(h, a)`` multiplies ``log zeta(R_H)``;
    * ``poly[a, r]`` multiplies ``rho^r`` (``rho = K_L / z``) in the ``log(1 - j/z)`` part:
      ``-Lambda_a(r) / (r K_L^r C(h,a))``;
    * ``light[a, r, kk, d]`` multiplies ``rho^r Q'_{kk,d}`` (kk >= 2, s = r - kk):
      ``-C(r, kk)/r * Psi_a(s, d) / (K_L^s C(h, a))``.
    """
    c = jackknife_coefficients(k, order)
    k_light = k - h
    a_max = min(h, order)
    n_d = order + 1
    l0 = np.zeros(a_max + 1)
    poly = np.zeros((a_max + 1, r_max + 1))
    light = np.zeros((a_max + 1, r_max + 1, r_max + 1, n_d))
    # light[a, r, kk, :] = -C(r, kk)/r * psi[r - kk, :] for 2 <= kk <= r
    rr, kk = np.meshgrid(np.arange(r_max + 1), np.arange(r_max + 1), indexing="ij")
    valid = (kk >= 2) & (kk <= rr)
    binom_over_r = np.array([[math.comb(r, q) / r if 2 <= q <= r else 0.0 for q in range(r_max + 1)] for r in range(r_max + 1)])
    for a in range(a_max + 1):
        n_sets = math.comb(h, a)
        f = [
            c[j] * Fraction(n_sets * math.comb(k_light, j - a), math.comb(k, j)) if a <= j and j - a <= k_light else Fraction(0)
            for j in range(order + 1)
        ]
        terms, den = _common_denominator(f)
        l0[a] = sum(terms) / (den * n_sets)
        psi = np.zeros((r_max + 1, n_d))
        for s in range(r_max + 1):
            powers = [j**s for j in range(order + 1)]
            scale = den * k_light**s * n_sets
            if s >= 1:
                poly[a, s] = -(sum(t * p for t, p in zip(terms, powers)) / (s * scale))
            for d in range(1, order - a + 1):
                num = sum(terms[j] * powers[j] * _falling(j - a, d) for j in range(a + d, order + 1))
                # d > K_L leaves num = 0: no light subset has d distinct members
                psi[s, d] = num / (scale * _falling(k_light, d)) if num else 0.0
        light[a][valid] = -(binom_over_r[valid][:, None] * psi[(rr - kk)[valid]])
    return l0, poly, light


# --------------------------------------------------------------------------------------------
# Float building blocks (numpy, float64, row chunks that stay in cache)
# --------------------------------------------------------------------------------------------


def _row_chunks(n_rows: int, n_cols: int, budget: int = _CHUNK_ELEMS):
    step = max(1, budget // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))


def _series_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Truncated product of power series (rows x coefficients), by direct summation (no FFT)."""
    n = a.shape[1]
    out = np.empty_like(a)
    for p in range(n):
        out[:, p] = np.einsum("ni,ni->n", a[:, : p + 1], b[:, p::-1])
    return out


def _power_sums(x: np.ndarray, r_max: int) -> np.ndarray:
    """``P[:, a] = sum_i x_i^a`` for a = 0..r_max+1 (columns 0 and 1 left at zero: x is centred)."""
    n_rows, n = x.shape
    power = np.zeros((n_rows, r_max + 2))
    for rows in _row_chunks(n_rows, n, _CACHE_ELEMS):
        xc = x[rows]
        term = xc * xc
        power[rows, 2] = term.sum(axis=1)
        for a in range(3, r_max + 2):
            np.multiply(term, xc, out=term)
            power[rows, a] = term.sum(axis=1)
    return power


def _tuple_sums(x: np.ndarray, order: int, r_max: int) -> Tuple[np.ndarray, np.ndarray]:
    """``Q'_{r,d}`` for r <= r_max, d <= order, and a running-error magnitude for each.

    Parameters
    ----------
    x : ndarray, shape (N, n)
        Centred values (each row sums to zero in exact arithmetic; ``P_1 = 0`` is used exactly).

    Returns
    -------
    q, q_abs : ndarray, shape (N, r_max+1, order+1)
        ``q[:, r, d] = r! [t^r] e_d(e^{t x_1}-1, ...)``, the sum over r-tuples of indices with
        exactly d distinct values of ``prod x``; and the same recurrence run on absolute values
        (power sums of |x|), which bounds every intermediate quantity.
    """
    n_rows = x.shape[0]
    power = _power_sums(x, r_max)
    power_abs = np.abs(power)
    # Cauchy-Schwarz: sum |x|^a <= sqrt(sum x^(a-1) * sum x^(a+1)) for odd a (even sums are exact).
    odd = np.arange(3, r_max + 1, 2)
    power_abs[:, odd] = np.sqrt(power[:, odd - 1] * power[:, odd + 1])
    power, power_abs = power[:, : r_max + 1], power_abs[:, : r_max + 1]
    coef = _newton_coefficients(r_max, order)
    one = np.zeros((n_rows, r_max + 1))
    one[:, 0] = 1.0
    e, e_abs = [one], [one]
    for d in range(1, order + 1):
        acc = np.zeros_like(one)
        acc_abs = np.zeros_like(one)
        for kk in range(1, d + 1):
            prod = _series_mul(e[d - kk], coef[kk][None, :] * power)
            acc = acc + prod if kk % 2 == 1 else acc - prod
            acc_abs += _series_mul(e_abs[d - kk], coef[kk][None, :] * power_abs)
        e.append(acc / d)
        e_abs.append(acc_abs / d)
    fact = np.array([float(math.factorial(r)) for r in range(r_max + 1)])
    q = np.stack(e, axis=2) * fact[None, :, None]
    q_abs = np.stack(e_abs, axis=2) * fact[None, :, None]
    return q, q_abs


def _rounding_factor(r_max: int, order: int, k: int) -> float:
    """Multiple of eps * (sum of |terms|) that bounds the rounding error of a series route."""
    return _EPS * (16.0 + 2 * r_max + 4 * order + math.log2(k))


def _light_rows(x: np.ndarray, k: int, order: int, r_max: int) -> Tuple[np.ndarray, np.ndarray]:
    """JVI - IWAE on rows without dominant weights (``x = w~ - 1/K``), and its rounding-error estimate."""
    table = _light_table(k, order, r_max)
    q, q_abs = _tuple_sums(x, order, r_max)
    value = np.einsum("nrd,rd->n", q, table)
    magnitude = np.einsum("nrd,rd->n", q_abs, np.abs(table))
    return value, magnitude * _rounding_factor(r_max, order, k)


# --------------------------------------------------------------------------------------------
# Routes
# --------------------------------------------------------------------------------------------


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
