"""Write a :class:`~evalkit.analysis.sweep.SweepResult` to disk: a sweep directory or a self-contained report.

* :func:`write_sweep` -- tables (CSV, JSON, Markdown) and figures (PNG, SVG, PDF) in a directory.
* :func:`write_report` -- ``report.md`` (figures linked as relative files) and ``report.html``
  (figures embedded as base64 PNG, so the one file can be mailed or archived), with the tables,
  the exact command and the versions used.

Every file goes through :mod:`evalkit.atomic`, so each appears whole or not at all, and a new
directory is staged under a hidden name and renamed into place when complete; all target
paths are checked before the first one is written (and, from the CLI, before the sweep runs).
"""
from __future__ import annotations

import base64
import html
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import pandas as pd

from ..analysis.diagnostics import mean_se
from ..analysis.tables import footnoted, markdown_table, pm  # noqa: F401 (footnoted re-exported)
from ..atomic import atomic_directory, atomic_write_bytes, atomic_write_text, check_writable, output_group

PathLike = Union[str, os.PathLike]

FIGURE_NAMES = ("estimate", "bias", "variance", "khat")

_FIGURE_CAPTIONS = {
    "estimate": "Mean estimate vs K with 95% bands (of estimate - reference) and the reference line.",
    "bias": ("|bias| vs K on log-log axes with slope guides -1, -2, -3 and IWAE's leading-order theory (drawn only "
             "where the expansion holds). A downward triangle marks an error bar whose lower end reaches zero: "
             "the log axis cuts it. Points whose |bias| is not above 2 SE are drawn hollow."),
    "variance": ("Monte Carlo variance of one estimate vs K on log-log axes with IWAE's leading-order theory (only "
                 "where it holds); triangles mark bars cut at zero. There is no point at K = K_max: the pool "
                 "holds one group of K_max samples per datapoint, and one group has no variance."),
    "khat": ("Per-datapoint PSIS k-hat at K_max with 0.5, 0.7 and the K-aware threshold min(1 - 1/log10(K), 0.7). k-hat is itself estimated from "
             "the K samples of each datapoint (its tail has about 3 sqrt(K) weights), so which datapoints cross a "
             "threshold varies with K: `evalkit estimate` at K = 1000 and this report at K_max can flag "
             "different ones near the threshold."),
}


# ----------------------------------------------------------------------------------------------
# sweep directory
# ----------------------------------------------------------------------------------------------


def sweep_paths(out: PathLike, *, formats: Sequence[str] = ("png", "svg", "pdf"),
                per_datapoint: bool = False) -> Dict[str, Path]:
    """The files :func:`write_sweep` writes into ``out``, by name."""
    from .plots import check_formats

    out = Path(out)
    paths = {
        "table_csv": out / "sweep.csv",
        "table_json": out / "sweep.json",
        "table_md": out / "sweep.md",
        "theory_csv": out / "theory.csv",
        "fits_csv": out / "fits.csv",
        "weights_csv": out / "weights.csv",
    }
    if per_datapoint:
        paths["per_datapoint_csv"] = out / "per_datapoint.csv"
    for name in FIGURE_NAMES:
        for fmt in check_formats(formats):
            paths[f"{name}_{fmt}"] = out / f"{name}.{fmt}"
    return paths


def report_paths(out: PathLike) -> Dict[str, Path]:
    """The files :func:`write_report` writes into ``out``, by name."""
    out = Path(out)
    paths = {"report_md": out / "report.md", "report_html": out / "report.html",
             "table_csv": out / "sweep.csv", "table_json": out / "sweep.json", "weights_csv": out / "weights.csv"}
    for name in FIGURE_NAMES:
        paths[f"{name}_png"] = out / "figures" / f"{name}.png"
    return paths


