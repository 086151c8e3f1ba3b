r"""``evalkit.compare``: is model A better than model B on the same data, beyond the noise?

Every model is evaluated as :func:`evalkit.estimate` evaluates it (the same sources, the same
per-datapoint statistics, bit for bit the same table rows), with the models' sources read in
lockstep, one block of datapoints at a time: the blocks of all models are in memory together, so
the Monte Carlo covariance of two models' estimates on a datapoint can be estimated from their
log-weights, and comparing M models costs M estimates (no second pass).

The mathematics (also in the README, "Comparing models")
----------------------------------------------------------
Models A and B give per-datapoint estimates :math:`a_n, b_n` on the same N datapoints;
:math:`d_n = a_n - b_n` and the reported difference is :math:`\bar d = \frac1N \sum_n d_n`.

* ``se_paired`` :math:`= \operatorname{sd}(d_n) / \sqrt N` (sample sd, ddof 1), as ``loo_compare``'s
  ``se_diff``.
* ``se_mc``, the Monte Carlo SE of :math:`\bar d` with the data held fixed. Rows have their own
  random streams, so :math:`\operatorname{Var}_{mc}(\bar d) = \frac1{N^2}\sum_n [\operatorname{Var}(a_n)
  + \operatorname{Var}(b_n) - 2\operatorname{Cov}(a_n, b_n)] = \frac1{N^2}\sum_n \operatorname{Var}(d_n)`.
  With the same seed and the same noise shape, column i of both models is a function of the same
  standard-normal draw :math:`\epsilon_i` (common random numbers), so the pairs
  :math:`(w^A_i, w^B_i)` are i.i.d. over i, and :math:`d_n` is a symmetric function of K i.i.d.
  column pairs: its variance, covariance included, is estimated by the jackknife over the
  paired columns, :math:`\frac{K-1}{K}\sum_i (t_{(i)} - \bar t)^2` with :math:`t_{(i)}` the
  difference of the two models' IWAE without column i (JVI and DVI use IWAE's, their leading
  variance term, as :func:`evalkit.estimate` does for shared columns). The pairs' delta method,
  :math:`\sum_i (\delta^A_i - \delta^B_i)^2 / (K(K-1))` with :math:`\delta_i = K\tilde w_i - 1`,
  is the same to leading order but, when the leading terms cancel (similar models), misses the
  higher-order ones that then dominate: on two close linear-Gaussian models at K = 30 it
  reported 0.70 of the spread over seeds, the jackknife 1.0 (tests/test_compare.py). The ELBO
  difference is a mean of i.i.d. :math:`\log w^A_i - \log w^B_i`, variance
  :math:`\operatorname{var}(\log w^A - \log w^B)/K` (its jackknife, exactly). Both are never
  negative and exactly 0 for a model against its identical copy. For an estimator of another kind (one not using these
  two variance formulas) the bound :math:`(\sqrt{\operatorname{Var} a_n} + \sqrt{\operatorname{Var} b_n})^2`
  (Cauchy-Schwarz) is used and the metadata says so.
* Different noise shapes (other latent dimensions) under one seed would *not* give independent
  streams: both models slice the same sequence of normals into columns of different widths, so
  column i of A shares draws with other columns of B and the pairs are neither common nor
  independent. :func:`compare` therefore gives each group of models with another noise shape
  (or another sampling method) its own seed, ``seed + g`` (mod 2**64) for the g-th group in the
  order given; their streams are then independent (distinct Philox keys), the covariance is 0 and
  :math:`\operatorname{Var}(d_n) = \operatorname{Var}(a_n) + \operatorname{Var}(b_n)`. The seeds used are in
  ``metadata["models"]``.
* Sources whose rows share their K columns (a Bayesian network's predictive): the grouped
  jackknife over columns of :math:`\frac1N\sum_n (a_n - b_n)` (of the ELBO, or IWAE for the
  other estimators, as in :func:`evalkit.estimate`), valid when the column pairs are i.i.d.
* ``se_total``, the SE of :math:`\bar d` as an estimate of the population difference
  :math:`E_x[a(x) - b(x)]` (data and Monte Carlo noise): :math:`\operatorname{Var}(\bar d) =
  \sigma_t^2/N + \operatorname{Var}_{mc}(\bar d)`, and :math:`E[\operatorname{sd}(d_n)^2] = \sigma_t^2 +
  \frac1N\sum_n \operatorname{Var}(d_n)`, so :math:`se_{total}^2 = se_{paired}^2 + se_{mc}^2 -
  \frac1{N^2}\sum_n \widehat{\operatorname{Var}}(d_n)`. With rows of their own streams the last two
  terms cancel: ``se_total = se_paired`` (the MC noise is already in the spread of the
  :math:`d_n`; adding ``se_mc`` again would count it twice). With shared columns it adds the
  covariances between rows that the spread does not see.
* ``z`` :math:`= \bar d / se_{total}`, ``p_value`` :math:`= 2(1 - \Phi(|z|)) = \operatorname{erfc}(|z|/\sqrt2)`
  (two-sided normal). Both are NaN (null in JSON) when ``se_total`` is 0, e.g. a model against its
  identical copy: the difference is then exactly 0 and no test is defined.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import InputError, WeightWarning, user_stacklevel
from ..estimators.bounds import elbo_mc_variance, iwae_mc_variance
from ..estimators.shared_columns import jackknife_se
from ..noise import check_seed
from ..sampling.blocks import block_rows, check_block_size, reissue_warnings
from ..sources import LogWeightSource, open_source
from ..sources.inputs import describe_data, resolve_data, resolve_model
from .compare_result import CompareResult, pair_rows
from .estimate import _check_estimators, _result, _row_statistics, _RowStatistics
from .in_units import check_units, resolve_dims

_SEED_SPACE = 2**64


def compare(
    models: Sequence[Any],
    data: Any = None,
    *,
    k: int = 5000,
    estimators: Sequence[str] = ("iwae",),
    seed: int = 0,
    names: Optional[Sequence[str]] = None,
    factory: Optional[str] = None,
    prefix: Optional[str] = None,
    allow_pickle: bool = False,
    split: Optional[str] = None,
    binarize: str = "none",
    rescale_levels: bool = False,
    quantity: Optional[str] = None,
    target: Optional[str] = None,
    prior: Any = None,
    activation: Optional[str] = None,
    method: str = "is",
    ais: Optional[Dict[str, Any]] = None,
    cache: Optional[Any] = None,
    cache_shard_size: Optional[int] = None,
    block_size: Optional[int] = None,
    units: str = "nats",
    **engine_options: Any,
) -> Optional[CompareResult]:
    """Compare two or more models on the same data: estimates, paired differences and their SEs.

    Parameters
    ----------
    models : sequence of Module, path or LogWeightSource, length M >= 2
        Models (or checkpoint paths, loaded with ``factory``, ``prefix``, ``allow_pickle``) as
        :func:`evalkit.estimate` takes them; sources need ``data=None``.
    data : Tensor, ndarray, path or str
        The datapoints every model is evaluated on (``split``, ``binarize`` as in
        :func:`evalkit.estimate`; a Bernoulli binarisation is drawn once, with ``seed``, and
        shared). Models that need different data (binary and not, other dimensions, integer
        images) are refused.
    k : int
        Importance samples (AIS: chains) per datapoint, the same for every model.
    estimators : sequence of str
        Names from :func:`evalkit.estimators.available`, each compared separately.
    seed : int
        Seed of the per-datapoint streams. Models with the same noise shape share it (common
        random numbers); each further group of noise shapes gets ``seed + g`` (module notes).
    names : sequence of str, optional
        How tables name the models (default: a checkpoint's file stem, else the class name).
    method, ais, cache, cache_shard_size, quantity, target, rescale_levels, prior, activation, block_size, units, **engine_options
        As in :func:`evalkit.estimate`. ``cache`` is a directory holding one sub-directory per
        model (``0-<name>``, ``1-<name>``, ...).

    Returns
    -------
    CompareResult
        ``table`` (model x estimator: estimate, se_data, se_mc, rank), ``pairs`` (each unordered
        pair once, A before B in the order given: difference A - B, se_paired, se_mc, se_total,
        z, p_value, n), ``per_example`` and ``estimates`` (each model's
        :class:`~evalkit.EstimateResult`, equal to :func:`evalkit.estimate`'s with the seed
        used). None on a torchrun process other than rank 0.

    Notes
    -----
    The formulas for ``se_mc``, ``se_total``, ``z`` and ``p_value`` are in the module docstring
    (:mod:`evalkit.analysis.compare`). Memory: the M models' blocks of rows at once, within the
    statistics budget of one estimate (the blocks are M times shorter).

    Examples
    --------
    >>> result = evalkit.compare(["examples/digits_iwae.pt", "examples/digits_iwae_small.pt"],
    ...                          "digits", k=1000, binarize="bernoulli")      # doctest: +SKIP
    >>> result.pairs                                                          # doctest: +SKIP
    """
    started = time.perf_counter()
    labels = _check_models(models, names)
    k = _check_k(k)
    chosen = _check_estimators(estimators, k)
    check_block_size(block_size)
    check_units(units, 1)
    seed = check_seed(seed)
    sources, seeds = _open_sources(models, labels, data, k=k, seed=seed, factory=factory, prefix=prefix,
                                   allow_pickle=allow_pickle, split=split, binarize=binarize,
                                   rescale_levels=rescale_levels, quantity=quantity, target=target, prior=prior,
                                   activation=activation, method=method, ais=ais, cache=cache,
                                   cache_shard_size=cache_shard_size, engine_options=engine_options)
    dims = _common_dims(sources, labels)
    check_units(units, dims)
    rows = int(block_size) if block_size else max(1, block_rows(sources[0].n, k * len(sources)))
    streamed = _stream_all(sources, chosen, rows)
    if streamed is None:  # a torchrun process other than rank 0
        return None
    stats, pair_variances = streamed
    estimates = [_named_warnings(label, _result, s, chosen, source, None, dims)
                 for label, s, source in zip(labels, stats, sources)]
    common = common_streams(sources)
    pairs = pair_rows(labels, chosen, stats, pair_variances, shared_columns=sources[0].shared_columns, common=common)
    metadata = _metadata(labels, sources, seeds, chosen, common, k, seed, dims)
    metadata["elapsed_seconds"] = round(time.perf_counter() - started, 3)
    return CompareResult.build(labels, chosen, estimates, stats, pairs, metadata, units=units)


def _named_warnings(label: str, fn, *args):
    """``fn(*args)``, its weight warnings re-issued naming the model they are about."""
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always", WeightWarning)
        out = fn(*args)
    for record in records:
        message = f"model {label!r}: {record.message}" if issubclass(record.category, WeightWarning) else record.message
        warnings.warn(message, record.category, stacklevel=user_stacklevel())
    return out


def _check_k(k: Any) -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k <= 0:
        raise InputError(f"k must be a positive integer number of samples per datapoint, got {k!r}")
    return int(k)


def _check_models(models: Any, names: Optional[Sequence[str]]) -> List[str]:
    """The models' names: ``names`` if given (distinct, one per model), else from the inputs."""
    if isinstance(models, (str, os.PathLike, torch.nn.Module)) or not hasattr(models, "__len__") or len(models) < 2:
        raise InputError("compare needs a list of at least two models (modules, checkpoint paths or sources), "
                         f"got {type(models).__name__}")
    if names is not None:
        names = [names] if isinstance(names, str) else list(names)
        if len(names) != len(models) or not all(isinstance(n, str) and n.strip() for n in names):
            raise InputError(f"names must be one non-empty string per model ({len(models)} models), got {names!r}")
        if len(set(names)) != len(names):
            raise InputError(f"names must be distinct, got {names!r}; give each model its own name")
        return [n.strip() for n in names]
    raw = [os.path.splitext(os.path.basename(os.fspath(m)))[0] if isinstance(m, (str, os.PathLike))
           else type(m).__name__ for m in models]
    # A repeated name gets its occurrence number: "LinearGaussianModel", "LinearGaussianModel (2)".
    return [label if raw[:i].count(label) == 0 else f"{label} ({raw[:i].count(label) + 1})"
            for i, label in enumerate(raw)]


def _signature(source: LogWeightSource) -> Optional[tuple]:
    """What decides how a source slices its random streams into columns; None where unknown (a matrix)."""
    model = getattr(source, "model", None)
    if model is None:
        return None
    shape = getattr(model, "noise_shape", None)
    if shape is None:  # a Bayesian network: its weight noise follows its parameters
        shape = tuple(tuple(p.shape) for p in model.parameters())
    sampler = getattr(source, "sampler", None)
    return (type(source).__name__, tuple(shape), None if sampler is None else repr(sorted(sampler.summary().items())))


def common_streams(sources: Sequence[LogWeightSource]) -> Dict[Tuple[int, int], bool]:
    """``{(a, b): True}`` for each pair a < b whose column i comes from the same noise draw (same seed and
    stream layout); False where the streams are independent or unknown (a matrix: then no covariance)."""
    signatures = [_signature(s) for s in sources]
    return {(a, b): signatures[a] is not None and signatures[a] == signatures[b] and sources[a].seed == sources[b].seed
            for a in range(len(sources)) for b in range(a + 1, len(sources))}


def _open_sources(models, labels, data, *, k, seed, cache, engine_options, binarize, split, rescale_levels, **options):
    """One source per model on the same rows; the seed of each (module notes: one per noise shape)."""
    loading = {key: options.pop(key) for key in ("factory", "prefix", "allow_pickle")}
    resolved = [m if isinstance(m, (LogWeightSource, torch.Tensor, np.ndarray)) else resolve_model(m, **loading)
                for m in models]
    shared_x: Optional[torch.Tensor] = None
    sources: List[LogWeightSource] = []
    signatures: List[Optional[tuple]] = []
    seeds: List[int] = []
    for i, (label, model) in enumerate(zip(labels, resolved)):
        source_data = data
        if isinstance(model, torch.nn.Module) and not getattr(model, "is_bayesian_network", False) and data is not None:
            x = _data_for(model, label, data, split="test" if split is None else split, binarize=binarize, seed=seed,
                          rescale_levels=rescale_levels)
            if shared_x is not None and (x.shape != shared_x.shape or not torch.equal(x, shared_x)):
                raise InputError(f"models {labels[0]!r} and {label!r} need different data (shapes "
                                 f"{tuple(shared_x.shape)} and {tuple(x.shape)}, or other values: binary and not, "
                                 "integer images and not); compare models of the same data")
            shared_x = x if shared_x is None else shared_x
            source_data = x
        model_cache = None if cache is None else os.path.join(os.fspath(cache), f"{i}-{_safe(label)}")
        probe = open_source(model, data=source_data, k=k, seed=seed, cache=model_cache, engine_options=engine_options,
                            split=split, binarize="none" if source_data is not data else binarize, **options)
        signature = _signature(probe)
        if signature not in signatures:
            signatures.append(signature)
        group = signatures.index(signature)
        own_seed = (seed + group) % _SEED_SPACE if signature is not None else seed
        if own_seed != seed:
            probe = open_source(model, data=source_data, k=k, seed=own_seed, cache=model_cache,
                                engine_options=engine_options, split=split,
                                binarize="none" if source_data is not data else binarize, **options)
        if source_data is not data:
            probe.data_label = describe_data(data, "test" if split is None else split, binarize)
            probe.model_label = probe.model_label if isinstance(models[i], (str, os.PathLike)) else label
        sources.append(probe)
        seeds.append(own_seed)
    _check_same_rows(sources, labels)
    return sources, seeds


def _data_for(model, label, data, **options) -> torch.Tensor:
    try:
        return resolve_data(data, model=model, **options)
    except InputError as exc:
        raise type(exc)(f"model {label!r} cannot take this data: {exc}") from None


def _check_same_rows(sources: Sequence[LogWeightSource], labels: Sequence[str]) -> None:
    first = sources[0]
    for label, source in zip(labels[1:], sources[1:]):
        if source.n != first.n or source.k != first.k:
            raise InputError(f"models {labels[0]!r} and {label!r} give {first.n} and {source.n} datapoints with "
                             f"{first.k} and {source.k} columns; compare them on the same data with the same k")
        if source.shared_columns != first.shared_columns or source.quantity_label != first.quantity_label:
            raise InputError(f"models {labels[0]!r} and {label!r} estimate different quantities "
                             f"({first.quantity_label} and {source.quantity_label}); compare models of one kind")


def _common_dims(sources: Sequence[LogWeightSource], labels: Sequence[str]) -> Optional[int]:
    dims = [resolve_dims(s.dims, None) for s in sources]
    known = {d for d in dims if d is not None}
    if len(known) > 1:
        raise InputError(f"the models have different data dimensions D ({dict(zip(labels, dims))}); "
                         "compare models of the same data")
    return known.pop() if known else None


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:60] or "model"


