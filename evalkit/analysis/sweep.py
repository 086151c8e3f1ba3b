"""``evalkit.sweep``: bias, variance and weight diagnostics over K from ONE sample pool.

A sweep answers the questions a single estimate cannot: how far is the estimate at the K you
used still from log p(x), would more K or a debiased estimator help, and can the importance
weights be trusted at all? It takes ``K_max`` samples per datapoint from a log-weight source
once (a model's proposal through the engine, a matrix from any tool, ...) and evaluates every
estimator at every k on the ``floor(K_max / k)`` disjoint groups of k columns
(:mod:`evalkit.analysis.diagnostics`), so the whole sweep costs about one model pass at ``K_max``.

Two passes: per block of datapoints, the per-datapoint moments of every (estimator, k) cell
(:mod:`evalkit.analysis.pool_statistics`); then, over the whole dataset, the table, fits and
slopes (:func:`_estimator_rows`). Neither needs the whole ``[N, K_max]`` pool at once.
"""
from __future__ import annotations

import os
import time
import warnings
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch

from . import diagnostics as dg
from ..errors import InputError, ReferenceWarning, WeightWarning, user_stacklevel
from ..sampling.blocks import block_rows, check_block_size, reissue_warnings
from ..sources import ImportanceSamplingSource, LogWeightSource, load_log_weights, open_source  # noqa: F401 (load_log_weights re-exported)
from .reference import Reference, bias_order, reference_below_estimate, resolve_reference, user_reference  # noqa: F401 (bias_order re-exported)
from .pool_statistics import PoolStatistics, first_pass, without_positions
from .sweep_result import FIT_COLUMNS, TABLE_COLUMNS, SweepResult, versions
from .in_units import check_units, resolve_dims, units_note
from .provenance import provenance
from .tables import jsonable, provenance_metadata, quantity_metadata

DEFAULT_ESTIMATORS = ("iwae", "jvi1", "jvi2")

#: Default pool size for a model when ``ks`` is not given (the usual benchmark K).
DEFAULT_K_MAX = 5000

