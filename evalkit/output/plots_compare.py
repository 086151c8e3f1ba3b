"""The figure of a model comparison (:func:`plot_compare`), in the style of :mod:`evalkit.output.plots`."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .plots import FIGSIZE, _legend

__all__ = ["plot_compare"]


def plot_compare(result, *, estimator: Optional[str] = None, axes=None):
    """Plot a :class:`~evalkit.analysis.compare_result.CompareResult`: per-datapoint differences and the estimates.

    Left: for each pair of models (A - B), the per-datapoint differences ``a_n - b_n`` of
    ``estimator`` sorted, with the zero line and the mean difference. Right: each model's estimate
    with a 95% interval of its paired difference to the best model (``1.96 se_total``), drawn
    around the estimate: a model whose paired interval stays clear of the best model's estimate
    is worse beyond the noise, whatever its (usually much wider) separate interval, drawn thin
    in grey, says.

    Parameters
    ----------
    result : CompareResult
    estimator : str, optional
        Which estimator (default: the first compared).
    axes : pair of Axes, optional
        Where to draw; by default a new figure with two panels.

    Returns
    -------
    Figure
    """
    name = estimator or result.metadata["estimators"][0]
    if name not in result.metadata["estimators"]:
        raise KeyError(f"estimator {name!r} was not compared; choose one of {result.metadata['estimators']}")
    if axes is None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(FIGSIZE[0] * 2, FIGSIZE[1]), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 2)
    left, right = axes
    _differences(result, name, left)
    _estimates(result, name, right)
    return left.figure


def _differences(result, name: str, ax) -> None:
    pairs = result.pairs[result.pairs.estimator == name]
    for i, row in enumerate(pairs.itertuples(index=False)):
        values = np.sort(result.per_example[f"{name}[{row.model_a} - {row.model_b}]"].to_numpy())
        position = (np.arange(len(values)) + 0.5) / len(values)
        ax.plot(position, values, color=f"C{i % 10}", lw=1.4, label=f"{row.model_a} - {row.model_b}: "
                f"mean {row.difference:.3g}")
        ax.axhline(row.difference, color=f"C{i % 10}", ls="--", lw=0.9)
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xlabel("datapoints, sorted by their difference (fraction)")
    ax.set_ylabel(f"{name}: per-datapoint difference (nats)")
    ax.set_title("per-datapoint differences A - B")
    _legend(ax, fontsize="small")


def _estimates(result, name: str, ax) -> None:
    table = result.table[result.table.estimator == name].set_index("model")
    best = table.index[table["rank"] == 1][0]
    names = result.names
    for i, model in enumerate(names):
        estimate, se_data = table.loc[model, "estimate"], table.loc[model, "se_data"]
        ax.errorbar([i], [estimate], yerr=[[1.96 * se_data], [1.96 * se_data]] if math.isfinite(se_data) else None,
                    fmt="none", ecolor="0.6", lw=0.8, capsize=2,
                    label="separate 95% interval" if i == 0 else None)
        if model == best:
            ax.plot([i], [estimate], "o", color="C3", label="best")
            continue
        row = result.difference(model, best, name)
        se = row["se_total"]
        half = 1.96 * se if math.isfinite(se) else 0.0
        ax.errorbar([i], [estimate], yerr=[[half], [half]], fmt="o", color="C0", lw=2.2, capsize=4,
                    label="paired 95% interval of the difference to the best" if i == names.index(model)
                    and model == next(m for m in names if m != best) else None)
    ax.set_xticks(range(len(names)), names, rotation=20 if len(names) > 3 else 0)
    ax.set_ylabel(f"{name} estimate of {result.metadata.get('quantity', 'log p(x)')} (nats)")
    ax.set_title(f"estimates (N = {result.metadata['n']}, K = {result.metadata['k']})")
    _legend(ax, fontsize="small")
