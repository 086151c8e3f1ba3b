"""Importance-weight diagnostics on the full pool: ESS/K and PSIS k-hat per datapoint, and their summary.

:func:`weight_diagnostics` computes them from a ``[N, K]`` log-weight matrix;
:func:`summarize_weights` assembles :class:`WeightDiagnostics` from per-datapoint values computed
elsewhere (e.g. block by block).

References
----------
.. [1] A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry, "Pareto smoothed importance
   sampling", JMLR 25 (2024) (k-hat thresholds 0.5 and 0.7).
"""
from __future__ import annotations

from dataclasses import dataclass
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
        Thresholds 0.5 (finite variance below it) and 0.7 (unreliable above it).
    threshold : float
        The sample-size dependent threshold ``min(1 - 1/log10(K), 0.7)`` of Vehtari et al.
    fraction_above_good, fraction_above_bad : float
        Fractions of datapoints (with a finite k-hat) above 0.5 and 0.7.
    above_good, above_bad : ndarray of int
        Dataset indices of those datapoints.
    warning : str or None
        One sentence naming the datapoints above 0.5, or ``None``.
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
            "khat_threshold": self.threshold,
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
    finite = np.isfinite(khat)
    count = max(int(finite.sum()), 1)
    above_good = idx[finite & (khat > good)]
    above_bad = idx[finite & (khat > bad)]
    warning = None
    if above_good.size:
        warning = (
            f"PSIS k-hat > {good:g} at {above_good.size} of {n} datapoints ({_name_indices(above_good)})"
            + (f", > {bad:g} at {above_bad.size} ({_name_indices(above_bad)})" if above_bad.size else "")
            + f" (k-hat estimated from K = {k} samples per datapoint): their importance weights have "
            "infinite variance, so the IWAE/JVI asymptotics, theory curves and standard errors do not hold "
            "there; more samples will not fix it: improve the proposal q(z | x) or report those datapoints' "
            "estimates as unreliable (per-datapoint k-hat in the psis_khat / khat column)"
        )
    return WeightDiagnostics(
        index=idx,
        ess_fraction=ess,
        khat=khat,
        good=good,
        bad=bad,
        threshold=float(estimators.khat_threshold(k)) if k >= 2 else bad,
        fraction_above_good=float(above_good.size / count),
        fraction_above_bad=float(above_bad.size / count),
        above_good=above_good,
        above_bad=above_bad,
        warning=warning,
    )