#: Smallest k used by the ``a + b/k + c/k^2`` fit by default (the expansion is asymptotic).
DEFAULT_FIT_MIN_K = 10


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
    split: Optional[str] = None,
    binarize: str = "none",
    rescale_levels: bool = False,
    quantity: Optional[str] = None,
    target: Optional[str] = None,
    method: str = "is",
    ais: Optional[Dict[str, Any]] = None,
    prior: Any = None,
    activation: Optional[str] = None,
    reference_ais: Optional[Dict[str, Any]] = None,
    indices: Optional[Sequence[int]] = None,
    cache: Optional[Union[str, os.PathLike]] = None,
    cache_shard_size: Optional[int] = None,
    fit_min_k: int = DEFAULT_FIT_MIN_K,
    keep_log_weights: bool = False,
    max_elements: int = dg.DEFAULT_MAX_ELEMENTS,
    threads: Optional[int] = None,
    progress: Optional[bool] = None,
    block_size: Optional[int] = None,
    units: str = "nats",
    dims: Optional[int] = None,
    **engine_options: Any,
) -> Optional[SweepResult]:
    """Measure bias, variance and RMSE of estimators over K from one pool of samples.

    Parameters
    ----------
    model_or_log_weights : Module, path, Tensor, ndarray or LogWeightSource
        A model (anything with ``log_weights``), a checkpoint path (loaded with
        :func:`evalkit.load_model`; ``factory``, ``prefix``, ``allow_pickle`` are passed on),
        a precomputed ``[N, K]`` log-weight matrix from any tool (rows = datapoints, i.i.d.
        columns; torch or numpy), or any :class:`~evalkit.sources.LogWeightSource`. For a
        matrix or a source the pool is all its ``K`` columns.
    ks : sequence of int, optional
        Strictly increasing positive sample sizes. Default: the 1-2-5 ladder
        (:func:`evalkit.analysis.diagnostics.ladder`) up to ``K_max`` (the matrix width, or
        ``DEFAULT_K_MAX = 5000`` for a model). For a model ``K_max = max(ks)``.
    estimators : sequence of str
        Names from :func:`evalkit.estimators.available`. A cell with ``k < min_k`` of an
        estimator is skipped (and listed in ``notes``).
    reference : float, array-like of shape (N,), path, "ais" or Reference, optional
        What the bias is measured against. The model's exact ``log_marginal`` is used when it
        has one (then ``reference`` must be ``None``). Otherwise a number (same for every
        datapoint), per-datapoint values, or a ``.npy``/``.pt``/``.csv``/``.txt`` file of
        them. ``"ais"`` runs annealed importance sampling on the same datapoints (options in
        ``reference_ais``: ``chains``, ``steps``, ``schedule``, ...; default 16 chains x 1000
        steps) and measures bias against its per-datapoint estimate, labelled with its settings
        and Monte Carlo SE (:func:`evalkit.analysis.annealing.ais_reference`); a
        :class:`~evalkit.analysis.reference.Reference` is used as it is. Failing all, the least
        biased requested estimator at ``K_max`` on the same samples is used and labelled so in
        every table and plot.
    seed : int
        Seed of the engine's per-datapoint random streams (and Bernoulli binarisation). Unused
        for a log-weight matrix.
    data : Tensor, ndarray, path or str
        The data for a model (required then): ``[N, D]``, a file, or ``"digits"``; ``split``
        and ``binarize`` as in :func:`evalkit.sources.inputs.resolve_data`. Not allowed with a matrix.
    rescale_levels : bool, default False
        Map the digits' 17 grey levels to a discrete decoder's ``data_levels``
        (:func:`evalkit.data.rescale_levels`), as in :func:`evalkit.estimate`.
    indices : sequence of int, optional
        Evaluate only these datapoints (rows of the data). Each keeps the random stream of its
        dataset index, so the numbers equal those rows of a full sweep; tables name them by
        these indices.
    cache, cache_shard_size : optional
        Compute the pool through the resumable on-disk cache of
        :func:`evalkit.sampling.cache.cached_log_weights` (as in :func:`evalkit.analysis.estimate`); an
        interrupted sweep resumes bitwise identically. Not with ``indices``.
    method, ais : optional
        Draw the pool by annealed importance sampling instead (as :func:`evalkit.estimate`).
    prior, activation : optional
        Replace a Bayes-by-backprop network's weight prior and activation (as :func:`evalkit.estimate`).
    reference_ais : dict, optional
        Options of the AIS run behind ``reference="ais"``.
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
    units : {"nats", "bpd"}
        The unit of the tables, figures and report (:meth:`SweepResult.shown`): nats per
        datapoint, or bits per dimension ``-log p(x) / (D ln 2)``. ``table`` and the CSV stay in
        nats (with ``units="bpd"`` the CSV adds ``*_bpd`` columns); the JSON carries both.
    dims : int, optional
        D, the data dimensions; a model's ``data_dim`` by default, needed for bits per
        dimension of a matrix.
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
    ks_given = None if ks is None else _check_ks(ks)
    _check_estimators(estimators)
    fit_min_k = dg._positive_int(fit_min_k, "fit_min_k")
    check_block_size(block_size)
    check_units(units, 1)  # a bad name fails before the run; a missing D once the source is known
    if not isinstance(model_or_log_weights, (torch.Tensor, np.ndarray, LogWeightSource)):
        # For a model, threads and progress apply to its engine pass too.
        engine_options["progress"] = progress
        if threads is not None:
            engine_options["threads"] = threads
    source = open_source(model_or_log_weights, data=data, k=ks_given[-1] if ks_given else DEFAULT_K_MAX,
                         seed=seed, factory=factory, prefix=prefix, allow_pickle=allow_pickle, split=split,
                         binarize=binarize, rescale_levels=rescale_levels, indices=indices, cache=cache, cache_shard_size=cache_shard_size,
                         engine_options=engine_options, quantity=quantity, target=target,
                         method=method, ais=ais, prior=prior, activation=activation)
    check_units(units, resolve_dims(source.dims, dims))  # before the long model pass
    if ks_given is not None and ks_given[-1] > source.k:
        raise InputError(f"k = {ks_given[-1]} exceeds the {source.k} log-weights per datapoint; use ks up to {source.k}")
    if reference is not None and source.has_exact_log_marginal:
        raise InputError("this model has an exact log_marginal, which is the reference; drop reference=")
    if isinstance(reference, str) and reference == "ais":
        reference = _ais_reference(source, seed, reference_ais, engine_options)
    user_ref = user_reference(reference, source.n, quantity=source.quantity_label)  # checked before the long model pass
    return sweep_source(source, ks_given, estimators, user_ref, fit_min_k=fit_min_k,
                        keep_log_weights=keep_log_weights, max_elements=max_elements, threads=threads,
                        progress=progress, block_size=block_size, started=started, units=units, dims=dims)


def sweep_source(
    source: LogWeightSource,
    ks: Optional[Sequence[int]] = None,
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    reference: Optional[Reference] = None,
    *,
    fit_min_k: int = DEFAULT_FIT_MIN_K,
    keep_log_weights: bool = False,
    max_elements: int = dg.DEFAULT_MAX_ELEMENTS,
    threads: Optional[int] = None,
    progress: Optional[bool] = None,
    block_size: Optional[int] = None,
    started: Optional[float] = None,
    units: str = "nats",
    dims: Optional[int] = None,
) -> Optional[SweepResult]:
    """The sweep of :func:`sweep` over any :class:`~evalkit.sources.LogWeightSource`.

    ``ks`` default to the 1-2-5 ladder up to ``source.k``; ``reference`` is a
    :class:`~evalkit.analysis.reference.Reference` from :func:`~evalkit.analysis.reference.user_reference`
    or None (then the source's exact log p(x), else the pool's best estimate). The other
    arguments are :func:`sweep`'s. Returns None on torchrun processes other than rank 0.
    """
    started = time.perf_counter() if started is None else started
    chosen = _check_estimators(estimators)
    dims = resolve_dims(source.dims, dims)
    check_units(units, dims)
    k_max = source.k
    ks_used = _check_ks(ks) if ks is not None else dg.ladder(k_max)
    notes, cells = _cells(chosen, ks_used)
    rows = int(block_size) if block_size else block_rows(source.n, k_max)
    t0 = time.perf_counter()
    prepared = source.for_statistics(rows, keep=keep_log_weights)  # the whole pool only when it is kept
    if prepared is None:  # a torchrun process other than rank 0: its rows went to rank 0
        return None
    seconds_matrix = time.perf_counter() - t0
    blocks, log_w = prepared
    t_stats = time.perf_counter()
    pool = first_pass(blocks, source, cells, chosen, max_elements, threads, progress)
    pool = pool._replace(seconds_source=pool.seconds_source + seconds_matrix, log_weights=log_w)
    ref = resolve_reference(reference, source, k_max, (pool.best_name, pool.best))
    rows, long_parts, fit_rows = [], [], []
    for est in chosen:
        est_rows, est_long, fit_row = _estimator_rows(est, ks_used, pool, ref, source, fit_min_k)
        rows += est_rows
        long_parts += est_long
        fit_rows.append(fit_row)
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    issued = _issue_warnings(pool)
    unconverged = reference_below_estimate(ref, table, k_max)
    if unconverged:
        issued.append(unconverged)
        warnings.warn(unconverged, ReferenceWarning, stacklevel=user_stacklevel())
    notes += _source_notes(source)
    seconds = {"log_weights": round(pool.seconds_source, 3),
               "statistics": round(time.perf_counter() - t_stats - pool.seconds_source, 3),
               "total": round(time.perf_counter() - started, 3)}
    metadata = _metadata(source, ks_used, chosen, dims, fit_min_k, seconds)
    return SweepResult(
        table=table,
        theory=dg.iwae_theory(pool.r2, pool.r3, ks_used),
        theory_valid=dg.valid_iwae_theory(pool.r2, pool.r3, ks_used, pool.weights.khat),
        fits=pd.DataFrame(fit_rows, columns=FIT_COLUMNS),
        weights=pool.weights,
        reference=ref,
        per_datapoint=pd.concat(long_parts, ignore_index=True) if long_parts else pd.DataFrame(),
        metadata=metadata,
        notes=notes,
        warnings=issued,
        log_weights=pool.log_weights,
        units=units,
    )


def _source_notes(source: LogWeightSource) -> List[str]:
    """What the table's reader must know about the source itself."""
    notes = []
    if source.n < 2:
        notes.append("one datapoint: standard errors over datapoints are undefined (NaN)")
    if source.shared_columns:
        notes.append("every row uses the same samples (shared columns), so their Monte Carlo errors are "
                     "correlated: the MC SE column is the spread of the dataset mean over the independent groups "
                     "of k samples (n/a with one group; `evalkit estimate` gives the column jackknife at K_max); "
                     "the standard errors over datapoints leave that correlation out")
    return notes


