"""``evalkit.estimate``: log p(x) estimates with standard errors for one K, from any log-weight source.

Every estimator is a pure function of one datapoint's row of log-weights; the dataset summaries
are means and sums over the per-datapoint results. So :func:`estimate_source` asks its
:class:`~evalkit.sources.LogWeightSource` for a block of datapoints at a time, reduces the block
to its per-datapoint results and frees it. Memory then does not grow with N and, up to K of
about 75 000, not with K either (:func:`~evalkit.sampling.blocks.block_rows`); the numbers are
bitwise those of the whole matrix. Where the log-weights come from (the engine, a cache,
torchrun, a matrix from another tool) is the source's business alone.
"""
from __future__ import annotations

import math
import platform
import time
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch

from .. import estimators as estimator_registry
from ..errors import InputError, WeightWarning, user_stacklevel
from ..estimators.arraykind import as_rows
from ..estimators.shared_columns import (jackknife_groups, jackknife_se, leave_group_out_elbo_sums,
                                         leave_group_out_iwae_sums)
from ..sampling.blocks import block_rows, check_block_size, reissue_warnings
from ..sources import LogWeightSource, MatrixSource, open_source
from ..sources.inputs import DataLike, ModelLike
from ..sources.matrix import as_log_weight_tensor, check_real_floating
from .diagnostics import summarize_weights, weight_diagnostics
from .in_units import check_units, resolve_dims, units_note
from .provenance import provenance
from .estimate_result import JSON_SCHEMA_VERSION, EstimateResult  # noqa: F401 (re-exported)
from .tables import jsonable, provenance_metadata, quantity_metadata

DEFAULT_ESTIMATORS = ("elbo", "iwae", "jvi1", "jvi2", "dvi")


