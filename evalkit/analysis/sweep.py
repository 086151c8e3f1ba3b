"""``evalkit.analysis.sweep``: bias, variance and weight diagnostics over K from ONE sample pool.

A sweep answers the questions a single estimate cannot: how far is the estimate at the K you
used still from log p(x), would more K or a debiased estimator help, and can the importance
weights be trusted at all? It draws ``K_max = max(ks)`` samples per datapoint once (or takes a
precomputed ``[N, K]`` log-weight matrix from any tool) and evaluates every estimator at every
k on the ``floor(K_max / k)`` disjoint groups of k columns (:mod:`evalkit.analysis.diagnostics`), so the
whole sweep costs about one model pass at ``K_max``.
"""
from __future__ import annotations

import json
import math
import os
import platform
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch

from . import diagnostics as dg
from ..sampling import distributed
from ..sampling.blocks import block_rows, check_block_size, engine_blocks, reissue_warnings
from ..sampling.engine import _progress_bar
from ..errors import DataError, InputError
from ..output.files import render

DEFAULT_ESTIMATORS = ("iwae", "jvi1", "jvi2")

#: Default pool size for a model when ``ks`` is not given (the usual benchmark K).
DEFAULT_K_MAX = 5000

#: Smallest k used by the ``a + b/k + c/k^2`` fit by default (the expansion is asymptotic).
DEFAULT_FIT_MIN_K = 10

#: Version of the JSON document written by :meth:`SweepResult.to_json`.
JSON_SCHEMA_VERSION = 1

TABLE_COLUMNS = [
    "estimator", "k", "groups", "estimate", "estimate_se", "mc_se", "bias", "bias_se",
    "variance", "variance_se", "rmse", "rmse_se", "gap_to_kmax", "gap_to_kmax_se", "reference", "note",
]


FIT_COLUMNS = [
    "estimator", "a", "a_se", "a_minus_reference", "a_minus_reference_se", "b", "c", "k_min", "k_max", "points", "note",
    "bias_slope", "bias_slope_se", "bias_slope_ks", "bias_slope_note",
]


@dataclass(frozen=True)
class Reference:
    """What the bias is measured against.

    Attributes
    ----------
    kind : {"exact", "user", "pool"}
        The model's exact ``log_marginal``; a user-supplied number or per-datapoint values; or,
        failing both, the best estimate available at ``K_max`` on the same samples.
    label : str
        Human-readable description, printed in every table and plot.
    values : ndarray, shape (N,)
        Reference log p(x_n) per datapoint (nats).
    estimator : str or None
        For ``kind == "pool"``, the estimator used at ``K_max``.
    k : int or None
        For ``kind == "pool"``, ``K_max``.
    """

    kind: str
    label: str
    values: np.ndarray = field(repr=False)
    estimator: Optional[str] = None
    k: Optional[int] = None

    @property
    def short(self) -> str:
        """Label for a table column: ``exact``, ``user`` or ``pool:jvi2@K=5000``."""
        if self.kind == "pool":
            return f"pool:{self.estimator}@K={self.k}"
        return self.kind

    @property
    def mean(self) -> float:
        """Mean reference value over datapoints."""
        return float(np.mean(self.values))