def _metadata(source: LogWeightSource, ks: Sequence[int], chosen: Sequence[Any], dims: Optional[int],
              fit_min_k: int, seconds: Dict[str, float]) -> Dict[str, Any]:
    """The sweep's metadata: sizes, what was swept on what, units, the sampler's settings, versions, timings."""
    return {
        "n": int(source.n),
        "k_max": int(source.k),
        "ks": [int(k) for k in ks],
        "estimators": [est.name for est in chosen],
        "seed": source.seed,
        "model": source.model_label,
        "data": source.data_label,
        **provenance_metadata(source),
        "dims": dims,
        "units": units_note(dims),
        "fit_min_k": fit_min_k,
        **quantity_metadata(source),
        **({"sampler": jsonable(source.details)} if source.details else {}),
        "versions": versions(),
        "provenance": provenance(source.run_settings),
        "seconds": seconds,
    }


def _ais_reference(source: LogWeightSource, seed: int, options: Optional[Dict[str, Any]],
                   engine_options: Dict[str, Any]) -> Optional[Reference]:
    """``reference="ais"``: AIS on the same datapoints (their own streams), as the reference."""
    from .annealing import ais_reference

    if not isinstance(source, ImportanceSamplingSource) or source.sampler is not None:
        raise InputError("reference='ais' runs annealed importance sampling on the model's data; "
                         "it needs a model swept by importance sampling (method='is')")
    run = {name: engine_options[name] for name in ("batch_size", "device", "dtype", "progress")
           if engine_options.get(name) is not None}
    if not np.array_equal(source.index, np.arange(source.n)):  # chosen rows keep their own streams
        run["indices"] = torch.from_numpy(source.index)
    return ais_reference(source.model, source.data, seed=seed, **run, **dict(options or {}))