def estimate(
    model: ModelLike,
    data: DataLike = None,
    k: int = 5000,
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    seed: int = 0,
    *,
    keep_log_weights: bool = False,
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
    cache: Optional[Any] = None,
    cache_shard_size: Optional[int] = None,
    block_size: Optional[int] = None,
    units: str = "nats",
    dims: Optional[int] = None,
    **engine_options: Any,
) -> Optional[EstimateResult]:
    """Estimate mean log p(x) over ``data`` with K importance samples per datapoint.

    Parameters
    ----------
    model : Module, path or LogWeightSource
        A loaded model (the protocol in the README) or a checkpoint path (see
        :func:`evalkit.load_model`; ``factory``, ``prefix`` and ``allow_pickle`` are passed on),
        or any :class:`~evalkit.sources.LogWeightSource` (then ``data`` is None).
    data : Tensor, ndarray, path, str or (x, y)
        ``[N, D]`` data, a data file, or a built-in dataset name such as ``"digits"`` (``split``
        -- default ``"test"`` -- and ``binarize`` say which part and how to binarise; ``seed``
        seeds the Bernoulli binarisation). A Bayesian network takes labelled data: ``"digits"``,
        a file with targets (``target`` names the key or CSV column) or an ``(x, y)`` pair.
    rescale_levels : bool, default False
        For a model with a discrete decoder (``data_levels``): map the built-in digits' 17 grey
        levels to the model's levels (:func:`evalkit.data.rescale_levels`); without it the digits
        are refused for a model of another level count.
    k : int
        Importance samples per datapoint.
    estimators : sequence of str
        Names from :func:`evalkit.estimators.available` (any ``"jviM"`` works).
    seed : int
        Seed of the per-datapoint random streams; the same seed gives the same numbers whatever
        the batching, device count or data order.
    quantity : {"predictive", "evidence"}, optional
        For a Bayes-by-backprop network (:class:`~evalkit.models.BayesianMLP`): the test log
        predictive density log p(y | x) per datapoint with K weight samples shared by all rows
        (default; the MC SE is then the jackknife over the samples), or the evidence log p(D)
        of the whole (by default training) split as one row (:mod:`evalkit.sources.bayesian`).
    prior, activation : optional
        For a Bayes-by-backprop network: replace its weight prior (a prior, ``{"kind": "gaussian",
        "sigma": ...}`` or ``"gaussian:SIGMA"``; the evidence depends on it, the predictive does not)
        and its activation (``"relu"``, ``"tanh"``). A state_dict records neither: loading one
        assumes ReLU and its library's default prior (docs/bnn.md).
    method : {"is", "ais"}
        ``"is"``: importance sampling from the proposal q(z | x) (the engine). ``"ais"``:
        annealed importance sampling from q(z | x) (or the prior) to p(x, z) with ``k`` chains
        per datapoint and the options in ``ais`` (``steps``, ``schedule``, ``init``,
        ``leapfrog``, ``step_size``, ``target_accept``, ...; :func:`evalkit.sampling.ais.ais_run`);
        each chain's weight is a column, so IWAE over the chains, JVI, ESS and k-hat apply.
    keep_log_weights : bool
        Keep the ``[N, k]`` log-weights on the result (the whole matrix is then computed at once).
    cache : str or path, optional
        A directory where the log-weights are stored shard by shard as they are computed (see
        :func:`evalkit.sampling.cache.cached_log_weights`). Calling again with the same arguments
        resumes an interrupted run and gives bitwise the same result; a cache made for another
        checkpoint, data, k, seed or dtype is refused.
    cache_shard_size : int, optional
        Datapoints per shard of a new cache (default: at most 16 MiB and 1/8 of the data).
    block_size : int, optional
        Datapoints whose log-weights are computed and reduced at a time (default
        :func:`block_rows`: the block and the statistics' temporaries within
        :data:`STATISTICS_BUDGET`). The result does not depend on it, bit for bit. Where the
        whole matrix is computed anyway (``keep_log_weights``, ``cache``, torchrun), the
        statistics still run over row blocks of it.
    units : {"nats", "bpd"}
        The unit of the result's tables (:meth:`EstimateResult.table_in`): nats per datapoint,
        or bits per dimension ``bpd = -log p(x) / (D ln 2)``. The JSON carries both whatever
        the choice (``estimate_bpd``, ``se_data_bpd``, ``se_mc_bpd`` beside the nats fields).
    dims : int, optional
        D, the data dimensions of one datapoint. A model's ``data_dim`` by default; needed for
        bits per dimension of a log-weight source without one (a matrix).
    **engine_options
        Passed to :func:`evalkit.log_weights` (``batch_size``, ``k_chunk``, ``memory_budget``,
        ``device``, ``dtype``, ``progress``, ...). ``memory_budget`` is the engine's working
        memory; the block of log-weights and the statistics over it come on top.

    Returns
    -------
    EstimateResult
        Under ``torchrun`` (:mod:`evalkit.sampling.distributed`) every process computes a share of the
        datapoints; rank 0 returns the result, equal to a single-process run's, and the other
        ranks return None.

    Notes
    -----
    Peak memory beyond the engine's: ``min(N, block) * K * 8 * BLOCK_COPIES`` bytes, at most
    :data:`STATISTICS_BUDGET` up to K of about 75 000 (then blocks of 32 datapoints), plus a few
    floats per datapoint for the results.

    Examples
    --------
    >>> result = evalkit.estimate("examples/digits_iwae.pt", "digits", k=1000,
    ...                           binarize="bernoulli")                     # doctest: +SKIP
    >>> result.summary                                                     # doctest: +SKIP
    """
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k <= 0:
        raise InputError(f"k must be a positive integer number of samples per datapoint, got {k!r}")
    k = int(k)
    _check_estimators(estimators, k, method)
    check_block_size(block_size)
    check_units(units, 1)  # a bad name fails before the run; a missing D once the source is known
    started = time.perf_counter()
    source = open_source(model, data=data, k=k, seed=seed, factory=factory, prefix=prefix,
                         allow_pickle=allow_pickle, split=split, binarize=binarize, rescale_levels=rescale_levels,
                         quantity=quantity, target=target, method=method, ais=ais,
                         prior=prior, activation=activation, cache=cache,
                         cache_shard_size=cache_shard_size, engine_options=engine_options)
    result = estimate_source(source, estimators, keep_log_weights=keep_log_weights, block_size=block_size,
                             units=units, dims=dims)
    if result is not None:
        result.metadata["elapsed_seconds"] = round(time.perf_counter() - started, 3)
    return result


