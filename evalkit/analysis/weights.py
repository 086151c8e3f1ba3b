"""Importance-weight diagnostics on the full pool: ESS/K and PSIS k-hat per datapoint, and their summary.

:func:`weight_diagnostics` computes them from a ``[N, K]`` log-weight matrix;
:func:`summarize_weights` assembles :class:`WeightDiagnostics` from per-datapoint values computed
elsewhere (e.g. block by block).

References
----------
.. [1] A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry, "Pareto smoothed importance
   sampling", JMLR 25 (2024): k-hat above ``min(1 - 1/log10(K), 0.7)``
   (:func:`evalkit.estimators.khat_threshold`) marks an unreliable estimate; above 0.5 the
   weights' variance is infinite, so the asymptotic expansions do not apply.

Fractions, one definition everywhere: ``fraction_*`` is the share of the datapoints **with a
finite k-hat** (the denominator ``n_khat_defined``); the others (k-hat NaN: K < 21, or too few
distinct tail weights) are counted in ``n_khat_undefined``, never silently in or out of a
fraction.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch

from ..estimators.psis import khat_defined
from .groups import _name_indices, _to_numpy


@dataclass(frozen=True)
class WeightDiagnostics:
    """Per-datapoint importance-weight diagnostics on the full pool, and their summary.

    Attributes
    ----------
    index : ndarray, shape (N,)
        Dataset index of each row (positions ``0..N-1`` unless given).
    ess_fraction : ndarray, shape (N,)
        Effective sample size over K, ``1 / (K sum_i w~_i^2)`` in ``[1/K, 1]``.
    khat : ndarray, shape (N,)
        PSIS Pareto k-hat (NaN where it cannot be fitted, e.g. very small K).
    good, bad : float
        0.5 (finite variance below it: the asymptotics apply) and 0.7 (the cap of ``threshold``).
    threshold : float
        The reliability threshold ``min(1 - 1/log10(K), 0.7)`` of Vehtari et al. (2024), the one
        evalkit judges by.
    fraction_above_good, fraction_above_bad, fraction_above_threshold : float
        Fractions of the datapoints with a finite k-hat above 0.5, 0.7 and ``threshold``.
    above_good, above_bad, above_threshold : ndarray of int
        Dataset indices of those datapoints.
    n_defined, n_undefined : int
        Datapoints with a finite k-hat (the fractions' denominator) and with none (NaN).
    warning : str or None
        One sentence naming the datapoints above 0.5 or the threshold, or ``None``.
    """

    index: np.ndarray
    ess_fraction: np.ndarray
    khat: np.ndarray
    good: float
    bad: float
    threshold: float
    fraction_above_good: float
    fraction_above_bad: float
    above_good: np.ndarray
    above_bad: np.ndarray
    warning: Optional[str]
    fraction_above_threshold: float = float("nan")
    above_threshold: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    n_defined: int = 0
    n_undefined: int = 0

    def to_frame(self) -> pd.DataFrame:
        """One row per datapoint: ``index``, ``ess_fraction``, ``khat``."""
        return pd.DataFrame({"index": self.index, "ess_fraction": self.ess_fraction, "khat": self.khat})

    def summary(self) -> dict:
        """Plain-Python summary (JSON-ready)."""
        finite = np.isfinite(self.khat)
        return {
            "mean_ess_fraction": float(np.mean(self.ess_fraction)),
            "min_ess_fraction": float(np.min(self.ess_fraction)),
            "max_khat": float(np.max(self.khat[finite])) if finite.any() else None,
            "khat_threshold": self.threshold if np.isfinite(self.threshold) else None,
            "fraction_khat_above_threshold": self.fraction_above_threshold,
            "indices_khat_above_threshold": [int(i) for i in self.above_threshold],
            "n_khat_defined": self.n_defined,
            "n_khat_undefined": self.n_undefined,
            "fraction_khat_above_0.5": self.fraction_above_good,
            "fraction_khat_above_0.7": self.fraction_above_bad,
            "indices_khat_above_0.5": [int(i) for i in self.above_good],
            "indices_khat_above_0.7": [int(i) for i in self.above_bad],
        }


def weight_diagnostics(log_w: torch.Tensor, *, index: Optional[Sequence[int]] = None) -> WeightDiagnostics:
    """ESS/K and PSIS k-hat per datapoint, with a warning naming untrustworthy datapoints.

    Parameters
    ----------
    log_w : Tensor, shape (N, K)
    index : sequence of int, optional
        Dataset index of each row, used to name datapoints in the warning.

    Returns
    -------
    WeightDiagnostics

    Notes
    -----
    k-hat estimates the shape of a generalised Pareto tail fitted to the largest weights: the
    weights have ``1/k`` finite moments. Above 0.5 the variance is infinite, so the IWAE/JVI
    bias and variance expansions (which need ``mu2``, ``mu3``) do not apply; above 0.7 the
    estimate itself converges impractically slowly [1]_.
    """
    from .. import estimators

    lw = torch.as_tensor(log_w).to("cpu", torch.float64)
    n, k = lw.shape
    ess = _to_numpy(estimators.ess(lw)) / k
    # Below K = 21 the tail is too short for a Pareto fit: k-hat is NaN, without psis_khat's warning.
    khat = _to_numpy(estimators.psis_khat(lw)) if khat_defined(k) else np.full(n, np.nan)
    return summarize_weights(ess, khat, k, index=index)


def summarize_weights(ess_fraction: np.ndarray, khat: np.ndarray, k: int, *,
                      index: Optional[Sequence[int]] = None) -> WeightDiagnostics:
    """:class:`WeightDiagnostics` from per-datapoint ESS/K and k-hat (e.g. computed block by block).

    Parameters
    ----------
    ess_fraction, khat : ndarray, shape (N,)
    k : int
        Samples per datapoint they were computed from.
    index : sequence of int, optional
        Dataset index of each row, used to name datapoints in the warning.
    """
    from .. import estimators

    n = len(khat)
    idx = np.arange(n) if index is None else np.asarray(index, dtype=np.int64)
    ess = np.asarray(ess_fraction, dtype=np.float64)
    khat = np.asarray(khat, dtype=np.float64)
    good, bad = float(estimators.KHAT_GOOD), float(estimators.KHAT_BAD)
    threshold = float(estimators.khat_threshold(int(k)))
    finite = np.isfinite(khat)
    defined = int(finite.sum())
    count = max(defined, 1)
    above_good = idx[finite & (khat > good)]
    above_bad = idx[finite & (khat > bad)]
    above_threshold = idx[finite & (khat > threshold)]
    return WeightDiagnostics(
        index=idx,
        ess_fraction=ess,
        khat=khat,
        good=good,
        bad=bad,
        threshold=threshold,
        fraction_above_good=float(above_good.size / count),
        fraction_above_bad=float(above_bad.size / count),
        above_good=above_good,
        above_bad=above_bad,
        warning=_warning(above_good, above_threshold, threshold, defined, n - defined, k),
        fraction_above_threshold=float(above_threshold.size / count),
        above_threshold=above_threshold,
        n_defined=defined,
        n_undefined=n - defined,
    )


def _warning(above_good: np.ndarray, above_threshold: np.ndarray, threshold: float, defined: int, undefined: int,
             k: int) -> Optional[str]:
    """One sentence naming the datapoints whose k-hat exceeds 0.5 or the K-aware threshold, or ``None``."""
    if not (above_good.size or above_threshold.size):
        return None
    levels = [(f"{0.5:g}", above_good),
              (f"{threshold:.3g} (the reliability threshold min(1 - 1/log10(K), 0.7) at K = {k})", above_threshold)]
    levels = [(text, where) for text, where in levels if where.size]
    parts = [f"PSIS k-hat > {levels[0][0]} at {levels[0][1].size} of {defined} datapoints ({_name_indices(levels[0][1])})"]
    parts += [f"> {text} at {where.size} ({_name_indices(where)})" for text, where in levels[1:]]
    if undefined:
        parts.append(f"{undefined} datapoint{' has' if undefined == 1 else 's have'} no k-hat (not counted in these "
                     "fractions)")
    return (", ".join(parts) + f" (k-hat estimated from K = {k} samples per datapoint): above the threshold the "
            "estimates are unreliable and above 0.5 the importance weights have infinite variance, so the IWAE/JVI "
            "asymptotics, theory curves and standard errors do not hold there; more samples will not fix it: improve "
            "the proposal q(z | x) or report those datapoints' estimates as unreliable (per-datapoint k-hat in the "
            "psis_khat / khat column)")