def _stream_all(sources, chosen, rows) -> Optional[Tuple[List[_RowStatistics], Dict[tuple, np.ndarray]]]:
    """Every model's per-datapoint statistics and every pair's per-datapoint MC variance of the difference.

    The sources are read in lockstep: block b of every model, reduced, then dropped.
    ``pair_variances[(a, b, name)]`` has shape (N,).
    """
    prepared = [source.for_statistics(rows) for source in sources]
    if any(p is None for p in prepared):
        return None
    iterators = [blocks for blocks, _ in prepared]
    common = common_streams(sources)
    parts: List[List[_RowStatistics]] = [[] for _ in sources]
    pair_parts: Dict[tuple, List[np.ndarray]] = {}
    caught: List[tuple] = []
    for blocks in zip(*iterators):
        start = blocks[0][0]
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            stats = [_row_statistics(block, chosen, sources[0].shared_columns) for _, block in blocks]
            for a in range(len(blocks)):
                parts[a].append(stats[a])
                for b in range(a + 1, len(blocks)):
                    for est in chosen:
                        var = difference_mc_variance(blocks[a][1], blocks[b][1], est, stats[a].mc_variance[est.name],
                                                     stats[b].mc_variance[est.name], common=common[(a, b)])
                        pair_parts.setdefault((a, b, est.name), []).append(var)
        caught += [(start, record) for record in records]
        del blocks
    reissue_warnings(caught)
    joined = [_join(p) for p in parts]
    return joined, {key: np.concatenate(value) for key, value in pair_parts.items()}