def estimate_from_log_weights(
    log_w: Any,
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    *,
    keep_log_weights: bool = False,
    block_size: Optional[int] = None,
    units: str = "nats",
    dims: Optional[int] = None,
) -> EstimateResult:
    """Build an :class:`EstimateResult` from a precomputed ``[N, K]`` log-weight matrix.

    Use it on log-weights from any other tool. No randomness is involved: ``seed`` in the
    metadata is ``None``. The statistics run over blocks of ``block_size`` rows (default
    :func:`~evalkit.sampling.blocks.block_rows`), so their temporaries stay within
    :data:`~evalkit.sampling.blocks.STATISTICS_BUDGET` whatever N; the result does not depend on
    the block size, bit for bit. ``units`` and ``dims`` are :func:`estimate`'s (a matrix has no
    D of its own: bits per dimension need ``dims``).
    """
    log_w = as_log_weight_tensor(log_w)
    check_real_floating(log_w)
    if log_w.ndim != 2 or log_w.shape[1] == 0 or log_w.shape[0] == 0:
        raise InputError(
            f"log-weights must be a non-empty [N, K] matrix (one row per datapoint), got shape {tuple(log_w.shape)}"
        )
    # Contiguous, so that row blocks are views and the check below reads the matrix in place.
    log_w = log_w.to("cpu", torch.float64).contiguous()
    _check_estimators(estimators, log_w.shape[1])
    check_block_size(block_size)
    # NaN / +inf are refused here, naming rows of the whole matrix (a block would name its own rows).
    as_rows(log_w)
    return estimate_source(MatrixSource(log_w, data_label="log-weights"), estimators,
                           keep_log_weights=keep_log_weights, block_size=block_size, units=units, dims=dims)


def estimate_source(
    source: LogWeightSource,
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    *,
    keep_log_weights: bool = False,
    block_size: Optional[int] = None,
    units: str = "nats",
    dims: Optional[int] = None,
) -> Optional[EstimateResult]:
    """Estimates from any :class:`~evalkit.sources.LogWeightSource`, one block of rows at a time.

    Parameters
    ----------
    source : LogWeightSource
        Where the ``[N, K]`` log-weights come from.
    estimators : sequence of str
        Names from :func:`evalkit.estimators.available`.
    keep_log_weights : bool
        Keep the whole ``[N, K]`` matrix on the result (produced at once, then reduced by blocks).
    block_size : int, optional
        Rows per block (default :func:`~evalkit.sampling.blocks.block_rows`); no effect on the numbers.
    units, dims
        As in :func:`estimate`; ``dims`` defaults to ``source.dims``.

    Returns
    -------
    EstimateResult, or None on a torchrun process other than rank 0 (``source.is_main`` False).
    """
    chosen = _check_estimators(estimators, source.k)
    check_block_size(block_size)
    dims = resolve_dims(source.dims, dims)
    check_units(units, dims)
    rows = int(block_size) if block_size else block_rows(source.n, source.k)
    prepared = source.for_statistics(rows, keep=keep_log_weights)
    if prepared is None:  # a torchrun process other than rank 0: its rows went to rank 0
        return None
    blocks, log_w = prepared
    stats = _stream_statistics(blocks, chosen, source.shared_columns)
    return _result(stats, chosen, source, log_w, dims).in_units(units)


