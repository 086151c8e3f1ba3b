"""``evalkit.analysis.estimate``: log p(x) estimates with standard errors for one K.

The model half (the engine) produces ``[N, K]`` log-weights; every estimator is then a pure
function of them, row by row. :class:`EstimateResult` holds the tables and writes them in every
format.

Streaming. Every statistic here is a function of one datapoint's row (estimate, Monte Carlo
variance, ESS, PSIS k-hat), and the dataset summaries are means and sums over the per-datapoint
results. So :func:`estimate` computes the log-weights of a block of datapoints at a time
(``indices=`` their dataset indices, which key the noise: the engine's rows are bitwise those of
a whole run), reduces the block to its per-datapoint results and frees it. Memory then does not
grow with N and, up to K of about 75 000, not with K either (:func:`block_rows`); the numbers
are bitwise those of the whole matrix. The whole matrix is computed only where it is itself
needed: ``keep_log_weights=True``, a ``cache``, torchrun, or explicit ``indices``.
"""
from __future__ import annotations

import json
import math
import platform
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch

from .. import estimators as estimator_registry
from ..estimators.arraykind import as_rows
from ..sampling.blocks import BLOCK_COPIES, STATISTICS_BUDGET, block_rows, check_block_size, engine_blocks, reissue_warnings  # noqa: F401 (re-exported)
from .diagnostics import summarize_weights, weight_diagnostics
from ..errors import InputError
from ..sources.inputs import DataLike, ModelLike, resolve_data, resolve_model
from ..output.files import render
from ..estimators.psis import MIN_TAIL_LENGTH

DEFAULT_ESTIMATORS = ("elbo", "iwae", "jvi1", "jvi2", "dvi")

#: Version of the JSON document written by :meth:`EstimateResult.to_json` (see README, "JSON output").
JSON_SCHEMA_VERSION = 1



