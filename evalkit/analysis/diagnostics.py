"""Bias, variance and weight diagnostics over K from one pool of log-weights (the names in one place).

Pure functions of a ``[N, K_max]`` log-weight matrix: no model, no devices, no I/O.
:func:`evalkit.analysis.sweep` strings them together (as ``dg.<name>``). They live in:

* :mod:`evalkit.analysis.groups` -- one pool serves every k: :func:`ladder`, :func:`group_columns`,
  :func:`evaluate_groups`, :func:`group_moments`, :func:`bias_variance`, :func:`summarize_moments`,
  :class:`BiasVariance`, :func:`mean_se`;
* :mod:`evalkit.analysis.asymptotics` -- IWAE theory over K and fits of it: :func:`moment_ratios`,
  :func:`iwae_theory`, :func:`fit_inverse_k` (:class:`AsymptoticFit`), :func:`bias_slope`
  (:class:`BiasSlope`);
* :mod:`evalkit.analysis.weights` -- ESS/K and PSIS k-hat per datapoint: :func:`weight_diagnostics`,
  :func:`summarize_weights`, :class:`WeightDiagnostics`.
"""
from __future__ import annotations

from .asymptotics import (AsymptoticFit, BiasSlope, bias_slope, fit_inverse_k, iwae_theory, moment_ratios,
                          valid_iwae_theory)
from .groups import (DEFAULT_MAX_ELEMENTS, BiasVariance, _positive_int, bias_variance, evaluate_groups,  # noqa: F401
                     group_columns, group_moments, ladder, mean_se, shared_columns_mc_se, summarize_moments)
from .weights import WeightDiagnostics, summarize_weights, weight_diagnostics

__all__ = [
    "DEFAULT_MAX_ELEMENTS", "AsymptoticFit", "BiasSlope", "BiasVariance", "WeightDiagnostics",
    "bias_slope", "bias_variance", "evaluate_groups", "fit_inverse_k", "group_columns", "group_moments",
    "iwae_theory", "ladder", "mean_se", "moment_ratios", "summarize_moments", "summarize_weights",
    "valid_iwae_theory", "weight_diagnostics",
]