def _join(parts: List[_RowStatistics]) -> _RowStatistics:
    first = parts[0]
    return _RowStatistics(
        values={name: np.concatenate([p.values[name] for p in parts]) for name in first.values},
        mc_variance={name: None if first.mc_variance[name] is None
                     else np.concatenate([p.mc_variance[name] for p in parts]) for name in first.mc_variance},
        ess_fraction=np.concatenate([p.ess_fraction for p in parts]),
        khat=np.concatenate([p.khat for p in parts]),
        column_sums=None if first.column_sums is None else {
            name: np.sum([p.column_sums[name] for p in parts], axis=0) for name in first.column_sums},
    )


def difference_mc_variance(log_w_a: torch.Tensor, log_w_b: torch.Tensor, estimator: Any,
                           var_a: Optional[np.ndarray], var_b: Optional[np.ndarray], *, common: bool) -> np.ndarray:
    r"""Per-datapoint Monte Carlo variance of ``estimator(log_w_a) - estimator(log_w_b)``, shape (rows,).

    Parameters
    ----------
    log_w_a, log_w_b : Tensor, shape (rows, K)
        Two models' log-weights of the same datapoints.
    estimator : Estimator
        From :func:`evalkit.estimators.get`.
    var_a, var_b : ndarray, shape (rows,), or None
        Each model's own per-datapoint MC variance (``estimator.mc_variance``).
    common : bool
        Whether column i of both matrices comes from the same noise draw (common random
        numbers); otherwise the two are independent and the variances add.

    Returns
    -------
    ndarray, shape (rows,)
        Common streams: ELBO ``var(log w_a - log w_b, ddof=1) / K``; IWAE / JVI / DVI the
        jackknife over the K paired columns, ``(K - 1)/K sum_i (t_(i) - mean t)^2`` with
        ``t_(i) = IWAE(a without column i) - IWAE(b without column i)``; another estimator
        ``(sqrt(var_a) + sqrt(var_b))^2`` (an upper bound). Independent streams:
        ``var_a + var_b``. NaN where the estimator defines no MC variance, or for K = 1.
    """
    if var_a is None or var_b is None:
        return np.full(log_w_a.shape[0], math.nan)
    if not common:
        return var_a + var_b
    k = log_w_a.shape[1]
    if k < 2:
        return np.full(log_w_a.shape[0], math.nan)
    rows_a, rows_b = log_w_a.numpy(), log_w_b.numpy()
    if estimator.mc_variance is elbo_mc_variance:
        finite = np.isfinite(rows_a).all(axis=1) & np.isfinite(rows_b).all(axis=1)
        with np.errstate(invalid="ignore"):
            out = (rows_a - rows_b).var(axis=1, ddof=1) / k
        return np.where(finite, out, math.nan)
    if estimator.mc_variance is iwae_mc_variance:
        return _jackknife_difference_variance(rows_a, rows_b)
    return (np.sqrt(var_a) + np.sqrt(var_b)) ** 2


