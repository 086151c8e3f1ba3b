r"""Estimators of log p(x) and weight diagnostics as pure functions of log-weights.

Every function takes log importance weights ``log_w`` of shape ``(..., K)`` --
``log w_i = log p(x, z_i) - log q(z_i | x)``, ``z_i ~ q(z | x)`` -- reduces the last axis and
returns shape ``(...)``. Inputs may be torch tensors (any float dtype, CPU or CUDA) or numpy
arrays (or anything ``numpy.asarray`` reads); reductions run in float64 and the result comes
back in the input's kind (torch on the input's device, numpy as float64). Inputs are never
written to. Results are not differentiable (inputs are detached).

Edge cases (the written contract; each has a test):

* ``-inf`` is a legal log-weight: a zero weight. A row of all ``-inf`` gives ``-inf`` for
  :func:`elbo`, :func:`iwae`, :func:`jvi` and :func:`dvi`, ``0`` for :func:`ess`, ``nan`` for
  :func:`psis_khat` and the Monte Carlo variances. :func:`elbo` is ``-inf`` as soon as one
  log-weight is ``-inf``.
* ``NaN`` and ``+inf`` raise :class:`~evalkit.errors.InputError` naming the rows: an infinite
  weight makes every estimate infinite or undefined and signals a bug upstream.
* ``K = 0`` raises :class:`~evalkit.errors.InputError`; so do ``jvi`` with ``order >= K`` and
  ``dvi`` with ``K = 1``.

Names
-----
:func:`get` maps the public vocabulary -- ``"elbo"``, ``"iwae"``, ``"jvi1"``, ``"jvi2"``, ...
(any ``"jviM"``, M >= 1), ``"dvi"`` -- to :class:`Estimator` records; :func:`available`
lists the standard ones.

References
----------
.. [1] Y. Burda, R. Grosse, R. Salakhutdinov, "Importance weighted autoencoders", ICLR 2016.
.. [2] S. Nowozin, "Debiasing evidence approximations: on importance-weighted autoencoders and
   jackknife variational inference", ICLR 2018.
.. [3] A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry, "Pareto smoothed importance
   sampling", JMLR 25 (2024); arXiv:1507.02646.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .arraykind import as_rows
from ..errors import InputError
from .jackknife import ACCURACY_RTOL, AccuracyWarning, jackknife_coefficients
from .jackknife import _jvi, jvi_with_error
from .psis import KHAT_BAD, KHAT_GOOD, khat_threshold, psis_khat
from .rowreduce import row_any, row_max, row_sum

__all__ = [
    "elbo",
    "iwae",
    "jvi",
    "jvi_with_error",
    "dvi",
    "ess",
    "psis_khat",
    "KHAT_GOOD",
    "KHAT_BAD",
    "khat_threshold",
    "elbo_mc_variance",
    "iwae_mc_variance",
    "Estimator",
    "get",
    "get_many",
    "available",
    "AccuracyWarning",
    "ACCURACY_RTOL",
    "jackknife_coefficients",
]


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


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimator:
    """A named estimator: what the API and the CLI mean by ``"iwae"``, ``"jvi2"``, ...

    Attributes
    ----------
    name : str
        Canonical name: ``"elbo"``, ``"iwae"``, ``"jvi1"``, ``"jvi2"``, ..., ``"dvi"``.
    summary : str
        One line, shown by ``evalkit estimators``.
    min_k : int
        Smallest K for which it is defined (jviM: M + 1; dvi: 2; elbo, iwae: 1).
    fn : callable
        ``log_w (..., K) -> (...)``.
    mc_variance : callable or None
        ``log_w (..., K) -> (...)``: estimated Monte Carlo variance of this estimator at this
        K, per row (ELBO: ``var(log w)/K``; IWAE, DVI, JVI: the delta-method leading term
        ``(K sum w~^2 - 1)/(K - 1)``, which debiasing does not change).
    """

    name: str
    summary: str
    min_k: int
    fn: Callable[[Any], Any]
    mc_variance: Optional[Callable[[Any], Any]]

    def __call__(self, log_w: Any) -> Any:
        return self.fn(log_w)


_STANDARD_JVI_ORDERS = range(1, 6)
_JVI_NAME = re.compile(r"jvi([1-9][0-9]*)")


def _jvi_fn(order: int) -> Callable[[Any], Any]:
    def fn(log_w: Any) -> Any:
        return _jvi(log_w, order, stacklevel=4)

    fn.__name__ = f"jvi{order}"
    fn.__doc__ = f"JVI of order {order}: ``jvi(log_w, {order})``."
    return fn


@lru_cache(maxsize=None)
def _jvi_estimator(order: int) -> Estimator:
    return Estimator(
        name=f"jvi{order}",
        summary=(
            f"jackknife-debiased IWAE of order {order}, exact over all subsets (Nowozin 2018); "
            f"bias O(K^-{order + 1}), needs K >= {order + 1}"
        ),
        min_k=order + 1,
        fn=_jvi_fn(order),
        mc_variance=iwae_mc_variance,
    )


_FIXED = {
    "elbo": Estimator(
        name="elbo",
        summary="evidence lower bound: mean log-weight; bias -KL(q || posterior), not reduced by K",
        min_k=1,
        fn=elbo,
        mc_variance=elbo_mc_variance,
    ),
    "iwae": Estimator(
        name="iwae",
        summary="importance-weighted bound: log of the mean weight (Burda et al. 2016); bias O(1/K)",
        min_k=1,
        fn=iwae,
        mc_variance=iwae_mc_variance,
    ),
    "dvi": Estimator(
        name="dvi",
        summary="delta-method debiased IWAE: IWAE + estimated mu2/(2 K mu^2) (Nowozin 2018); bias O(1/K^2)",
        min_k=2,
        fn=dvi,
        mc_variance=iwae_mc_variance,
    ),
}


def available() -> List[str]:
    """Standard estimator names: ``["elbo", "iwae", "jvi1", ..., "jvi5", "dvi"]``.

    Any ``"jviM"`` with M >= 1 is also accepted by :func:`get`.
    """
    return ["elbo", "iwae"] + [f"jvi{m}" for m in _STANDARD_JVI_ORDERS] + ["dvi"]


def get(name: str) -> Estimator:
    """Look up an estimator by name (case-insensitive).

    Parameters
    ----------
    name : str
        ``"elbo"``, ``"iwae"``, ``"dvi"`` or ``"jviM"`` for any order M >= 1 (``"jvi2"``).

    Returns
    -------
    Estimator

    Raises
    ------
    InputError
        Unknown name; the message lists the known names and suggests the closest one.

    Examples
    --------
    >>> get("JVI2").name
    'jvi2'
    """
    if not isinstance(name, str):
        raise InputError(f"estimator name must be a string such as 'iwae', got {name!r}")
    key = name.strip().lower()
    if key in _FIXED:
        return _FIXED[key]
    match = _JVI_NAME.fullmatch(key)
    if match:
        return _jvi_estimator(int(match.group(1)))
    known = available()
    if key in ("jvi0", "jvi"):
        hint = " ('jvi0' is 'iwae'; a JVI name needs an order M >= 1, e.g. 'jvi1')."
    else:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else "."
    raise InputError(f"unknown estimator {name!r}{hint} Known names: {', '.join(known)}, and any 'jviM' with M >= 1")


def get_many(names: Union[str, Sequence[str]]) -> List[Estimator]:
    """Resolve estimator names (one string or a sequence) with :func:`get`, dropping repeats.

    Raises :class:`InputError` when no name is given or a name is unknown.
    """
    if isinstance(names, str):
        names = [names]
    if not names:
        raise InputError("no estimator chosen; name at least one, e.g. 'iwae' (see evalkit.estimators.available())")
    chosen: List[Estimator] = []
    for name in names:
        estimator = get(name)
        if all(estimator.name != other.name for other in chosen):
            chosen.append(estimator)
    return chosen
