"""The exact algebra and float kernels behind JVI's light-series route (see :mod:`evalkit.estimators.jackknife`).

* coefficient tables, cached per ``(K, order, series length)``: :func:`jackknife_coefficients`
  (exact rationals), the Newton-recurrence and light/heavy tables;
* truncation: how many series terms a row needs (``_terms_needed``, ``_buckets_needed``) and the
  bound on what the cut-off terms can contribute (``_truncation_bound(s)``);
* float building blocks on row chunks that stay in cache: power sums, tuple sums, the light
  series of a row.
"""
from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache
from typing import List, Optional, Tuple

import numpy as np


_EPS = float(np.finfo(np.float64).eps)
# Longest series: 170! is the largest factorial in float64 and the Newton recurrence works with
# exponential-generating-function coefficients Q'/k!.
_R_CAP = 150
# The truncation bound is made negligible next to rounding, not merely below the promise.
_TRUNC_TOL = 1e-17
# Elements per chunk for batched temporaries (about 32 MB of float64).
_CHUNK_ELEMS = 4_000_000
# Elements per chunk for the repeated passes of the power sums: small enough to stay in cache.
_CACHE_ELEMS = 1 << 16


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