def check_output_dir(paths: Dict[str, Path], *, overwrite: bool = False) -> None:
    """Raise :class:`OutputError` now if any of ``paths`` could not be written later.

    The one rule of :func:`evalkit.atomic.check_writable`: directories that do not exist yet are
    fine when their nearest existing ancestor is a writable directory (they are created on
    writing, and removed again if the writing fails).
    """
    for path in paths.values():
        check_writable(path, overwrite=overwrite)


def write_sweep(result, out: PathLike, *, formats: Sequence[str] = ("png", "svg", "pdf"),
                per_datapoint: bool = False, overwrite: bool = False) -> Dict[str, Path]:
    """Write a sweep's tables and figures into directory ``out`` (created if missing).

    Parameters
    ----------
    result : SweepResult
    out : path
        Output directory.
    formats : sequence of {"png", "svg", "pdf"}
        Figure formats.
    per_datapoint : bool
        Also write ``per_datapoint.csv`` (group mean and variance per datapoint, estimator, k).
    overwrite : bool
        Replace existing files; otherwise an existing file is an :class:`OutputError` raised
        before anything is written.

    Returns
    -------
    dict of str -> Path
        ``sweep.csv`` / ``.json`` / ``.md`` (the table), ``theory.csv``, ``fits.csv``,
        ``weights.csv`` (ESS/K and k-hat per datapoint) and ``{estimate,bias,variance,khat}.{fmt}``.
    """
    from .plots import save_figure

    paths = sweep_paths(out, formats=formats, per_datapoint=per_datapoint)
    check_output_dir(paths, overwrite=overwrite)
    # A new directory appears whole or not at all; the files of an existing one together.
    with output_group() as group, atomic_directory(out, group=group) as stage:
        staged = sweep_paths(stage, formats=formats, per_datapoint=per_datapoint)
        texts = {"table_csv": result.to_csv(), "table_json": result.to_json() + "\n", "table_md": result.to_markdown(),
                 "theory_csv": _csv(result.theory), "fits_csv": _csv(result.fits),
                 "weights_csv": _csv(result.weights.to_frame())}
        if per_datapoint:
            texts["per_datapoint_csv"] = _csv(result.per_datapoint)
        for name, text in texts.items():
            atomic_write_text(staged[name], text, overwrite=overwrite, group=group)
        for name, fig in result.figures().items():
            save_figure(fig, stage / name, formats=formats, overwrite=overwrite, group=group)
    return paths


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------


def write_report(result, out: PathLike, *, title: Optional[str] = None, command: Optional[str] = None,
                 overwrite: bool = False) -> Dict[str, Path]:
    """Write a self-contained Markdown + HTML report of a sweep into directory ``out``.

    Parameters
    ----------
    result : SweepResult
    out : path
        Report directory (created if missing), e.g. ``reports/my-model``.
    title : str, optional
        Report title; default ``"evalkit report: <model>"``.
    command : str, optional
        The exact command that produced the result (the CLI passes its command line); from
        Python, say how it was made, e.g. ``"evalkit.sweep(model, data=x, ks=...)"``.
    overwrite : bool
        Replace existing files.

    Returns
    -------
    dict of str -> Path
        ``report.md``, ``report.html``, ``figures/{estimate,bias,variance,khat}.png``,
        ``sweep.csv``, ``sweep.json`` and ``weights.csv``.

    Notes
    -----
    ``report.md`` links the figures as relative files (``figures/bias.png``); ``report.html``
    embeds the same PNG bytes as base64, so it needs no other file.
    """
    from .plots import figure_png_bytes

    paths = report_paths(out)
    check_output_dir(paths, overwrite=overwrite)
    pngs = {name: figure_png_bytes(fig) for name, fig in result.figures().items()}
    title = title or f"evalkit report: {result.metadata.get('model') or result.metadata.get('data')}"
    command = command or "(not recorded: made from Python without command=)"
    # A new report directory appears whole or not at all; the files of an existing one together.
    with output_group() as group, atomic_directory(out, group=group) as stage:
        staged = report_paths(stage)
        staged["report_md"].parent.joinpath("figures").mkdir(exist_ok=True)
        texts = {"table_csv": result.to_csv(), "table_json": result.to_json() + "\n",
                 "weights_csv": _csv(result.weights.to_frame()),
                 "report_md": render_markdown(result, title=title, command=command),
                 "report_html": render_html(result, pngs, title=title, command=command)}
        for name, data in pngs.items():
            atomic_write_bytes(staged[f"{name}_png"], data, overwrite=overwrite, group=group)
        for name, text in texts.items():
            atomic_write_text(staged[name], text, overwrite=overwrite, group=group)
    return paths