@dataclass
class _RowStatistics:
    """Per-datapoint results for some rows; estimator columns in the order of the chosen estimators.

    ``values[name]``, ``mc_variance[name]`` (None where the estimator defines none),
    ``ess_fraction`` and ``khat`` all have shape ``(rows,)``. For sources whose rows share their
    columns, ``column_sums[name]`` holds the rows' sums of the leave-group-out estimates of the
    column jackknife (:func:`~evalkit.estimators.shared_columns.leave_group_out_sums`), shape (G,).
    """

    values: Dict[str, np.ndarray]
    mc_variance: Dict[str, Optional[np.ndarray]]
    ess_fraction: np.ndarray
    khat: np.ndarray
    column_sums: Optional[Dict[str, np.ndarray]] = None


def _row_statistics(log_w: torch.Tensor, chosen: Sequence[Any], shared_columns: bool = False) -> _RowStatistics:
    """Every per-datapoint statistic of ``log_w`` ``[rows, K]`` (float64, CPU): each row's alone."""
    values: Dict[str, np.ndarray] = {}
    mc_variance: Dict[str, Optional[np.ndarray]] = {}
    column_sums: Optional[Dict[str, np.ndarray]] = {} if shared_columns else None
    for est in chosen:
        values[est.name] = _as_numpy(est(log_w))
        mc_variance[est.name] = _as_numpy(est.mc_variance(log_w)) if est.mc_variance is not None else None
    if column_sums is not None and log_w.shape[1] >= 2:
        # The column jackknife of the ELBO, and of IWAE for every other estimator: debiasing
        # (JVI, DVI) does not change the leading-order variance, as in the independent-rows case.
        groups = jackknife_groups(log_w.shape[1])
        rows = log_w.numpy()
        column_sums["elbo"] = leave_group_out_elbo_sums(rows, groups)
        column_sums["iwae"] = leave_group_out_iwae_sums(rows, groups)
    weights = weight_diagnostics(log_w)
    return _RowStatistics(values, mc_variance, weights.ess_fraction, weights.khat, column_sums)


def _stream_statistics(blocks: Iterable[Tuple[int, torch.Tensor]], chosen: Sequence[Any],
                       shared_columns: bool = False) -> _RowStatistics:
    """Run :func:`_row_statistics` on each ``(start, block)`` and concatenate the results in row order.

    Only the per-datapoint results outlive a block. Warnings the estimators raise on a block
    are re-issued once at the end, naming rows of the whole matrix (:func:`evalkit.sampling.blocks.reissue_warnings`).
    """
    parts: List[_RowStatistics] = []
    caught: List[Tuple[int, warnings.WarningMessage]] = []
    for start, block in blocks:
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")  # the caller's filters apply when they are re-issued
            parts.append(_row_statistics(block, chosen, shared_columns))
        del block
        caught += [(start, record) for record in records]
    reissue_warnings(caught)
    first = parts[0]
    return _RowStatistics(
        values={name: np.concatenate([p.values[name] for p in parts]) for name in first.values},
        mc_variance={
            name: None if first.mc_variance[name] is None else np.concatenate([p.mc_variance[name] for p in parts])
            for name in first.mc_variance
        },
        ess_fraction=np.concatenate([p.ess_fraction for p in parts]),
        khat=np.concatenate([p.khat for p in parts]),
        column_sums=None if first.column_sums is None else {
            name: np.sum([p.column_sums[name] for p in parts], axis=0) for name in first.column_sums},
    )