@dataclass
class SweepResult:
    """Everything a sweep measured; tables are DataFrames, figures come from :mod:`evalkit.output.plots`.

    Attributes
    ----------
    table : DataFrame
        One row per (estimator, k) that was evaluated; columns ``estimator, k, groups,
        estimate, estimate_se, mc_se, bias, bias_se, variance, variance_se, rmse, rmse_se,
        gap_to_kmax, gap_to_kmax_se, reference, note`` (see
        :func:`evalkit.analysis.diagnostics.bias_variance` for the definitions). ``gap_to_kmax`` is
        ``mean_n (m_n - best_n)`` with ``best_n`` the least biased estimate at ``K_max`` on the
        same samples: paired, so its SE leaves out the Monte Carlo noise that every k shares
        (it equals ``bias`` when that estimate is the reference). It measures the shape of the
        bias curve precisely, up to ``best``'s own (higher-order) bias.
        Cells where ``k < min_k`` of an estimator are absent (listed in ``notes``).
    theory : DataFrame
        IWAE asymptotic bias and variance from the pool's sample moments (columns ``k, bias,
        variance, bias_2, variance_2``; see :func:`evalkit.analysis.diagnostics.iwae_theory`).
    fits : DataFrame
        Per estimator, the ``a + b/k + c/k^2`` fit: ``estimator, a, a_se, b, c, k_min, k_max,
        points, note``; ``a`` is the extrapolated mean log p(x) (:func:`evalkit.analysis.diagnostics.fit_inverse_k`)
        and ``a_minus_reference`` (with a paired SE) its distance from the reference.
        Also the measured log-log slope of the bias over the ks ``>= fit_min_k`` where it is
        resolved, from the paired ``gap_to_kmax``: ``bias_slope, bias_slope_se, bias_slope_ks,
        bias_slope_note`` (:func:`evalkit.analysis.diagnostics.bias_slope`; asymptotically -1 for IWAE and
        -(m+1) for JVI-m).
    weights : WeightDiagnostics
        ESS/K and PSIS k-hat per datapoint on the full pool, with summary and warning.
    reference : Reference
    per_datapoint : DataFrame
        Long table ``estimator, k, index, mean, variance, reference`` (group mean and variance
        per datapoint).
    metadata : dict
        N, K_max, ks, estimators, seed, model, data, versions, timings.
    notes : list of str
        Cells that were skipped and why.
    warnings : list of str
        Warnings (also issued with :mod:`warnings`), e.g. datapoints with k-hat > 0.5.
    log_weights : Tensor or None
        The ``[N, K_max]`` pool when asked for with ``keep_log_weights=True``.
    """

    table: pd.DataFrame
    theory: pd.DataFrame
    fits: pd.DataFrame
    weights: dg.WeightDiagnostics
    reference: Reference
    per_datapoint: pd.DataFrame = field(repr=False)
    metadata: Dict[str, Any] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    log_weights: Optional[torch.Tensor] = field(default=None, repr=False)

    # -- text -----------------------------------------------------------------------------------

    def headline(self) -> str:
        """One line: what was swept, on what, against which reference."""
        m = self.metadata
        return (
            f"sweep over K: {m.get('data', 'log-weights')}, N = {m['n']}, K_max = {m['k_max']}, "
            f"seed = {m.get('seed')}; reference: {self.reference.label}"
        )

    def display_table(self) -> pd.DataFrame:
        """The table with ``value ± SE`` strings, rounded to the SE (for Markdown and terminals)."""
        t = self.table
        frame = pd.DataFrame(
            {
                "estimator": t["estimator"],
                "k": t["k"],
                "groups": t["groups"],
                "estimate": [_pm(v, s) for v, s in zip(t["estimate"], t["estimate_se"])],
                "MC SE": [_num(v) for v in t["mc_se"]],
                "bias": [_pm(v, s) for v, s in zip(t["bias"], t["bias_se"])],
                "variance": [_pm(v, s) for v, s in zip(t["variance"], t["variance_se"])],
                "RMSE": [_pm(v, s) for v, s in zip(t["rmse"], t["rmse_se"])],
                "gap to K_max (paired)": [_pm(v, s) for v, s in zip(t["gap_to_kmax"], t["gap_to_kmax_se"])],
                "note": t["note"],
            }
        )
        if self.reference.kind == "pool":  # the gap is the bias then
            frame = frame.drop(columns=["gap to K_max (paired)"])
        return frame

    def fits_display(self) -> pd.DataFrame:
        """The fits with ``a ± SE`` strings."""
        f = self.fits
        return pd.DataFrame(
            {
                "estimator": f["estimator"],
                "log p(x) extrapolated (a)": [_pm(v, s) for v, s in zip(f["a"], f["a_se"])],
                "a - reference (paired)": [_pm(v, s) for v, s in zip(f["a_minus_reference"],
                                                                     f["a_minus_reference_se"])],
                "b (1/K)": [_num(v) for v in f["b"]],
                "c (1/K^2)": [_num(v) for v in f["c"]],
                "ks": [f"{lo}..{hi} ({p} points)" if p else "-" for lo, hi, p in zip(f["k_min"], f["k_max"], f["points"])],
                "note": f["note"],
                "|bias| slope": [_pm(v, s) for v, s in zip(f["bias_slope"], f["bias_slope_se"])],
                "slope ks": [ks or "-" for ks in f["bias_slope_ks"]],
            }
        )

    def weights_text(self) -> str:
        """One or two lines on whether the importance weights can be trusted."""
        s = self.weights.summary()
        text = (
            f"weights at K = {self.metadata['k_max']}: mean ESS/K = {s['mean_ess_fraction']:.3g}; "
            f"PSIS k-hat > 0.5 for {s['fraction_khat_above_0.5']:.1%}, > 0.7 for "
            f"{s['fraction_khat_above_0.7']:.1%} of datapoints"
        )
        if self.weights.warning:
            text += f"\nwarning: {self.weights.warning}"
        return text

    def to_markdown(self) -> str:
        """The sweep table, the fits and the weight summary as Markdown."""
        parts = [
            f"**{self.headline()}**",
            "",
            _bias_sentence(self.reference),
            "",
            self.display_table().to_markdown(index=False),
            "",
            "Extrapolation a + b/K + c/K^2 (weighted least squares; SE over datapoints):",
            "",
            self.fits_display().to_markdown(index=False),
            "",
            self.weights_text().replace("\n", "  \n"),
        ]
        if self.notes:
            parts += ["", "Notes:", ""] + [f"* {note}" for note in self.notes]
        return "\n".join(parts) + "\n"

    def to_table(self) -> str:
        """Plain text for a terminal."""
        text = [self.headline(), _bias_sentence(self.reference), self.display_table().to_string(index=False), "",
                "extrapolation a + b/K + c/K^2:", self.fits_display().to_string(index=False), "",
                self.weights_text()]
        text += [f"note: {note}" for note in self.notes]
        return "\n".join(text) + "\n"

    def to_csv(self) -> str:
        """The full-precision table as CSV."""
        return self.table.to_csv(index=False, float_format="%.17g")

    def to_dict(self) -> Dict[str, Any]:
        """The JSON document as a dict (NaN becomes ``None``)."""
        return {
            "schema_version": JSON_SCHEMA_VERSION,
            "metadata": _jsonable(self.metadata),
            "reference": {"kind": self.reference.kind, "label": self.reference.label,
                          "estimator": self.reference.estimator, "mean": _jsonable(self.reference.mean)},
            "table": _records(self.table),
            "theory_iwae": _records(self.theory),
            "fits": _records(self.fits),
            "weights": _jsonable(self.weights.summary()),
            "notes": list(self.notes),
            "warnings": list(self.warnings),
        }

    def to_json(self, *, indent: int = 2) -> str:
        """JSON text (full precision, NaN as null)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def format(self, fmt: str) -> str:
        """Render as ``table``, ``json``, ``csv`` or ``markdown``."""
        writers = {"table": self.to_table, "json": self.to_json, "csv": self.to_csv, "markdown": self.to_markdown}
        return render(fmt, writers)

    def __str__(self) -> str:
        return self.to_table()

    def _repr_html_(self) -> str:
        return (f"<p><b>{self.headline()}</b></p>" + self.display_table().to_html(index=False)
                + f"<p>{self.weights_text()}</p>".replace("\n", "<br>"))

    # -- figures and files ----------------------------------------------------------------------

    def figures(self) -> Dict[str, Any]:
        """The four standard figures as matplotlib Figures (see :func:`evalkit.output.plots.sweep_figures`)."""
        from ..output.plots import sweep_figures

        return sweep_figures(self)

    def save(self, out: Union[str, os.PathLike], *, formats: Sequence[str] = ("png", "svg", "pdf"),
             per_datapoint: bool = False, overwrite: bool = False) -> Dict[str, Path]:
        """Write tables (CSV, JSON, Markdown) and figures to directory ``out``; see
        :func:`evalkit.output.report.write_sweep`."""
        from ..output.report import write_sweep

        return write_sweep(self, out, formats=formats, per_datapoint=per_datapoint, overwrite=overwrite)

    def report(self, out: Union[str, os.PathLike], *, title: Optional[str] = None, command: Optional[str] = None,
               overwrite: bool = False) -> Dict[str, Path]:
        """Write a self-contained Markdown + HTML report to ``out``; see :func:`evalkit.output.report.write_report`."""
        from ..output.report import write_report

        return write_report(self, out, title=title, command=command, overwrite=overwrite)


def sweep(
    model_or_log_weights: Any,
    ks: Optional[Sequence[int]] = None,
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    reference: Any = None,
    seed: int = 0,
    *,
    data: Any = None,
    factory: Optional[str] = None,
    prefix: Optional[str] = None,
    allow_pickle: bool = False,
    split: str = "test",
    binarize: str = "none",
    indices: Optional[Sequence[int]] = None,
    cache: Optional[Union[str, os.PathLike]] = None,
    cache_shard_size: Optional[int] = None,
    fit_min_k: int = DEFAULT_FIT_MIN_K,
    keep_log_weights: bool = False,
    max_elements: int = dg.DEFAULT_MAX_ELEMENTS,
    threads: Optional[int] = None,
    progress: Optional[bool] = None,
    block_size: Optional[int] = None,
    **engine_options: Any,
) -> Optional[SweepResult]:
    """Measure bias, variance and RMSE of estimators over K from one pool of samples.

    Parameters
    ----------
    model_or_log_weights : Module, path, Tensor or ndarray
        A model (anything with ``log_weights``), a checkpoint path (loaded with
        :func:`evalkit.load_model`; ``factory``, ``prefix``, ``allow_pickle`` are passed on), or
        a precomputed ``[N, K]`` log-weight matrix from any tool (rows = datapoints, i.i.d.
        columns; torch or numpy). For a matrix the pool is all ``K`` columns.
    ks : sequence of int, optional
        Strictly increasing positive sample sizes. Default: the 1-2-5 ladder
        (:func:`evalkit.analysis.diagnostics.ladder`) up to ``K_max`` (the matrix width, or
        ``DEFAULT_K_MAX = 5000`` for a model). For a model ``K_max = max(ks)``.
    estimators : sequence of str
        Names from :func:`evalkit.estimators.available`. A cell with ``k < min_k`` of an
        estimator is skipped (and listed in ``notes``).
    reference : float, array-like of shape (N,), or path, optional
        What the bias is measured against. The model's exact ``log_marginal`` is used when it
        has one (then ``reference`` must be ``None``). Otherwise a number (same for every
        datapoint), per-datapoint values, or a ``.npy``/``.pt``/``.csv``/``.txt`` file of
        them. Failing all, the least biased requested estimator at ``K_max`` on the same samples
        is used and labelled so in every table and plot.
    seed : int
        Seed of the engine's per-datapoint random streams (and Bernoulli binarisation). Unused
        for a log-weight matrix.
    data : Tensor, ndarray, path or str
        The data for a model (required then): ``[N, D]``, a file, or ``"digits"``; ``split``
        and ``binarize`` as in :func:`evalkit.sources.inputs.resolve_data`. Not allowed with a matrix.
    indices : sequence of int, optional
        Evaluate only these datapoints (rows of the data). Each keeps the random stream of its
        dataset index, so the numbers equal those rows of a full sweep; tables name them by
        these indices.
    cache, cache_shard_size : optional
        Compute the pool through the resumable on-disk cache of
        :func:`evalkit.sampling.cache.cached_log_weights` (as in :func:`evalkit.analysis.estimate`); an
        interrupted sweep resumes bitwise identically. Not with ``indices``.
    fit_min_k : int
        Start of the asymptotic range: the ``a + b/k + c/k^2`` fit and the |bias| slope use
        the ks ``>= fit_min_k`` (default 10).
    keep_log_weights : bool
        Keep the ``[N, K_max]`` pool on the result.
    max_elements : int
        Memory bound of the statistical half (log-weights per estimator call and thread); no
        effect on the numbers.
    threads : int, optional
        CPU threads for the statistical half (one (estimator, k) cell per thread at a time)
        and, for a model, the engine's ``threads``. Default: torch's thread count, at most 8,
        for the statistics and the engine's own default. No effect on the numbers.
    progress : bool, optional
        Progress bars on stderr for the model pass and the statistics: True always, False
        never, None (default) when stderr is a terminal.
    block_size : int, optional
        Datapoints whose pool is computed and reduced at a time (default
        :func:`evalkit.sampling.blocks.block_rows` for ``K_max``: within about 128 MiB). Without
        ``keep_log_weights``, ``cache`` or torchrun the ``[N, K_max]`` pool is never held
        whole. No effect on the numbers, bit for bit.
    **engine_options
        Passed to :func:`evalkit.log_weights`: ``batch_size``, ``k_chunk``, ``memory_budget``,
        ``device``, ``dtype``, ``compile``, ``tf32``. Not allowed with a matrix.

    Returns
    -------
    SweepResult, or None
        Under ``torchrun`` the processes split the model pass over the datapoints (as in
        :func:`evalkit.analysis.estimate`); rank 0 gathers the pool and returns the result, equal to a
        single-process run's, and the other ranks return None.

    Notes
    -----
    Cost: one model pass at ``K_max`` plus, per estimator and k, one estimator pass over the
    ``N x G k <= N x K_max`` log-weights. Statistics at each k are defined in
    :mod:`evalkit.analysis.diagnostics`. Groups at different k reuse the same samples, so rows of the
    table are correlated; every SE is computed over datapoints, which are independent.

    Examples
    --------
    >>> import numpy as np, evalkit
    >>> rng = np.random.default_rng(0)
    >>> log_w = np.log(rng.gamma(1.0, size=(200, 1000)))   # log p = log 1 = 0
    >>> result = evalkit.sweep(log_w, ks=[1, 10, 100, 1000], reference=0.0)
    >>> result.table[["estimator", "k", "bias", "bias_se"]]   # doctest: +SKIP
    """
    started = time.perf_counter()
    is_matrix = isinstance(model_or_log_weights, (torch.Tensor, np.ndarray))
    ks_given = None if ks is None else _check_ks(ks)
    chosen = _check_estimators(estimators)
    fit_min_k = dg._positive_int(fit_min_k, "fit_min_k")
    check_block_size(block_size)

    model_obj = None
    x = None
    if is_matrix:
        extra = [name for name, value in (("data", data), ("indices", indices), ("cache", cache),
                                          ("cache_shard_size", cache_shard_size)) if value is not None]
        extra += [name for name, value in engine_options.items() if value is not None]
        if extra:
            raise InputError(
                f"{', '.join(extra)} only apply when sweeping a model; drop them for a log-weight matrix"
            )
        log_w = check_log_weights(model_or_log_weights)
        k_max = log_w.shape[1]
        if ks_given is not None and ks_given[-1] > k_max:
            raise InputError(
                f"k = {ks_given[-1]} exceeds the {k_max} log-weights per datapoint; use ks up to {k_max}"
            )
        user_ref = _user_reference(reference, log_w.shape[0])
        seconds_model = 0.0
    else:
        from ..sources.inputs import resolve_data, resolve_model

        if data is None:
            raise InputError("a sweep of a model needs data; pass data= a tensor, a data file or 'digits'")
        model_obj = resolve_model(model_or_log_weights, factory=factory, prefix=prefix, allow_pickle=allow_pickle)
        if reference is not None and hasattr(model_obj, "log_marginal"):
            raise InputError(
                "this model has an exact log_marginal, which is the reference; drop reference="
            )
        x = resolve_data(data, model=model_obj, split=split, binarize=binarize, seed=seed)
        under_torchrun = distributed.launched_by_torchrun()
        if under_torchrun and cache is not None:
            raise InputError("a cache cannot be shared by torchrun's processes; run one process with the cache, "
                             "or drop the cache under torchrun.")
        if under_torchrun and indices is not None:
            raise InputError("under torchrun the processes split the rows of the data; pass the rows you want as "
                             "data, not indices=")
        if indices is not None:
            if cache is not None:
                raise InputError("a cache always covers the whole dataset; drop indices= or cache=")
            indices = _check_indices(indices, x.shape[0])
            x = x[torch.from_numpy(indices)]
        user_ref = _user_reference(reference, x.shape[0])  # checked before the long model pass
        k_max = ks_given[-1] if ks_given is not None else DEFAULT_K_MAX
        if threads is not None:
            engine_options["threads"] = threads
        engine_options["progress"] = progress
        t0 = time.perf_counter()
        log_w = None  # computed block by block below unless the whole pool is needed
        if cache is not None:
            from ..sampling.cache import cached_log_weights

            log_w = cached_log_weights(model_obj, x, k_max, cache_dir=cache, seed=seed,
                                       shard_size=cache_shard_size, **engine_options)
        elif under_torchrun:
            # Each process computes a range of datapoints; rank 0 gathers the pool and does the rest.
            log_w = distributed.log_weights(model_obj, x, k_max, seed=seed, **engine_options)
            if log_w is None:
                return None
        elif keep_log_weights:
            from ..sampling.engine import log_weights as compute_log_weights

            log_w = compute_log_weights(model_obj, x, k_max, seed=seed, indices=indices, **engine_options)
        seconds_model = time.perf_counter() - t0
        if log_w is not None:
            log_w = check_log_weights(log_w)

    t_stats = time.perf_counter()
    ks_used = ks_given if ks_given is not None else dg.ladder(k_max)
    n = log_w.shape[0] if log_w is not None else x.shape[0]
    index = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)

    # Pass 1: per-datapoint sufficient statistics (mean, variance over groups) of every cell.
    notes: List[str] = []
    cells = []
    for est in chosen:
        skipped = [k for k in ks_used if k < est.min_k]
        if skipped:
            notes.append(f"{est.name} needs k >= {est.min_k}: skipped k = {', '.join(map(str, skipped))}")
        cells += [(est, k) for k in ks_used if k >= est.min_k]
    # Blocks of datapoints: views of the pool when it is here, else computed by the engine one
    # block at a time (keyed by dataset index: bitwise the rows of a whole run) and freed after
    # use, so that memory does not grow with N x K_max. Every statistic below is per datapoint.
    rows_per_block = int(block_size) if block_size else block_rows(n, k_max)
    if log_w is not None:
        blocks = ((start, log_w[start:start + rows_per_block]) for start in range(0, n, rows_per_block))
    else:
        blocks = engine_blocks(model_obj, x, k_max, seed=seed, rows=rows_per_block, engine_options=engine_options,
                               indices=indices)
    bar = _progress_bar(progress, n * sum((k_max // k) * k for _, k in cells), desc="statistics")
    parts: List[_BlockStatistics] = []
    cell_warnings: list = []
    pool_warnings: list = []
    seconds_engine = 0.0
    with bar:
        while True:
            t0 = time.perf_counter()
            try:
                start, block = next(blocks)
            except StopIteration:
                break
            seconds_engine += time.perf_counter() - t0
            # The estimators name rows of the chunk of groups they were given, which means nothing
            # to the caller: their warnings are collected here (in this thread; worker threads only
            # add to the list) and issued below once each, without those positions.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                block_moments = _cell_moments(block, cells, max_elements, threads, bar)
                # The least biased estimate at K_max (a cell already when K_max is among the ks):
                # the reference when there is no other, and the anchor of the paired gap column.
                best_name, block_best = _pool_best(chosen, k_max, block, block_moments, max_elements)
            cell_warnings += caught
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                block_weights = dg.weight_diagnostics(block)
                block_r2, block_r3 = dg.moment_ratios(block)
            pool_warnings += [(start, record) for record in caught]
            parts.append(_BlockStatistics(block_moments, block_best, block_weights.ess_fraction, block_weights.khat,
                                          block_r2, block_r3))
            del block
    if log_w is None:
        seconds_model = seconds_engine
    # Per-datapoint results of all blocks, in row order: (mean, var) of every cell, then the rest.
    moments = {key: (np.concatenate([p.moments[key][0] for p in parts]),
                     np.concatenate([p.moments[key][1] for p in parts]), groups)
               for key, (_, _, groups) in parts[0].moments.items()}
    best_values = np.concatenate([p.best for p in parts])
    ref = _resolve_reference(user_ref, n, k_max, model_obj, x, (best_name, best_values))

    # Pass 2: dataset-level statistics, fits and slopes.
    rows: List[Dict[str, Any]] = []
    long_parts: List[pd.DataFrame] = []
    fit_rows: List[Dict[str, Any]] = []
    for est in chosen:
        means, ses, fit_ks = [], [], []
        for k in ks_used:
            if (est.name, k) not in moments:
                continue
            group_mean, group_var, groups = moments[est.name, k]
            stats = dg.summarize_moments(group_mean, group_var, groups, ref.values, k=k, index=index)
            row = {name: getattr(stats, name) for name in TABLE_COLUMNS if hasattr(stats, name)}
            gap, gap_se = dg.mean_se(group_mean - best_values)
            row.update(estimator=est.name, reference=ref.short, gap_to_kmax=gap, gap_to_kmax_se=gap_se)
            if ref.kind == "pool" and est.name == ref.estimator and k == k_max:
                row["note"] = "; ".join(filter(None, [row["note"], "is the reference: bias 0 by construction"]))
            rows.append(row)
            long_parts.append(pd.DataFrame({"estimator": est.name, "k": k, "index": index, "mean": group_mean,
                                            "variance": group_var, "reference": ref.values}))
            if k >= fit_min_k:
                means.append(group_mean)
                ses.append(stats.estimate_se)
                fit_ks.append(k)
        fit = dg.fit_inverse_k(fit_ks, np.stack(means, axis=1) if means else np.empty((n, 0)), ses,
                               reference=ref.values)
        mine = [row for row in rows if row["estimator"] == est.name and row["k"] >= fit_min_k]
        # Slopes from the paired gap: its SE leaves out the noise that all k share.
        slope = dg.bias_slope([r["k"] for r in mine], [r["gap_to_kmax"] for r in mine],
                              [r["gap_to_kmax_se"] for r in mine])
        fit_rows.append({"estimator": est.name, "a": fit.a, "a_se": fit.a_se,
                         "a_minus_reference": fit.a_minus_reference,
                         "a_minus_reference_se": fit.a_minus_reference_se, "b": fit.b, "c": fit.c,
                         "k_min": fit.ks[0] if fit.ks else None, "k_max": fit.ks[-1] if fit.ks else None,
                         "points": len(fit.ks), "note": fit.note, "bias_slope": slope.slope,
                         "bias_slope_se": slope.slope_se,
                         "bias_slope_ks": ",".join(map(str, slope.ks)), "bias_slope_note": slope.note})

    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    theory = dg.iwae_theory(np.concatenate([p.r2 for p in parts]), np.concatenate([p.r3 for p in parts]), ks_used)
    weights = dg.summarize_weights(np.concatenate([p.ess_fraction for p in parts]),
                                   np.concatenate([p.khat for p in parts]), k_max, index=index)
    reissue_warnings(pool_warnings)
    issued: List[str] = []
    for category, text in _without_positions(cell_warnings):
        issued.append(text)
        warnings.warn(text, category, stacklevel=2)
    if weights.warning:
        issued.append(weights.warning)
        warnings.warn(weights.warning, UserWarning, stacklevel=2)
    if n < 2:
        notes.append("one datapoint: standard errors over datapoints are undefined (NaN)")
    seconds_stats = time.perf_counter() - t_stats - (seconds_engine if log_w is None else 0.0)

    metadata = {
        "n": int(n),
        "k_max": int(k_max),
        "ks": [int(k) for k in ks_used],
        "estimators": [est.name for est in chosen],
        "seed": None if is_matrix else seed,
        "model": None if is_matrix else _describe(model_or_log_weights, model_obj),
        "data": "log-weight matrix" if is_matrix else _describe_data(data, split, binarize),
        "fit_min_k": fit_min_k,
        "versions": versions(),
        "seconds": {"log_weights": round(seconds_model, 3), "statistics": round(seconds_stats, 3),
                    "total": round(time.perf_counter() - started, 3)},
    }
    return SweepResult(
        table=table,
        theory=theory,
        fits=pd.DataFrame(fit_rows, columns=FIT_COLUMNS),
        weights=weights,
        reference=ref,
        per_datapoint=pd.concat(long_parts, ignore_index=True) if long_parts else pd.DataFrame(),
        metadata=metadata,
        notes=notes,
        warnings=issued,
        log_weights=log_w if keep_log_weights else None,
    )


class _BlockStatistics(NamedTuple):
    """Per-datapoint results of one block of rows: ``{(name, k): (mean, var, groups)}``, the pool's
    best estimate at K_max, ESS/K, k-hat and the weight-moment ratios (each of shape (rows,))."""

    moments: Dict[tuple, tuple]
    best: np.ndarray
    ess_fraction: np.ndarray
    khat: np.ndarray
    r2: np.ndarray
    r3: np.ndarray


#: Default upper bound on the threads of a sweep's statistical half.
_STAT_THREADS = 8


def _cell_moments(log_w: torch.Tensor, cells: list, max_elements: int, threads: Optional[int],
                  bar: Any) -> Dict[tuple, tuple]:
    """``{(name, k): (mean, var, groups)}`` for every (estimator, k) cell, on ``threads`` threads.

    The cells are independent and numpy releases the GIL inside its loops, so on a CPU with
    spare cores they run side by side (default: torch's thread count, like the engine); each
    cell is computed by one thread alone, so the numbers do not depend on the thread count.
    Small k first: there the estimators see the most rows and cost the most. ``bar`` (a tqdm
    bar) counts the log-weights evaluated.
    """
    import threading

    n = log_w.shape[0]
    lock = threading.Lock()  # tqdm's update is not safe from several threads at once

    def run(cell):
        est, k = cell
        values = dg.evaluate_groups(log_w, k, est.fn, max_elements=max_elements)
        with lock:
            bar.update(n * values.shape[1] * k)
        return dg.group_moments(values) + (values.shape[1],)

    order = sorted(cells, key=lambda cell: cell[1])
    # Each thread holds up to max_elements log-weights and the estimators' temporaries over them
    # (a few hundred MB at the default), so a many-core machine gets at most _STAT_THREADS.
    workers = max(1, min(int(threads or min(torch.get_num_threads(), _STAT_THREADS)), len(order)))
    if workers == 1:
        results = [run(cell) for cell in order]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers, thread_name_prefix="evalkit-sweep") as pool:
            results = list(pool.map(run, order))
    return {(est.name, k): result for (est, k), result in zip(order, results)}


# How evalkit's estimators name rows in a warning (arraykind.format_positions).
_POSITIONS = re.compile(r" in (?:rows \([\d, ]*\)(?:, \([\d, ]*\))*(?: and \d+ more)?|the only row)")


def _without_positions(records) -> List[tuple]:
    """``(category, text)`` of each distinct warning, its row positions replaced by "in some groups".

    The positions refer to a chunk of groups of one (estimator, k) cell; the table's notes name
    the datapoints whose estimates are not finite.
    """
    distinct: Dict[tuple, None] = {}
    for record in records:
        text = _POSITIONS.sub(" in some groups of k samples (the table notes name the datapoints whose "
                              "estimate is affected)", str(record.message), count=1)
        distinct.setdefault((record.category, "sweep statistics: " + text), None)
    return list(distinct)


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------


def check_log_weights(log_w: Any) -> torch.Tensor:
    """Validate a ``[N, K]`` log-weight matrix and return it as a float64 CPU tensor.

    Raises :class:`InputError` for a wrong shape, NaN or ``+inf`` entries, or a row whose
    weights are all zero (``-inf``). The caller's array is never modified.
    """
    tensor = torch.as_tensor(log_w) if not isinstance(log_w, np.ndarray) else torch.from_numpy(np.asarray(log_w))
    if tensor.ndim != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise InputError(
            f"log-weights must be a non-empty [N, K] matrix (one row per datapoint), got shape {tuple(tensor.shape)}"
        )
    if not (tensor.is_floating_point()):
        raise InputError(f"log-weights must be floating point, got dtype {tensor.dtype}; convert with .astype(float)")
    tensor = tensor.detach().to("cpu", torch.float64)
    if torch.isnan(tensor).any():
        rows = torch.nonzero(torch.isnan(tensor).any(dim=1)).flatten()[:5].tolist()
        raise InputError(f"log-weights contain NaN (rows {rows}); fix the tool that produced them")
    if torch.isposinf(tensor).any():
        raise InputError("log-weights contain +inf; every weight must be finite (log-weights < +inf)")
    dead = torch.isneginf(tensor).all(dim=1)
    if dead.any():
        rows = torch.nonzero(dead).flatten()[:5].tolist()
        raise InputError(f"every log-weight of rows {rows} is -inf (zero weight); drop those datapoints")
    return tensor


def load_log_weights(path: Union[str, os.PathLike]) -> torch.Tensor:
    """Load a ``[N, K]`` log-weight matrix from ``.npy``, ``.npz``, ``.pt`` or ``.csv``.

    ``.npz`` and ``.pt`` may hold one array or a dict with key ``"log_weights"``. ``.pt`` files
    are read with ``torch.load(weights_only=True)`` (no arbitrary pickles).
    """
    value = _load_array(path, what="log-weights")
    return check_log_weights(value)


def _load_array(path: Union[str, os.PathLike], *, what: str, key: str = "log_weights") -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file {str(path)!r} does not exist; check the path")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                names = list(archive.keys())
                if key in names:
                    return archive[key]
                if len(names) == 1:
                    return archive[names[0]]
                raise DataError(f"{str(path)!r} holds arrays {names}; name the {what} array {key!r}")
        if suffix == ".pt":
            value = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(value, dict):
                if key not in value:
                    raise DataError(f"{str(path)!r} holds a dict without key {key!r}; save the {what} tensor itself")
                value = value[key]
            return value
        if suffix in (".csv", ".txt"):
            return np.loadtxt(path, delimiter="," if suffix == ".csv" else None, dtype=np.float64, ndmin=1)
    except DataError:
        raise
    except Exception as exc:  # unreadable or corrupt file: one sentence, not a traceback
        raise DataError(f"cannot read {what} from {str(path)!r} ({type(exc).__name__}: {exc}); check the file") from None
    raise DataError(f"{what} file {str(path)!r} must end in .npy, .npz, .pt, .csv or .txt")


def _check_indices(indices: Any, n: int) -> np.ndarray:
    values = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices)
    if values.ndim != 1 or values.size == 0 or not np.issubdtype(values.dtype, np.integer):
        raise InputError(f"indices must be a non-empty 1-D sequence of integer row numbers, got {indices!r}")
    if values.min() < 0 or values.max() >= n:
        raise InputError(f"indices must lie in 0..{n - 1} (the data has {n} rows), got {int(values.min())}..{int(values.max())}")
    if np.unique(values).size != values.size:
        raise InputError("indices contain repeats; give each datapoint once")
    return values.astype(np.int64)


def _check_ks(ks: Sequence[int]) -> List[int]:
    try:
        values = list(ks)
    except TypeError:
        raise InputError(f"ks must be a sequence of positive integers, got {ks!r}") from None
    if not values:
        raise InputError("ks is empty; give at least one k, e.g. ks=[1, 10, 100]")
    for k in values:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"every k must be a positive integer, got {k!r} in ks")
    values = [int(k) for k in values]
    if any(b <= a for a, b in zip(values, values[1:])):
        raise InputError(f"ks must be strictly increasing, got {values}")
    return values


def _check_estimators(names: Sequence[str]) -> list:
    from .. import estimators as registry

    return registry.get_many(names)


def bias_order(name: str) -> int:
    """Order r of an estimator's bias O(K^-r): elbo 0, iwae 1, dvi 2, jviM M+1 (others 0)."""
    match = re.fullmatch(r"jvi(\d+)", name)
    if match:
        return int(match.group(1)) + 1
    return {"iwae": 1, "dvi": 2}.get(name, 0)


def _user_reference(reference: Any, n: int) -> Optional[Reference]:
    """A user-supplied reference (number, per-datapoint values or file) as a Reference, or None."""
    if reference is None:
        return None
    if isinstance(reference, (str, os.PathLike)):
        values = np.asarray(_as_float64(_load_array(reference, what="reference", key="reference")))
        source = f"from {reference}"
    elif isinstance(reference, (int, float, np.floating, np.integer)) and not isinstance(reference, bool):
        values = np.asarray(float(reference))
        source = f"{float(reference):.6g}"
    else:
        values = _as_float64(reference)
        source = "per-datapoint values"
    values = values.reshape(-1)
    if values.size == 1:
        values = np.full(n, float(values[0]))
    if values.shape != (n,):
        raise InputError(
            f"reference has {values.size} values for {n} datapoints; give one number or one value per datapoint"
        )
    if not np.all(np.isfinite(values)):
        raise InputError("reference values must be finite numbers (log p(x) in nats)")
    return Reference("user", f"user-supplied log p(x) ({source})", values)


def _resolve_reference(user_ref, n, k_max, model, x, pool_best) -> Reference:
    """Exact log p(x) when the model has one; else the user's reference; else the pool's best."""
    if model is not None and hasattr(model, "log_marginal"):
        with torch.inference_mode():
            values = _as_float64(model.log_marginal(x))
        if values.shape != (n,):
            raise InputError(f"model.log_marginal returned shape {values.shape}, expected ({n},)")
        return Reference("exact", "exact log p(x) of the model", values)
    if user_ref is not None:
        return user_ref
    best, values = pool_best
    label = (f"{best} at K = {k_max} on the same samples (no exact log p(x); "
             f"bias is relative to this estimate)")
    return Reference("pool", label, values, estimator=best, k=int(k_max))


def _pool_best(chosen, k_max, log_w, moments, max_elements) -> tuple:
    """The least biased requested estimator (or IWAE) at K_max on the whole pool, per datapoint."""
    from .. import estimators as registry

    candidates = [est for est in chosen if est.min_k <= k_max]
    if not any(est.name == "iwae" for est in candidates):
        candidates.append(registry.get("iwae"))
    best = max(candidates, key=lambda est: bias_order(est.name))
    if (best.name, k_max) in moments:
        values = moments[best.name, k_max][0]  # one group at K_max: its mean is the estimate
    else:
        values = dg.evaluate_groups(log_w, k_max, best.fn, max_elements=max_elements)[:, 0]
    return best.name, values


def _bias_sentence(ref: Reference) -> str:
    if ref.kind == "pool":
        return (f"Reference: {ref.label}. No exact log p(x) was available, so 'bias' is the difference "
                f"from this estimate; it understates the true bias by that estimate's own bias.")
    return f"Reference: {ref.label} (mean {ref.mean:.6g} nats)."


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------


def versions() -> Dict[str, str]:
    """Versions of evalkit, Python and the numerical libraries (for reports)."""
    import matplotlib
    import scipy

    from .. import __version__

    return {
        "evalkit": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "pandas": pd.__version__,
        "matplotlib": matplotlib.__version__,
        "platform": platform.platform(),
    }


def _as_float64(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"reference must be a number, per-datapoint values or a file path, got {type(values).__name__}") from None


def _describe(model: Any, model_obj: Any) -> str:
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    return type(model_obj).__name__


def _describe_data(data: Any, split: str, binarize: str) -> str:
    if isinstance(data, str) and data == "digits":
        text = f"digits ({split} split)"
    elif isinstance(data, (str, os.PathLike)):
        text = str(data)
    else:
        text = f"in-memory {type(data).__name__} {tuple(getattr(data, 'shape', ()))}"
    return text + (f", binarize={binarize}" if binarize != "none" else "")


def _num(value: float) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.4g}"


def _pm(value: float, se: float) -> str:
    """``value ± se`` with the value rounded to two significant digits of the SE."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if se is None or not math.isfinite(se):
        return f"{value:.6g}"
    if se == 0:
        return f"{value:.6g} ± 0"
    decimals = int(min(max(1 - math.floor(math.log10(se)), 0), 12))
    return f"{value:.{decimals}f} ± {se:.{decimals}f}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def _records(frame: pd.DataFrame) -> List[Dict[str, Any]]:
    return [_jsonable(row) for row in frame.to_dict(orient="records")]