def findings(result) -> List[str]:
    """Plain-language answers the report leads with, computed from the result.

    1. How far the estimate at K_max is from log p(x) (measured against an exact or user
       reference, or predicted by the leading-order theory, and the extrapolated value);
    2. whether a debiased estimator moves the answer;
    3. whether the weights can be trusted (PSIS k-hat).
    """

    nats = result
    result = result.shown()  # the findings in the unit the result is shown in
    u = result.unit_label
    table, ref, k_max = result.table, result.reference, result.metadata["k_max"]
    lines: List[str] = []
    last = table[table["k"] == k_max].set_index("estimator")
    # The theory table's numbers (over the datapoints with k-hat < 0.5, where the expansion holds),
    # not the mean over every datapoint, which the heavy-tailed ones inflate.
    valid = result.theory_in_range()
    theory_last = valid[valid["k"] == k_max]
    if "iwae" in last.index:
        row = last.loc["iwae"]
        text = f"IWAE at K = {k_max}: {pm(row['estimate'], row['estimate_se'])} {u} (mean over {result.metadata['n']} datapoints, SE over datapoints){_in_other_unit(nats, k_max)}."
        if ref.kind != "pool":
            kind = {"exact": "exact", "ais": "AIS"}.get(ref.kind, "user-supplied")
            text += f" Measured bias against the {kind} reference ({ref.label}): {pm(row['bias'], row['bias_se'])} {u}."
        if not theory_last.empty:
            text += (f" Leading-order theory from the pool's weight moments puts IWAE's remaining bias at "
                     f"{theory_last['bias'].iloc[0]:.3g} {u} (the theory table: the mean over the "
                     f"{int(theory_last['datapoints'].iloc[0])} datapoints with k-hat < 0.5).")
        lines.append(text)
    per = result.per_datapoint
    at_max = per[per["k"] == k_max].pivot(index="index", columns="estimator", values="mean")
    for est in last.index:
        if est == "iwae" or "iwae" not in last.index:
            continue
        diff, diff_se = mean_se((at_max[est] - at_max["iwae"]).to_numpy())
        text = f"{est} - IWAE at K = {k_max}: {pm(diff, diff_se)} {u} (paired over datapoints)"
        if _debiases_iwae(est):
            # IWAE's bias is negative (a lower bound); removing it moves the estimate up by -bias.
            text += "; a debiased estimator removes IWAE's O(1/K) bias"
            if not theory_last.empty:
                bias = theory_last["bias"].iloc[0]
                text += (f", so the leading-order theory expects {est} - IWAE = {-bias:+.3g} {u} "
                         f"(IWAE's bias of {bias:.3g} {u}, with the sign reversed)")
        elif est == "elbo":
            text += ("; the ELBO (the mean log-weight) is never above IWAE on the same samples (Jensen), "
                     "and more samples do not reduce its bias")
        lines.append(text + ".")
    fits = result.fits.dropna(subset=["a"])
    if not fits.empty:
        parts = [f"{r.estimator} {pm(r.a, r.a_se)} (minus the reference: "
                 f"{pm(r.a_minus_reference, r.a_minus_reference_se)})" for r in fits.itertuples()]
        lines.append(f"Extrapolated {result.quantity if u == 'nats' else u} (fit a + b/K + c/K^2 over K >= "
                     f"{result.metadata.get('fit_min_k')}): " + "; ".join(parts) + f" {u}.")
    w = result.weights
    lines.append(
        f"Weights at K = {k_max}: mean ESS/K = {w.ess_fraction.mean():.3g}; PSIS k-hat > 0.5 for "
        f"{w.fraction_above_good:.1%} and > {w.threshold:.3g} (the threshold min(1 - 1/log10(K), 0.7) for "
        f"K = {k_max}) for {w.fraction_above_threshold:.1%} of the datapoints with a k-hat."
        + (" Bias/variance asymptotics do not hold for those: " + w.warning.split(":")[0] + "."
           if w.warning else " The bias/variance asymptotics can be trusted for every datapoint.")
    )
    if ref.kind == "pool":
        lines.append(f"No exact {result.quantity} was available: 'bias' is measured against {ref.label}.")
    return lines


