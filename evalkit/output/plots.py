"""Figures of a sweep: estimate, |bias| and variance versus K, and the PSIS k-hat histogram.

Every function takes a :class:`~evalkit.analysis.sweep.SweepResult` and ``ax=None`` and returns the
:class:`matplotlib.figure.Figure` it drew on, so the figures work in notebooks and in files
alike. New figures are plain ``Figure`` objects on an Agg canvas: nothing here touches pyplot's
global state or the user's backend. matplotlib is imported only when a figure is made.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InputError

FIGURE_FORMATS = ("png", "svg", "pdf")

#: Figure size in inches and PNG resolution.
FIGSIZE = (6.4, 4.4)
DPI = 120

_SLOPE_STYLES = {1: ":", 2: "-.", 3: (0, (4, 1, 1, 1, 1, 1))}


__all__ = ["FIGURE_FORMATS", "check_formats", "figure_png_bytes", "plot_bdmc", "plot_bias", "plot_estimates", "plot_khat",
           "plot_variance", "save_figure", "sweep_figures"]

def plot_estimates(result, ax=None):
    """Plot each estimator's mean estimate against K, with 95% bands and the reference line.

    Parameters
    ----------
    result : SweepResult
    ax : matplotlib Axes, optional
        Draw here; a new figure is made when omitted.

    Returns
    -------
    Figure

    Notes
    -----
    The band is ``estimate ± 1.96 SE(estimate - reference)`` (the ``bias_se`` column): the
    uncertainty of the distance to the dashed reference line, which is what the plot is for.
    The x axis is logarithmic.
    """
    result = result.shown()  # in the unit the result is shown in (nats or bits/dim)
    fig, ax = _axes(ax)
    table = result.table
    for color, name in _estimator_colors(result):
        sub = table[table["estimator"] == name].sort_values("k")
        if sub.empty:
            continue
        k = sub["k"].to_numpy(float)
        y = sub["estimate"].to_numpy(float)
        half = 1.96 * sub["bias_se"].to_numpy(float)
        (line,) = ax.plot(k, y, marker="o", ms=4, color=color, label=_pretty(name))
        ok = np.isfinite(half)
        if ok.any():
            ax.fill_between(k[ok], (y - half)[ok], (y + half)[ok], color=color, alpha=0.2, linewidth=0)
    ref = result.reference
    ax.axhline(ref.mean, color="black", linestyle="--", linewidth=1.2, label=f"reference: {_ref_legend(ref, result.quantity)}")
    ax.set_xscale("log")
    ax.set_xlabel("K (samples per datapoint)")
    ax.set_ylabel(f"mean {result.quantity} estimate (nats)" if result.units == "nats" else "mean bits per dimension (bits/dim)")
    ax.set_title(f"Estimate vs K (N = {result.metadata['n']}; band: 95% CI of estimate - reference)", fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    _legend(ax, fontsize=8)
    return fig


def plot_bias(result, ax=None, *, slopes: Sequence[int] = (1, 2, 3)):
    """Plot |bias| against K on log-log axes, with the IWAE theory curve and slope guides.

    Parameters
    ----------
    result : SweepResult
    ax : matplotlib Axes, optional
    slopes : sequence of int
        Draw guides ``∝ K^-s`` for these s (IWAE falls like K^-1, JVI-m like K^-(m+1)),
        anchored at IWAE's |bias| at the smallest K.

    Returns
    -------
    Figure

    Notes
    -----
    Filled markers: |bias| > 2 SE (resolved); hollow markers: within 2 SE of zero, so the
    point is an upper bound, not a slope. Vertical bars are ± 2 SE. The dashed curve is the
    leading-order IWAE bias ``mu2 / (2 K mu^2)`` from the pool's sample moments. Points that
    are exactly zero (the reference estimator at K_max) cannot be drawn on a log axis.
    """
    result = result.shown()  # in the unit the result is shown in (nats or bits/dim)
    fig, ax = _axes(ax)
    table = result.table
    plotted: List[float] = []
    plotted_k: List[float] = []  # not the loop's last k: that estimator may have no rows (jvi2 at K_max = 2)
    anchor: Optional[Tuple[float, float]] = None
    for color, name in _estimator_colors(result):
        sub = table[table["estimator"] == name].sort_values("k")
        k = sub["k"].to_numpy(float)
        b = np.abs(sub["bias"].to_numpy(float))
        se = sub["bias_se"].to_numpy(float)
        ok = np.isfinite(b) & (b > 0)
        if not ok.any():
            continue
        k, b, se = k[ok], b[ok], se[ok]
        ax.plot(k, b, marker="o", ms=4, color=color, label=_pretty(name))
        weak = ~(b > 2 * np.nan_to_num(se, nan=np.inf))
        if weak.any():
            ax.scatter(k[weak], b[weak], s=30, facecolors="white", edgecolors=color, zorder=3)
        bars = np.isfinite(se)
        if bars.any():
            low = np.maximum(b[bars] - 2 * se[bars], b[bars] * 1e-3)
            ax.vlines(k[bars], low, b[bars] + 2 * se[bars], color=color, alpha=0.5, linewidth=1)
            _mark_clipped(ax, k[bars], b[bars], se[bars], color)
        plotted.extend(b.tolist())
        plotted_k.extend(k.tolist())
        if name == "iwae" or anchor is None:
            anchor = (float(k[0]), float(b[0]))
    theory = result.theory_in_range()  # only where the expansion holds (no curve outside it)
    tk = theory["k"].to_numpy(float)
    tb = np.abs(theory["bias"].to_numpy(float))
    good = np.isfinite(tb) & (tb > 0)
    if good.any():
        ax.plot(tk[good], tb[good], color=_color_of(result, "iwae"), linestyle="--", linewidth=1.2,
                label="IWAE theory: mu2 / (2 K mu^2)" + _theory_subset(result, theory))
        plotted.extend(tb[good].tolist())
    if anchor is not None and plotted:
        k_all = np.geomspace(anchor[0], max(tk.max() if tk.size else 0.0, max(plotted_k), anchor[0] * 1.0001), 50)
        for s in slopes:
            ax.plot(k_all, anchor[1] * (k_all / anchor[0]) ** (-float(s)), color="0.45", linewidth=0.9,
                    linestyle=_SLOPE_STYLES.get(s, ":"), label=f"slope -{s}")
        lo, hi = min(plotted), max(plotted)
        ax.set_ylim(lo / 3.0, hi * 3.0)
        # The guides are named in the legend, which matplotlib places where the data are not
        # (labels written beside the lines sat on the data points).
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("K (samples per datapoint)")
    ax.set_ylabel(f"|bias| ({result.unit_label}) vs {_ref_axis(result.reference, result.quantity)}")
    ax.set_title("|bias| vs K (hollow: within 2 SE of 0; bars: ± 2 SE)", fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    # Outside the axes, to the right: inside, wherever it went it covered a slope guide or the points
    # (the guides fan out from the upper left over the whole plot); constrained layout makes room.
    _legend(ax, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return fig


def plot_variance(result, ax=None):
    """Plot the Monte Carlo variance of one estimate against K on log-log axes.

    Parameters
    ----------
    result : SweepResult
    ax : matplotlib Axes, optional

    Returns
    -------
    Figure

    Notes
    -----
    Variance needs at least two disjoint groups, so K > K_max / 2 is absent. Bars are ± 2 SE
    over datapoints; the dashed curve is IWAE's leading-order ``mu2 / (K mu^2)``.
    """
    result = result.shown()  # in the unit the result is shown in (nats or bits/dim)
    fig, ax = _axes(ax)
    table = result.table
    plotted: List[float] = []
    for color, name in _estimator_colors(result):
        sub = table[table["estimator"] == name].sort_values("k")
        k = sub["k"].to_numpy(float)
        v = sub["variance"].to_numpy(float)
        se = sub["variance_se"].to_numpy(float)
        ok = np.isfinite(v) & (v > 0)
        if not ok.any():
            continue
        ax.plot(k[ok], v[ok], marker="o", ms=4, color=color, label=_pretty(name))
        plotted.extend(v[ok].tolist())
        bars = ok & np.isfinite(se)
        if bars.any():
            low = np.maximum(v[bars] - 2 * se[bars], v[bars] * 1e-3)
            ax.vlines(k[bars], low, v[bars] + 2 * se[bars], color=color, alpha=0.5, linewidth=1)
            _mark_clipped(ax, k[bars], v[bars], se[bars], color)
    theory = result.theory_in_range()
    tk = theory["k"].to_numpy(float)
    tv = theory["variance"].to_numpy(float)
    good = np.isfinite(tv) & (tv > 0)
    if good.any():
        ax.plot(tk[good], tv[good], color=_color_of(result, "iwae"), linestyle="--", linewidth=1.2,
                label="IWAE theory: mu2 / (K mu^2)" + _theory_subset(result, theory))
        plotted.extend(tv[good].tolist())
    if plotted:  # limits from the points; long error bars are cut by the frame
        ax.set_ylim(min(plotted) / 3.0, max(plotted) * 3.0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("K (samples per datapoint)")
    ax.set_ylabel(f"variance of one estimate (({result.unit_label})^2)" if result.units == "bpd" else "variance of one estimate (nats^2)")
    ax.set_title("Monte Carlo variance vs K (bars: ± 2 SE over datapoints)", fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    _legend(ax, fontsize=8)
    return fig


def plot_khat(result, ax=None, *, bins: int = 30):
    """Histogram of per-datapoint PSIS k-hat with 0.5, 0.7 and the K-aware threshold ``min(1 - 1/log10(K), 0.7)``.

    Parameters
    ----------
    result : SweepResult
    ax : matplotlib Axes, optional
    bins : int

    Returns
    -------
    Figure

    Notes
    -----
    Below 0.5 the weights have finite variance and the bias/variance asymptotics apply;
    between 0.5 and 0.7 the estimates converge but the asymptotics do not hold; above 0.7
    (or the sample-size threshold ``min(1 - 1/log10(K), 0.7)`` when lower) the estimates are
    unreliable.
    """
    fig, ax = _axes(ax)
    w = result.weights
    khat = w.khat[np.isfinite(w.khat)]
    lo = min(float(khat.min()) if khat.size else 0.0, -0.1)
    hi = max(float(khat.max()) if khat.size else 1.0, 1.0)
    ax.hist(khat, bins=np.linspace(lo, hi, bins + 1), color="tab:blue", alpha=0.75, label="datapoints")
    ax.axvline(w.good, color="tab:orange", linestyle="--", label=f"{w.good:g}: infinite variance above")
    ax.axvline(w.bad, color="tab:red", linestyle="--", label=f"{w.bad:g}: unreliable above")
    if w.threshold < w.bad - 1e-12:
        ax.axvline(w.threshold, color="tab:purple", linestyle=":",
                   label=f"{w.threshold:.2f}: threshold for K = {result.metadata['k_max']}")
    ax.set_xlabel("PSIS k-hat")
    ax.set_ylabel("datapoints")
    ax.set_title(
        f"PSIS k-hat at K = {result.metadata['k_max']}: {w.fraction_above_good:.1%} > {w.good:g}, "
        f"{w.fraction_above_threshold:.1%} > {w.threshold:.2f} (threshold for K = {result.metadata['k_max']})",
        fontsize=9,
    )
    _legend(ax, fontsize=8)
    return fig


def sweep_figures(result) -> Dict[str, Any]:
    """All standard figures: ``{"estimate", "bias", "variance", "khat"} -> Figure``."""
    return {
        "estimate": plot_estimates(result),
        "bias": plot_bias(result),
        "variance": plot_variance(result),
        "khat": plot_khat(result),
    }


def save_figure(fig, stem: Union[str, os.PathLike], *, formats: Sequence[str] = FIGURE_FORMATS,
                overwrite: bool = False, group=None) -> List[Path]:
    """Save ``fig`` as ``stem.png``, ``stem.svg``, ``stem.pdf`` (each atomically); return the paths.

    With ``group`` (an :class:`evalkit.atomic.OutputGroup`) the files are staged in it and appear
    when it commits.

    SVG and PDF carry no creation date and SVG ids are salted with a constant, so reruns give
    identical files.
    """
    import matplotlib

    from ..atomic import atomic_path

    formats = check_formats(formats)
    paths = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}.get(fmt)
        # A fixed salt makes SVG element ids (random by default) the same on every run.
        with atomic_path(path, overwrite=overwrite, group=group) as tmp, \
                matplotlib.rc_context({"svg.hashsalt": "evalkit"}):
            fig.savefig(tmp, format=fmt, dpi=DPI, metadata=metadata)
        paths.append(path)
    return paths


def check_formats(formats: Sequence[str]) -> Tuple[str, ...]:
    """Validate figure formats (``png``, ``svg``, ``pdf``)."""
    if isinstance(formats, str):
        formats = [f for f in formats.split(",") if f]
    bad = [f for f in formats if f not in FIGURE_FORMATS]
    if bad:
        raise InputError(f"unknown figure format {bad[0]!r}; use any of {', '.join(FIGURE_FORMATS)}")
    return tuple(dict.fromkeys(formats))


def figure_png_bytes(fig) -> bytes:
    """The figure as PNG bytes (for embedding in HTML)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------