@dataclass
class EstimateResult:
    """Estimates of mean log p(x) over a dataset at one K, with standard errors.

    Attributes
    ----------
    summary : DataFrame
        One row per estimator: ``estimator``, ``k``, ``estimate`` (mean over datapoints of the
        per-datapoint estimate, nats), ``se_data`` (its standard error over datapoints:
        sample standard deviation / sqrt(N), which includes Monte Carlo noise), ``se_mc`` (the
        Monte Carlo standard error of the mean, sqrt(sum_n var_n) / N with var_n the
        estimator's per-datapoint Monte Carlo variance estimate; NaN where none is defined),
        ``n``.
    per_example : DataFrame
        One row per datapoint (``index`` = position in the dataset): one column per estimator,
        plus ``ess`` (effective sample size of the K weights) and ``psis_khat``.
    diagnostics : dict
        Summary of the weight diagnostics: mean ESS/K, fractions of k-hat above 0.5 and 0.7
        and the indices of the datapoints above 0.7.
    metadata : dict
        k, seed, N, what the model and data were, versions, elapsed seconds.
    log_weights : Tensor or None
        The ``[N, K]`` float64 log-weights, when asked for with ``keep_log_weights=True``.
    """

    summary: pd.DataFrame
    per_example: pd.DataFrame
    diagnostics: Dict[str, Any]
    metadata: Dict[str, Any]
    log_weights: Optional[torch.Tensor] = field(default=None, repr=False)

    def to_dict(self, *, per_example: bool = False) -> Dict[str, Any]:
        """The JSON document as a dict (schema in the README, "JSON output")."""
        doc: Dict[str, Any] = {
            "schema_version": JSON_SCHEMA_VERSION,
            "metadata": self.metadata,
            "estimates": [
                {key: _json_value(value) for key, value in row.items()}
                for row in self.summary.to_dict(orient="records")
            ],
            "diagnostics": {key: _json_value(value) for key, value in self.diagnostics.items()},
        }
        if per_example:
            doc["per_example"] = {
                column: [_json_value(v) for v in self.per_example[column].tolist()]
                for column in self.per_example.columns
            }
        return doc

    def to_json(self, *, per_example: bool = False, indent: int = 2) -> str:
        """JSON text; floats are written with full (round-trip) precision, NaN as null."""
        return json.dumps(self.to_dict(per_example=per_example), indent=indent, allow_nan=False)

    def to_csv(self) -> str:
        """The summary table as CSV text."""
        return self.summary.to_csv(index=False, float_format="%.17g")

    def to_markdown(self) -> str:
        """The summary table as a Markdown (GitHub) table."""
        return _display_frame(self.summary).to_markdown(index=False) + "\n"

    def to_latex(self) -> str:
        """The summary table as a LaTeX ``tabular`` (booktabs style)."""
        frame = _display_frame(self.summary)
        lines = [
            r"\begin{tabular}{lrrrr}",
            r"\toprule",
            r"Estimator & $K$ & $\log p(x)$ & SE (data) & SE (MC) \\",
            r"\midrule",
        ]
        for row in frame.itertuples(index=False):
            lines.append(
                f"{_latex_escape(row.estimator)} & {row.k} & {row.estimate} & {row.se_data} & {row.se_mc} \\\\"
            )
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"

    def to_table(self) -> str:
        """A plain-text table for the terminal, followed by the weight diagnostics."""
        frame = _display_frame(self.summary)
        text = frame.to_string(index=False)
        meta = self.metadata
        head = (
            f"log p(x) estimates: {meta['data']}, N = {meta['n']}, K = {meta['k']}, seed = {meta['seed']}"
        )
        return f"{head}\n{text}\n{self.diagnostics_text()}\n"

    def diagnostics_text(self) -> str:
        """One or two lines that say whether the importance weights can be trusted."""
        d = self.diagnostics
        if not math.isfinite(d["max_psis_khat"]):
            return (
                f"weights: mean ESS/K = {d['mean_ess_fraction']:.3g}; PSIS k-hat not available "
                f"(needs at least {MIN_TAIL_LENGTH} tail weights, i.e. K >= 21)"
            )
        text = (
            f"weights: mean ESS/K = {d['mean_ess_fraction']:.3g}; PSIS k-hat > 0.5 for "
            f"{d['fraction_khat_above_0.5']:.1%}, > 0.7 for {d['fraction_khat_above_0.7']:.1%} of datapoints"
        )
        if d["indices_khat_above_0.7"]:
            shown = ", ".join(str(i) for i in d["indices_khat_above_0.7"][:10])
            more = " ..." if len(d["indices_khat_above_0.7"]) > 10 else ""
            text += (
                f"\nwarning: k-hat > 0.7 (weights with nearly infinite variance) at datapoints {shown}{more}; "
                "IWAE/JVI asymptotics and standard errors are unreliable there"
            )
        return text

    def format(self, fmt: str) -> str:
        """Render in ``fmt``: one of ``table``, ``json``, ``csv``, ``markdown``, ``latex``."""
        writers = {
            "table": self.to_table,
            "json": self.to_json,
            "csv": self.to_csv,
            "markdown": self.to_markdown,
            "latex": self.to_latex,
        }
        return render(fmt, writers)

    def __str__(self) -> str:
        return self.to_table()

    def _repr_html_(self) -> str:
        # Jupyter shows the summary table and the diagnostics line.
        diag = self.diagnostics_text().replace("\n", "<br>")
        return _display_frame(self.summary).to_html(index=False) + f"<p>{diag}</p>"