def _debiases_iwae(name: str) -> bool:
    """Whether ``name`` is one of the estimators that remove IWAE's leading O(1/K) bias."""
    return name in ("dvi", "sumo") or (name.startswith("jvi") and name[3:].isdigit())


def _in_other_unit(result, k_max: int) -> str:
    """IWAE at K_max in the unit the report is not shown in (bits/dim needs D), with the conversion."""
    other = "nats" if result.units == "bpd" else "bpd"
    dims = result.metadata.get("dims")
    if dims is None:
        return ""
    table = result.shown(other).table
    row = table[(table["k"] == k_max) & (table["estimator"] == "iwae")].iloc[0]
    name = "nats per datapoint" if other == "nats" else "bits per dimension"
    return f"; in {name} {pm(row['estimate'], row['estimate_se'])} (bpd = -nats / (D ln 2), D = {dims})"


def units_sentence(result) -> str:
    """What unit the report's tables and figures are in, and how to get the other (both are in sweep.json)."""
    dims = result.metadata.get("dims")
    if result.units == "bpd":
        return (f"Units: bits per dimension, bpd = -log p(x) / (D ln 2) with D = {dims} data dimensions "
                "(standard errors: se / (D ln 2)); sweep.json holds every value in nats and in bits/dim, "
                "sweep.csv has the nats columns and their *_bpd twins.")
    if dims is None:
        if result.quantity != "log p(x)":  # a classifier's log p(y | x): bits per data dimension mean nothing
            return f"Units: nats per datapoint ({result.quantity} of each test point)."
        return "Units: nats per datapoint (D unknown: pass dims= for bits per dimension)."
    return (f"Units: nats per datapoint; bits per dimension are -nats / ({dims} ln 2) (D = {dims}), "
            "in sweep.json's *_bpd fields.")


def inputs_sentence(metadata: Dict[str, Any]) -> str:
    """The sha256 of the checkpoint and of the data file the numbers came from (``metadata.*_sha256``)."""
    def digest(key: str, what: str) -> str:
        value = metadata.get(key)
        return f"{what} sha256 {value}" if value else f"{what}: not a file"
    return f"Inputs: {digest('checkpoint_sha256', 'checkpoint')}; {digest('data_sha256', 'data')}."