def _theory_subset(result, theory) -> str:
    """`` (27 of 359 datapoints: k-hat < 0.5)`` when the theory averages fewer datapoints than the
    measured points do (the moments do not exist for the others), else ``""``: a curve from a
    subset can lie far from the measurement over all of them, and the legend must say why."""
    used = int(theory["datapoints"].iloc[0]) if "datapoints" in theory and len(theory) else result.metadata["n"]
    n = result.metadata["n"]
    return f"\n(from {used} of {n} datapoints: k-hat < 0.5)" if used < n else ""


def _legend(ax, **options) -> None:
    # A sweep with nothing to draw (one K, one column) has no labelled artists; matplotlib would
    # warn "No artists with labels found to put in legend", which tells the user nothing.
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**options)


def _axes(ax):
    if ax is not None:
        return ax.figure, ax
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _estimator_colors(result):
    names = list(result.metadata.get("estimators", []))
    return [(f"C{i % 10}", name) for i, name in enumerate(names)]


def _color_of(result, name: str) -> str:
    for color, other in _estimator_colors(result):
        if other == name:
            return color
    return "0.3"


def _pretty(name: str) -> str:
    if name.startswith("jvi") and name[3:].isdigit():
        return f"JVI-{name[3:]}"
    return name.upper()


def _ref_legend(ref, quantity: str) -> str:
    """The reference's legend entry; ``quantity`` is what is estimated (the result's ``quantity``)."""
    if ref.kind == "pool":
        return f"{_pretty(ref.estimator)} at K = {ref.k} (no exact {quantity})"
    if ref.kind == "exact":
        return f"exact {quantity}"
    if ref.kind == "ais":
        return f"AIS {quantity}"
    return f"user-supplied {quantity}"