def _result(
    stats: _RowStatistics,
    chosen: Sequence[Any],
    source: LogWeightSource,
    log_w: Optional[torch.Tensor] = None,
    dims: Optional[int] = None,
) -> EstimateResult:
    """Assemble the :class:`EstimateResult` from the per-datapoint statistics of all the source's rows."""
    n, k = source.n, source.k
    per_example: Dict[str, Any] = {"index": np.arange(n)}
    rows = []
    for est in chosen:
        values = stats.values[est.name]
        per_example[est.name] = values
        rows.append(
            {
                "estimator": est.name,
                "k": k,
                "estimate": _mean(values),
                "se_data": _standard_error(values),
                "se_mc": _mc_standard_error(stats, est.name, n),
                "n": n,
            }
        )
    per_example["ess"] = stats.ess_fraction * k
    per_example["psis_khat"] = stats.khat

    summary = pd.DataFrame(rows, columns=["estimator", "k", "estimate", "se_data", "se_mc", "n"])
    weights = summarize_weights(stats.ess_fraction, stats.khat, k)
    diagnostics = {
        "mean_ess_fraction": _mean(stats.ess_fraction),
        "fraction_khat_above_0.5": weights.fraction_above_good,
        "fraction_khat_above_0.7": weights.fraction_above_bad,
        "indices_khat_above_0.7": [int(i) for i in weights.above_bad],
        "khat_threshold": weights.summary()["khat_threshold"],
        "fraction_khat_above_threshold": weights.fraction_above_threshold,
        "indices_khat_above_threshold": [int(i) for i in weights.above_threshold],
        "n_khat_undefined": weights.n_undefined,
        "max_psis_khat": float(np.nanmax(stats.khat)) if np.isfinite(stats.khat).any() else float("nan"),
    }
    metadata = {
        "k": k,
        "n": n,
        "seed": source.seed,
        "model": source.model_label,
        "data": source.data_label,
        **provenance_metadata(source),
        "dims": dims,
        "units": units_note(dims),
        "evalkit_version": _version(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "provenance": provenance(source.run_settings),
    }
    metadata.update(quantity_metadata(source))
    if source.details:
        metadata["sampler"] = jsonable(source.details)
    if source.shared_columns:
        metadata["se_mc_method"] = (f"jackknife over the K samples that every row shares ({jackknife_groups(k)} "
                                    "groups of columns), of the ELBO for elbo and of IWAE for the others")
    if weights.warning:  # the same warning, in the same words, as sweep()
        warnings.warn(weights.warning, WeightWarning, stacklevel=user_stacklevel())
    return EstimateResult(
        summary=summary,
        per_example=pd.DataFrame(per_example),
        diagnostics=diagnostics,
        metadata=metadata,
        log_weights=log_w,
    )


def _check_estimators(names: Sequence[str], k: int, method: str = "is") -> list:
    chosen = estimator_registry.get_many(names)
    for est in chosen:
        if k < est.min_k:
            # With AIS the columns are the chains: say so in the option's own name (--chains / ais=...).
            samples = ("AIS chains per datapoint (--chains on the command line, k in Python)" if method == "ais"
                       else "samples per datapoint (-k, or k in Python)")
            raise InputError(
                f"estimator {est.name!r} needs at least {est.min_k} {samples}, got {k}; "
                f"give more or choose a lower order"
            )
    return chosen


def _as_numpy(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values))


def _standard_error(values: np.ndarray) -> float:
    # Spread over datapoints (data sampling + Monte Carlo noise); undefined for one datapoint.
    if len(values) < 2 or not np.all(np.isfinite(values)):
        return float("nan")
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def _mc_standard_error(stats: _RowStatistics, name: str, n: int) -> float:
    """Monte Carlo SE of the dataset mean of estimator ``name``.

    Rows with their own samples: their variances add, ``sqrt(sum_n var_n) / N``. Rows that share
    their K columns (a Bayesian network's weight samples): the grouped jackknife over columns,
    which includes the rows' covariances.
    """
    if stats.column_sums is not None:
        if name == "sumo":  # a randomly truncated sum: no column jackknife is valid for it (nor defined here)
            return float("nan")
        sums = stats.column_sums.get("elbo" if name == "elbo" else "iwae")
        return jackknife_se(sums / n) if sums is not None and np.all(np.isfinite(sums)) else float("nan")
    mc_variance = stats.mc_variance[name]
    if mc_variance is None or np.any(np.isnan(mc_variance)):
        return float("nan")
    # +inf is kept: SUMO's variance can exceed float64 (its heavy tail), which is not "unknown"
    return float(math.sqrt(float(np.sum(mc_variance))) / n)


def _version() -> str:
    from .._version import __version__

    return __version__