def render_markdown(result, *, title: str, command: str) -> str:
    """The report as Markdown; figures are linked as ``figures/<name>.png``."""
    m = result.metadata
    main, main_notes = footnoted(result.display_table())
    fits, fit_notes = footnoted(result.fits_display(), start=len(main_notes) + 1)
    out = [f"# {title}", "", _overview(result), "", units_sentence(result), "", "## Findings", ""]
    out += [f"* {line}" for line in findings(result)]
    out += ["", "## Bias, variance and RMSE over K", "", f"Reference: {result.reference.label}.", "",
            markdown_table(main), ""] + _md_notes(main_notes, 1) + [
            "## Extrapolation a + b/K + c/K^2", "",
            "Weighted least squares on the per-K estimates; the SE of a is over datapoints "
            "(the Ks share samples, so a textbook WLS SE would be wrong).", "",
            markdown_table(fits), ""] + _md_notes(fit_notes, len(main_notes) + 1) + [
            "## IWAE theory (from the pool's weight moments)", "",
            theory_sentence(result), ""]
    theory = _theory_frame(result)
    if not theory.empty:
        out += [markdown_table(theory), ""]
    out += ["## Figures", ""]
    for name in FIGURE_NAMES:
        out += [f"![{name}](figures/{name}.png)", "", f"*{_FIGURE_CAPTIONS[name]}*", ""]
    if result.notes or result.warnings:
        out += ["## Notes", ""] + [f"* {text}" for text in list(result.warnings) + list(result.notes)] + [""]
    out += ["## Reproduce", "", "```", command, "```", "", "| package or setting | version or value |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in provenance_rows(m)]
    out += ["", inputs_sentence(m), ""]
    out += ["Files: `sweep.csv`, `sweep.json` (full precision), `weights.csv` (ESS/K, k-hat per datapoint).", ""]
    return "\n".join(out)


def render_html(result, pngs: Dict[str, bytes], *, title: str, command: str) -> str:
    """The report as one HTML file with the figures embedded as base64 PNG."""
    esc = html.escape
    m = result.metadata
    main, main_notes = footnoted(result.display_table())
    fits, fit_notes = footnoted(result.fits_display(), start=len(main_notes) + 1)
    theory = _theory_frame(result)
    body = [f"<h1>{esc(title)}</h1>", f"<p>{esc(_overview(result))}</p>", f"<p>{esc(units_sentence(result))}</p>",
            "<h2>Findings</h2>", "<ul>"]
    body += [f"<li>{esc(line)}</li>" for line in findings(result)]
    body += ["</ul>", "<h2>Bias, variance and RMSE over K</h2>",
             f"<p>Reference: {esc(result.reference.label)}.</p>",
             _html_table(main), _html_notes(main_notes, 1),
             "<h2>Extrapolation a + b/K + c/K^2</h2>",
             "<p>Weighted least squares on the per-K estimates; the SE of a is over datapoints "
             "(the Ks share samples, so a textbook WLS SE would be wrong).</p>",
             _html_table(fits), _html_notes(fit_notes, len(main_notes) + 1),
             "<h2>IWAE theory (from the pool's weight moments)</h2>",
             f"<p>{esc(theory_sentence(result))}</p>",
             _html_table(theory) if not theory.empty else "",
             "<h2>Figures</h2>"]
    for name in FIGURE_NAMES:
        data = base64.b64encode(pngs[name]).decode("ascii")
        body += [f'<figure><img alt="{name}" src="data:image/png;base64,{data}">',
                 f"<figcaption>{_html_inline_code(_FIGURE_CAPTIONS[name])}</figcaption></figure>"]
    if result.notes or result.warnings:
        body += ["<h2>Notes</h2>", "<ul>"] + [f"<li>{esc(t)}</li>" for t in list(result.warnings) + list(result.notes)] + ["</ul>"]
    body += ["<h2>Reproduce</h2>", f"<pre>{esc(command)}</pre>",
             "<table class='t'><tr><th>package or setting</th><th>version or value</th></tr>"]
    body += [f"<tr><td>{esc(k)}</td><td>{esc(str(v))}</td></tr>" for k, v in provenance_rows(m)]
    body += ["</table>", f"<p>{esc(inputs_sentence(m))}</p>"]
    style = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.4}"
             "table.t{border-collapse:collapse;font-size:0.85rem;margin:0.5rem 0}"
             # Numbers stay on one line; headers wrap, so that the widest table (the fits) fits 1024 px.
             "table.t td,table.t th{border-bottom:1px solid #ddd;padding:2px 4px;text-align:right;white-space:nowrap}"
             "table.t th{white-space:normal;vertical-align:bottom}"
             "table.t td:last-child{white-space:normal}ol.notes{font-size:0.85rem;color:#444}"
             # The command wraps instead of scrolling out of sight (a screenshot or a printout keeps it whole);
             # a table wider than the page scrolls inside its own box instead of widening the page.
             "pre{background:#f4f4f4;padding:0.5rem;white-space:pre-wrap;overflow-wrap:anywhere}img{max-width:100%}"
             "div.scroll{overflow-x:auto;max-width:100%}"
             "figcaption{font-size:0.85rem;color:#444}")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{esc(title)}</title>\n<style>{style}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def provenance_rows(metadata: dict) -> List[tuple]:
    """``(name, value)`` rows of the Reproduce table: the package versions, then the run's
    provenance (git revision, device, CPU capability, threads, dtype, date, input digests)."""
    rows = list(metadata.get("versions", {}).items())
    shown = {"evalkit_version", "torch_version", "numpy_version", "python_version", "command"}  # in the versions
    rows += [(name.replace("_", " "), value) for name, value in metadata.get("provenance", {}).items()
             if name not in shown and value is not None]
    return rows