def estimate(
    model: ModelLike,
    data: DataLike,
    k: int = 5000,
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    seed: int = 0,
    *,
    keep_log_weights: bool = False,
    factory: Optional[str] = None,
    prefix: Optional[str] = None,
    allow_pickle: bool = False,
    split: str = "test",
    binarize: str = "none",
    cache: Optional[Any] = None,
    cache_shard_size: Optional[int] = None,
    block_size: Optional[int] = None,
    **engine_options: Any,
) -> Optional[EstimateResult]:
    """Estimate mean log p(x) over ``data`` with K importance samples per datapoint.

    Parameters
    ----------
    model : Module or path
        A loaded model (the protocol in the README) or a checkpoint path (see
        :func:`evalkit.load_model`; ``factory``, ``prefix`` and ``allow_pickle`` are passed on).
    data : Tensor, ndarray, path or str
        ``[N, D]`` data, a data file, or a built-in dataset name such as ``"digits"`` (``split``
        and ``binarize`` say which part and how to binarise; ``seed`` seeds the Bernoulli
        binarisation).
    k : int
        Importance samples per datapoint.
    estimators : sequence of str
        Names from :func:`evalkit.estimators.available` (any ``"jviM"`` works).
    seed : int
        Seed of the per-datapoint random streams; the same seed gives the same numbers whatever
        the batching, device count or data order.
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
    chosen = _check_estimators(estimators, k)
    check_block_size(block_size)
    started = time.perf_counter()
    model_obj = resolve_model(model, factory=factory, prefix=prefix, allow_pickle=allow_pickle)
    data_tensor = resolve_data(data, model=model_obj, split=split, binarize=binarize, seed=seed)

    from ..sampling import distributed

    if cache is not None and distributed.launched_by_torchrun():
        raise InputError("a cache cannot be shared by torchrun's processes; run one process with the cache, "
                         "or drop the cache under torchrun.")
    names = [e.name for e in chosen]
    if cache is not None:
        from ..sampling.cache import cached_log_weights

        log_w = cached_log_weights(
            model_obj, data_tensor, k, cache_dir=cache, seed=seed, shard_size=cache_shard_size, **engine_options
        )
    elif distributed.launched_by_torchrun():
        log_w = distributed.log_weights(model_obj, data_tensor, k, seed=seed, **engine_options)
        if log_w is None:  # not rank 0: its rows went to rank 0
            return None
    elif keep_log_weights or "indices" in engine_options:
        # The result holds the whole matrix, or the caller chose each row's random stream.
        from ..sampling.engine import log_weights as compute_log_weights

        log_w = compute_log_weights(model_obj, data_tensor, k, seed=seed, **engine_options)
    else:
        log_w = None
    if log_w is not None:
        result = estimate_from_log_weights(log_w, estimators=names, keep_log_weights=keep_log_weights,
                                           block_size=block_size)
    else:
        n = data_tensor.shape[0]
        rows = int(block_size) if block_size else block_rows(n, k)
        blocks = engine_blocks(model_obj, data_tensor, k, seed=seed, rows=rows, engine_options=engine_options)
        result = _result(_stream_statistics(blocks, chosen), chosen, n, k)
    result.metadata.update(
        seed=seed,
        model=_describe(model, model_obj),
        data=_describe_data(data, split, binarize),
        elapsed_seconds=round(time.perf_counter() - started, 3),
    )
    return result


def estimate_from_log_weights(
    log_w: Any,
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    *,
    keep_log_weights: bool = False,
    block_size: Optional[int] = None,
) -> EstimateResult:
    """Build an :class:`EstimateResult` from a precomputed ``[N, K]`` log-weight matrix.

    Use it on log-weights from any other tool. No randomness is involved: ``seed`` in the
    metadata is ``None``. The statistics run over blocks of ``block_size`` rows (default
    :func:`block_rows`), so their temporaries stay within :data:`STATISTICS_BUDGET` whatever N;
    the result does not depend on the block size, bit for bit.
    """
    log_w = torch.as_tensor(log_w)
    if log_w.ndim != 2 or log_w.shape[1] == 0 or log_w.shape[0] == 0:
        raise InputError(
            f"log-weights must be a non-empty [N, K] matrix (one row per datapoint), got shape {tuple(log_w.shape)}"
        )
    # Contiguous, so that row blocks are views and the check below reads the matrix in place.
    log_w = log_w.to("cpu", torch.float64).contiguous()
    n, k = log_w.shape
    chosen = _check_estimators(estimators, k)
    check_block_size(block_size)
    # NaN / +inf are refused here, naming rows of the whole matrix (a block would name its own rows).
    as_rows(log_w)
    rows = int(block_size) if block_size else block_rows(n, k)
    blocks = ((start, log_w[start:start + rows]) for start in range(0, n, rows))
    return _result(_stream_statistics(blocks, chosen), chosen, n, k, log_w if keep_log_weights else None)


@dataclass
class _RowStatistics:
    """Per-datapoint results for some rows; estimator columns in the order of the chosen estimators.

    ``values[name]``, ``mc_variance[name]`` (None where the estimator defines none),
    ``ess_fraction`` and ``khat`` all have shape ``(rows,)``.
    """

    values: Dict[str, np.ndarray]
    mc_variance: Dict[str, Optional[np.ndarray]]
    ess_fraction: np.ndarray
    khat: np.ndarray


def _row_statistics(log_w: torch.Tensor, chosen: Sequence[Any]) -> _RowStatistics:
    """Every per-datapoint statistic of ``log_w`` ``[rows, K]`` (float64, CPU): each row's alone."""
    values: Dict[str, np.ndarray] = {}
    mc_variance: Dict[str, Optional[np.ndarray]] = {}
    for est in chosen:
        values[est.name] = _as_numpy(est(log_w))
        mc_variance[est.name] = _as_numpy(est.mc_variance(log_w)) if est.mc_variance is not None else None
    weights = weight_diagnostics(log_w)
    return _RowStatistics(values, mc_variance, weights.ess_fraction, weights.khat)