def _cells(chosen: Sequence[Any], ks: Sequence[int]) -> tuple:
    """``(notes, cells)``: the (estimator, k) cells to evaluate and a note for each estimator's skipped ks."""
    notes: List[str] = []
    cells = []
    for est in chosen:
        skipped = [k for k in ks if k < est.min_k]
        if skipped:
            notes.append(f"{est.name} needs k >= {est.min_k}: skipped k = {', '.join(map(str, skipped))}")
        cells += [(est, k) for k in ks if k >= est.min_k]
    return notes, cells


def _estimator_rows(est: Any, ks: Sequence[int], pool: PoolStatistics, ref: Reference,
                    source: LogWeightSource, fit_min_k: int) -> tuple:
    """The second pass for one estimator: ``(table rows, per-datapoint frames, fit row)``."""
    rows: List[Dict[str, Any]] = []
    long_parts: List[pd.DataFrame] = []
    means, ses, fit_ks = [], [], []
    for k in ks:
        if (est.name, k) not in pool.moments:
            continue
        group_mean, group_var, groups, group_sums = pool.moments[est.name, k]
        stats = dg.summarize_moments(group_mean, group_var, groups, ref.values, k=k, index=source.index)
        row = {name: getattr(stats, name) for name in TABLE_COLUMNS if hasattr(stats, name)}
        if source.shared_columns:
            row["mc_se"] = dg.shared_columns_mc_se(group_sums, source.n)
        gap, gap_se = dg.mean_se(group_mean - pool.best)
        row.update(estimator=est.name, reference=ref.short, gap_to_kmax=gap, gap_to_kmax_se=gap_se)
        if ref.kind == "pool" and est.name == ref.estimator and k == source.k:
            row["note"] = "; ".join(filter(None, [row["note"], "is the reference: bias 0 by construction"]))
        rows.append(row)
        long_parts.append(pd.DataFrame({"estimator": est.name, "k": k, "index": source.index, "mean": group_mean,
                                        "variance": group_var, "reference": ref.values}))
        if k >= fit_min_k:
            means.append(group_mean)
            ses.append(stats.estimate_se)
            fit_ks.append(k)
    fit = dg.fit_inverse_k(fit_ks, np.stack(means, axis=1) if means else np.empty((source.n, 0)), ses,
                           reference=ref.values)
    mine = [row for row in rows if row["k"] >= fit_min_k]
    # Slopes from the paired gap: its SE leaves out the noise that all k share.
    slope = dg.bias_slope([r["k"] for r in mine], [r["gap_to_kmax"] for r in mine],
                          [r["gap_to_kmax_se"] for r in mine])
    fit_row = {"estimator": est.name, "a": fit.a, "a_se": fit.a_se, "a_minus_reference": fit.a_minus_reference,
               "a_minus_reference_se": fit.a_minus_reference_se, "b": fit.b, "c": fit.c,
               "k_min": fit.ks[0] if fit.ks else None, "k_max": fit.ks[-1] if fit.ks else None,
               "points": len(fit.ks), "note": fit.note, "bias_slope": slope.slope,
               "bias_slope_se": slope.slope_se, "bias_slope_ks": ",".join(map(str, slope.ks)),
               "bias_slope_note": slope.note}
    return rows, long_parts, fit_row


def _issue_warnings(pool: PoolStatistics) -> List[str]:
    """Issue the pass's warnings once each (pool-wide ones naming datapoints); return their texts."""
    reissue_warnings(pool.pool_warnings)
    issued: List[str] = []
    for category, text in without_positions(pool.cell_warnings):
        issued.append(text)
        warnings.warn(text, category, stacklevel=user_stacklevel())
    if pool.weights.warning:
        issued.append(pool.weights.warning)
        warnings.warn(pool.weights.warning, WeightWarning, stacklevel=user_stacklevel())
    return issued


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