def _ref_axis(ref, quantity: str) -> str:
    if ref.kind == "pool":
        return f"{_pretty(ref.estimator)} at K={ref.k} (no exact)"
    return {"exact": f"exact {quantity}", "ais": "AIS reference"}.get(ref.kind, "user reference")


def _mark_clipped(ax, k, value, se, color) -> None:
    """Mark with a downward triangle the error bars whose lower end (value - 2 SE) is at or below
    zero: on a log axis they are cut, and the triangle says so (the figure captions explain it)."""
    clipped = value - 2 * se <= 0
    if clipped.any():
        ax.plot(k[clipped], value[clipped] / 2.5, linestyle="none", marker="v", ms=4, color=color, alpha=0.7,
                clip_on=True)


def plot_bdmc(report, ax=None):
    """BDMC bounds against AIS steps, with IWAE/JVI on the same simulated data against K.

    ``report`` is :func:`evalkit.bdmc`'s result. Lower (forward AIS) and upper (reverse AIS)
    bounds with 2-SE bars; the true log p(x) of the simulated data lies between them, and where
    IWAE-K sits below the lower bound it is at least that far from it.
    """
    fig, ax = _axes(ax)
    summary = report.bounds.summary
    steps = summary["steps"].to_numpy()
    for column, label, color in (("lower", "AIS lower bound (forward)", "C0"), ("upper", "AIS upper bound (reverse)", "C3")):
        ax.errorbar(steps, summary[column], yerr=2 * summary[f"{column}_se"], marker="o", color=color, label=label,
                    capsize=3)
    if "exact" in summary:
        ax.axhline(float(summary["exact"].iloc[0]), color="black", linestyle=":", label="exact log p(x)")
    for i, (name, rows) in enumerate(report.importance.groupby("estimator", sort=False)):
        ax.plot(rows["k"], rows["estimate"], marker="s", linestyle="--", color=f"C{i + 1}",
                label=f"{_pretty(name)} (x axis: K)")
    ax.set_xscale("log")
    ax.set_xlabel("AIS steps T  /  importance samples K")
    ax.set_ylabel("mean log p(x) of the simulated data (nats)")
    ax.set_title("Bidirectional Monte Carlo")
    _legend(ax, fontsize=8)
    return fig