def _stream_statistics(blocks: Iterable[Tuple[int, torch.Tensor]], chosen: Sequence[Any]) -> _RowStatistics:
    """Run :func:`_row_statistics` on each ``(start, block)`` and concatenate the results in row order.

    Only the per-datapoint results outlive a block. Warnings the estimators raise on a block
    are re-issued once at the end, naming rows of the whole matrix (:func:`evalkit.sampling.blocks.reissue_warnings`).
    """
    parts: List[_RowStatistics] = []
    caught: List[Tuple[int, warnings.WarningMessage]] = []
    for start, block in blocks:
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")  # the caller's filters apply when they are re-issued
            parts.append(_row_statistics(block, chosen))
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
    )


def _result(
    stats: _RowStatistics,
    chosen: Sequence[Any],
    n: int,
    k: int,
    log_w: Optional[torch.Tensor] = None,
) -> EstimateResult:
    """Assemble the :class:`EstimateResult` from the per-datapoint statistics of all ``n`` rows."""
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
                "se_mc": _mc_standard_error(stats.mc_variance[est.name], n),
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
        "max_psis_khat": float(np.nanmax(stats.khat)) if np.isfinite(stats.khat).any() else float("nan"),
    }
    metadata = {
        "k": k,
        "n": n,
        "seed": None,
        "model": None,
        "data": "log-weights",
        "evalkit_version": _version(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }
    return EstimateResult(
        summary=summary,
        per_example=pd.DataFrame(per_example),
        diagnostics=diagnostics,
        metadata=metadata,
        log_weights=log_w,
    )


def _check_estimators(names: Sequence[str], k: int) -> list:
    chosen = estimator_registry.get_many(names)
    for est in chosen:
        if k < est.min_k:
            raise InputError(
                f"estimator {est.name!r} needs k >= {est.min_k} samples per datapoint, got k = {k}; "
                f"raise k or choose a lower order"
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


def _mc_standard_error(mc_variance: Optional[np.ndarray], n: int) -> float:
    # Monte Carlo SE of the dataset mean: datapoints draw independent samples, so variances add.
    if mc_variance is None or not np.all(np.isfinite(mc_variance)):
        return float("nan")
    return float(math.sqrt(float(np.sum(mc_variance))) / n)


def _display_frame(summary: pd.DataFrame) -> pd.DataFrame:
    frame = summary.copy()
    frame["estimate"] = frame["estimate"].map(lambda v: f"{v:.4f}")
    for column in ("se_data", "se_mc"):
        frame[column] = frame[column].map(lambda v: "n/a" if not math.isfinite(v) else f"{v:.4f}")
    return frame.drop(columns=["n"])


def _latex_escape(text: str) -> str:
    return text.replace("_", r"\_")


def _json_value(value: Any) -> Any:
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def _describe(model: Any, model_obj: Any) -> str:
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        return str(model)
    return type(model_obj).__name__


def _describe_data(data: Any, split: str, binarize: str) -> str:
    if isinstance(data, str) and data == "digits":
        text = f"digits ({split} split)"
    elif isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        text = str(data)
    else:
        text = f"in-memory {type(data).__name__} {tuple(data.shape)}"
    if binarize != "none":
        text += f", binarize={binarize}"
    return text


def _version() -> str:
    from .. import __version__

    return __version__