def _html_table(frame: pd.DataFrame) -> str:
    return f'<div class="scroll">{frame.to_html(index=False, border=0, classes="t")}</div>'


def _html_inline_code(text: str) -> str:
    """``text`` escaped, with Markdown's `code` spans as <code> (the captions are shared with report.md)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _overview(result) -> str:
    m = result.metadata
    return (f"Model: {m.get('model') or 'n/a (log-weights given)'}. Data: {m.get('data')}. "
            f"N = {m['n']} datapoints, K_max = {m['k_max']} samples per datapoint drawn once "
            f"({'seed ' + str(m['seed']) if m.get('seed') is not None else 'given as a matrix'}); every K is evaluated on floor(K_max / K) disjoint groups of the same pool. "
            f"Estimators: {', '.join(m.get('estimators', []))}."
            + (f" Weight prior P(w): {m['prior']}." if m.get("prior") else ""))


def _md_notes(notes: List[str], start: int) -> List[str]:
    # One line each, "[n] text", with Markdown's hard line break (two trailing spaces).
    return [f"[{i}] {text}  " for i, text in enumerate(notes, start)] + [""] if notes else []


def _html_notes(notes: List[str], start: int) -> str:
    if not notes:
        return ""
    items = "".join(f"<li>{html.escape(text)}</li>" for text in notes)
    return f'<ol class="notes" start="{start}">{items}</ol>'


def theory_sentence(result) -> str:
    """What the IWAE theory table is, and where it stops."""
    t = result.theory_in_range()
    head = ("Leading-order bias -mu2/(2 K mu^2) and variance mu2/(K mu^2) of IWAE-K (Nowozin 2018), and the same "
            "through 1/K^2, from the moments of the pooled weights, averaged over the datapoints with PSIS "
            "k-hat < 0.5 (for the others these moments do not exist). ")
    if t.empty:
        return head + ("Not shown: no datapoint has k-hat < 0.5, or at no K of the sweep is the second-order "
                       "term smaller than the leading one, so the expansion does not apply here.")
    ks = t["k"].to_numpy()
    return head + (f"Shown only where the expansion holds, i.e. where the 1/K^2 term is smaller than the leading "
                   f"one: K >= {int(ks.min())} here ({int(t['datapoints'].iloc[0])} of {result.metadata['n']} "
                   "datapoints averaged); below that the series diverges (at small K it would even give a "
                   "negative variance).")


def _theory_frame(result) -> pd.DataFrame:
    t = result.theory_in_range()
    return pd.DataFrame({"K": t["k"], "bias (leading)": t["bias"].map("{:.4g}".format),
                         "bias (to 1/K^2)": t["bias_2"].map("{:.4g}".format),
                         "variance (leading)": t["variance"].map("{:.4g}".format),
                         "variance (to 1/K^2)": t["variance_2"].map("{:.4g}".format)})


def _csv(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, float_format="%.17g")
