"""The public vocabulary of estimators: ``"elbo"``, ``"iwae"``, ``"jviM"``, ``"dvi"``, ``"sumo"`` as :class:`Estimator` records."""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, List, Optional, Sequence, Union

from ..errors import InputError
from .bounds import dvi, elbo, elbo_mc_variance, iwae, iwae_mc_variance
from .jackknife import _jvi
from .sumo import DEFAULT_M as _SUMO_M, sumo, sumo_mc_variance


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
        ``(K sum w~^2 - 1)/(K - 1)``, which debiasing does not change; SUMO: the exact variance over
        its random truncation given the row plus IWAE_K's, :func:`~evalkit.estimators.sumo_mc_variance`).
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
    "sumo": Estimator(
        name="sumo",
        summary=(f"SUMO, Russian-roulette debiased IWAE (Luo et al. 2020): unbiased for E[IWAE_K], m = {_SUMO_M}, "
                 "about 21 columns used on average; heavy-tailed variance"),
        min_k=_SUMO_M + 1,
        fn=sumo,
        mc_variance=sumo_mc_variance,
    ),
}


def available() -> List[str]:
    """Standard estimator names: ``["elbo", "iwae", "jvi1", ..., "jvi5", "dvi", "sumo"]``.

    Any ``"jviM"`` with M >= 1 is also accepted by :func:`get`.
    """
    return ["elbo", "iwae"] + [f"jvi{m}" for m in _STANDARD_JVI_ORDERS] + ["dvi", "sumo"]


def get(name: str) -> Estimator:
    """Look up an estimator by name (case-insensitive).

    Parameters
    ----------
    name : str
        ``"elbo"``, ``"iwae"``, ``"dvi"``, ``"sumo"`` or ``"jviM"`` for any order M >= 1 (``"jvi2"``).

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