def _leave_one_out_iwae(rows: np.ndarray) -> np.ndarray:
    """``[rows, K]``: IWAE of each row without column i, ``log(sum_{j != i} w_j / (K - 1))``.

    In the shift by the row maximum the other weights are summed directly for the column of the
    maximum (``S - 1`` would lose them to rounding when that weight dominates); ``-inf`` where a
    row has no other finite weight.
    """
    k = rows.shape[1]
    top = np.max(rows, axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    weights = np.exp(rows - top)
    others = weights.sum(axis=1, keepdims=True) - weights
    at_max = np.argmax(rows, axis=1)
    line = np.arange(rows.shape[0])
    without_max = weights.copy()
    without_max[line, at_max] = 0.0
    others[line, at_max] = without_max.sum(axis=1)
    with np.errstate(divide="ignore"):
        return np.log(others) + top - math.log(k - 1)


def _jackknife_difference_variance(rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
    """Per row, the leave-one-column-out jackknife variance of ``IWAE(a) - IWAE(b)`` over paired columns."""
    k = rows_a.shape[1]
    gap = _leave_one_out_iwae(rows_a) - _leave_one_out_iwae(rows_b)
    with np.errstate(invalid="ignore"):
        centred = gap - gap.mean(axis=1, keepdims=True)
        return (k - 1) / k * np.einsum("ij,ij->i", centred, centred)


def shared_column_difference_se(sums_a: np.ndarray, sums_b: np.ndarray, n: int) -> float:
    """Jackknife MC SE of ``mean_n (a_n - b_n)`` over shared column groups (leave-group-out sums of each model)."""
    gap = (np.asarray(sums_a) - np.asarray(sums_b)) / n
    return jackknife_se(gap) if np.all(np.isfinite(gap)) else float("nan")


def _metadata(labels, sources, seeds, chosen, common, k, seed, dims) -> Dict[str, Any]:
    from .estimate import _version

    return {
        "k": k,
        "n": sources[0].n,
        "seed": seed,
        "data": sources[0].data_label,
        "dims": dims,
        "estimators": [est.name for est in chosen],
        "quantity": sources[0].quantity_label,
        "models": [{"name": label, "model": source.model_label, "seed": s, "noise": _describe(source)}
                   for label, source, s in zip(labels, sources, seeds)],
        "common_random_numbers": [{"model_a": labels[a], "model_b": labels[b], "common": bool(c)}
                                  for (a, b), c in common.items()],
        "se_mc_method": ("per datapoint: the jackknife variance of the difference over the paired columns (of IWAE; "
                         "the ELBO's for elbo) where both models draw the same noise (same seed and noise shape), "
                         "else the sum of "
                         "the two variances; (sqrt(var_a) + sqrt(var_b))^2 for estimators of another kind"),
        "z_method": "z = difference / se_total, se_total^2 = se_paired^2 + se_mc^2 - sum_n var_mc(d_n) / N^2 "
                    "(= se_paired^2 when every datapoint has its own streams); p_value two-sided normal",
        "evalkit_version": _version(),
        "torch_version": torch.__version__,
    }


def _describe(source: LogWeightSource) -> Optional[str]:
    signature = _signature(source)
    if signature is None:
        return None
    model = getattr(source, "model", None)
    shape = getattr(model, "noise_shape", None)
    return f"noise shape {tuple(shape)}" if shape is not None else "weight noise of its parameters"
