"""The result of :func:`evalkit.sweep`: tables over K, the reference, fits, weights, and their renderings.

Figures, saved tables and reports are made by :mod:`evalkit.output` (the convenience methods
:meth:`SweepResult.figures`, :meth:`SweepResult.save` and :meth:`SweepResult.report` import it
on call: the one place where a result reaches up to the output layer).
"""
from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch

from . import diagnostics as dg
from .in_units import FIT_COLUMNS as FIT_UNITS
from .in_units import (PER_DATAPOINT_COLUMNS, SWEEP_TABLE_COLUMNS, THEORY_COLUMNS, UNIT_LABELS, bpd_fields,
                       check_units, convert_frame)
from .reference import Reference
from ..units import bits_per_dim
from .tables import DEFAULT_QUANTITY, footnoted, jsonable, markdown_table, num, pm, quantity_of, records, render, sig2, slope_text

#: Version of the JSON document written by :meth:`SweepResult.to_json`.
JSON_SCHEMA_VERSION = 1

TABLE_COLUMNS = [
    "estimator", "k", "groups", "estimate", "estimate_se", "mc_se", "bias", "bias_se",
    "variance", "variance_se", "rmse", "rmse_se", "gap_to_kmax", "gap_to_kmax_se", "reference", "note",
]

_CONVERTED = tuple(c for group in SWEEP_TABLE_COLUMNS.values() for c in group)

FIT_COLUMNS = [
    "estimator", "a", "a_se", "a_minus_reference", "a_minus_reference_se", "b", "c", "k_min", "k_max", "points", "note",
    "bias_slope", "bias_slope_se", "bias_slope_ks", "bias_slope_note",
]


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
    units : {"nats", "bpd"}
        The unit of the terminal and Markdown tables, the figures and the report
        (:meth:`shown`). The attributes above, the CSV's columns and the JSON's fields are
        nats; the JSON adds bits per dimension (``*_bpd``), with D in ``metadata["dims"]``.
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
    #: ``theory`` restricted to where the expansion holds (:func:`evalkit.analysis.asymptotics.valid_iwae_theory`).
    theory_valid: Optional[pd.DataFrame] = None
    log_weights: Optional[torch.Tensor] = field(default=None, repr=False)
    units: str = "nats"
    #: The unit the tables above hold: "nats", except in the copy that :meth:`shown` returns.
    numbers_in: str = field(default="nats", repr=False)

    # -- units ----------------------------------------------------------------------------------

    def shown(self, units: Optional[str] = None) -> "SweepResult":
        """This result with its tables, reference and fits in ``units`` (default :attr:`units`).

        In ``"bpd"`` log-likelihoods, biases and fit coefficients become ``-x / (D ln 2)``,
        standard errors and RMSEs ``s / (D ln 2)``, variances ``v / (D ln 2)^2``
        (:mod:`evalkit.analysis.in_units`); the weights and slopes have no unit. For display:
        save and serialise the result itself.
        """
        units = check_units(self.units if units is None else units, self.metadata.get("dims"))
        if units == self.numbers_in:
            return self
        if self.numbers_in != "nats":
            return self.shown("nats") if units == "nats" else self
        dims = self.metadata["dims"]
        ref = replace(self.reference, values=bits_per_dim(self.reference.values, dims))
        theory_valid = None if self.theory_valid is None else convert_frame(self.theory_valid, dims, **THEORY_COLUMNS)
        return replace(self, table=convert_frame(self.table, dims, **SWEEP_TABLE_COLUMNS),
                       theory=convert_frame(self.theory, dims, **THEORY_COLUMNS), theory_valid=theory_valid,
                       fits=convert_frame(self.fits, dims, **FIT_UNITS), reference=ref,
                       per_datapoint=convert_frame(self.per_datapoint, dims, **PER_DATAPOINT_COLUMNS),
                       units=units, numbers_in=units)

    @property
    def unit_label(self) -> str:
        """``nats`` or ``bits/dim``: how tables, axes and sentences name :attr:`units`."""
        return UNIT_LABELS[self.units]

    @property
    def quantity(self) -> str:
        """What the estimates are of: ``"log p(x)"``, or the source's label (``"log p(y | x)"`` for a
        Bayesian network's predictive), for headings, axes and sentences."""
        return quantity_of(self.metadata)

    # -- text -----------------------------------------------------------------------------------

    def headline(self) -> str:
        """One line: what was swept, on what, against which reference."""
        m = self.metadata
        # The reference is the next line's (bias_sentence), said once.
        return (
            f"sweep over K: {m.get('data', 'log-weights')}, N = {m['n']}, K_max = {m['k_max']}, "
            f"seed = {m.get('seed')}"
        ) + (f"; in bits per dimension (D = {m['dims']})" if self.units == "bpd" else "")

    def display_table(self) -> pd.DataFrame:
        """The table with ``value ± SE`` strings, rounded to the SE (for Markdown and terminals)."""
        shown = self.shown()
        t = shown.table
        frame = pd.DataFrame(
            {
                "estimator": t["estimator"],
                "k": t["k"],
                "groups": t["groups"],
                "estimate": [pm(v, s) for v, s in zip(t["estimate"], t["estimate_se"])],
                "MC SE": [sig2(v) for v in t["mc_se"]],
                "bias": [pm(v, s) for v, s in zip(t["bias"], t["bias_se"])],
                "variance": [pm(v, s) for v, s in zip(t["variance"], t["variance_se"])],
                "RMSE": [pm(v, s) for v, s in zip(t["rmse"], t["rmse_se"])],
                "gap to K_max (paired)": [pm(v, s) for v, s in zip(t["gap_to_kmax"], t["gap_to_kmax_se"])],
                "note": t["note"],
            }
        )
        if self.reference.kind == "pool":  # the gap is the bias then
            frame = frame.drop(columns=["gap to K_max (paired)"])
        return frame

    def fits_display(self) -> pd.DataFrame:
        """The fits with ``a ± SE`` strings; why a slope has no value or no SE goes to ``note``
        (a footnote in reports), so that no cell carries a sentence and the table fits a page."""
        f = self.shown().fits
        slopes, notes = [], []
        for value, se, slope_note, note in zip(f["bias_slope"], f["bias_slope_se"], f["bias_slope_note"], f["note"]):
            text = slope_text(value, se)
            slopes.append(text)
            reasons = [str(note)] if isinstance(note, str) and note else []
            if "±" not in text and slope_note:
                reasons.append(f"|bias| slope: {str(slope_note).replace(': no SE', '')}")
            notes.append("; ".join(reasons))
        return pd.DataFrame(
            {
                "estimator": f["estimator"],
                f"{self.quantity} extrapolated (a)" if self.units == "nats" else "bits/dim extrapolated (a)": [pm(v, s) for v, s in zip(f["a"], f["a_se"])],
                "a - reference (paired)": [pm(v, s) for v, s in zip(f["a_minus_reference"],
                                                                     f["a_minus_reference_se"])],
                "b (1/K)": [num(v) for v in f["b"]],
                "c (1/K^2)": [num(v) for v in f["c"]],
                "fit ks": [f"{lo}..{hi} ({p})" if p else "-" for lo, hi, p in zip(f["k_min"], f["k_max"], f["points"])],
                "|bias| slope": slopes,
                "slope ks": [_ks_text(ks) for ks in f["bias_slope_ks"]],
                "note": notes,
            }
        )

    def theory_in_range(self) -> pd.DataFrame:
        """The IWAE theory rows where the expansion holds (computed now for results made without it)."""
        shown = self.shown()
        if shown.theory_valid is not None:
            return shown.theory_valid
        return shown.theory.iloc[0:0].assign(datapoints=pd.Series(dtype="int64"))

    def weights_text(self, *, with_warning: bool = True) -> str:
        """One or two lines on whether the importance weights can be trusted (the second, the
        weight warning, only ``with_warning``: the terminal table leaves it to stderr)."""
        s = self.weights.summary()
        text = (
            f"weights at K = {self.metadata['k_max']}: mean ESS/K = {s['mean_ess_fraction']:.3g}; "
            f"PSIS k-hat > 0.5 for {s['fraction_khat_above_0.5']:.1%}, > {self.weights.threshold:.3g} (the threshold "
            f"for K = {self.metadata['k_max']}) for {s['fraction_khat_above_threshold']:.1%} of the datapoints with a "
            f"k-hat" + (f" ({s['n_khat_undefined']} without one)" if s["n_khat_undefined"] else "")
        )
        if with_warning and self.weights.warning:
            text += f"\nwarning: {self.weights.warning}"
        return text

    def to_markdown(self) -> str:
        """The sweep table, the fits and the weight summary as Markdown."""
        main, main_notes = footnoted(self.display_table())
        fits, fit_notes = footnoted(self.fits_display(), start=len(main_notes) + 1)
        parts = [
            f"**{self.headline()}**",
            "",
            bias_sentence(self.shown().reference, self.unit_label, self.quantity),
            "",
            markdown_table(main),
            "",
        ] + [f"[{i}] {text}  " for i, text in enumerate(main_notes, 1)] + [
            "",
            "Extrapolation a + b/K + c/K^2 (weighted least squares; SE over datapoints):",
            "",
            markdown_table(fits),
            "",
        ] + [f"[{i}] {text}  " for i, text in enumerate(fit_notes, len(main_notes) + 1)] + [
            "",
            self.weights_text().replace("\n", "  \n"),
        ]
        if self.notes:
            parts += ["", "Notes:", ""] + [f"* {note}" for note in self.notes]
        return "\n".join(parts) + "\n"

    def to_table(self) -> str:
        """Plain text for a terminal: the tables with their notes as numbered footnotes (a note
        column padded every row to hundreds of characters), the weight summary and the sweep's
        notes. The weight warning is not repeated here: it is a warning (stderr, ``--quiet``)."""
        main, main_notes = footnoted(self.display_table())
        fits, fit_notes = footnoted(self.fits_display(), start=len(main_notes) + 1)
        text = [self.headline(), bias_sentence(self.shown().reference, self.unit_label, self.quantity),
                main.to_string(index=False)] + _footnote_lines(main_notes, 1) + [
                "", "extrapolation a + b/K + c/K^2:", fits.to_string(index=False)] + _footnote_lines(
                fit_notes, len(main_notes) + 1) + ["", self.weights_text(with_warning=False)]
        if self.notes:
            text += ["notes:"] + [f"  - {note}" for note in self.notes]
        return "\n".join(text) + "\n"

    def to_csv(self) -> str:
        """The full-precision table as CSV (nats; with ``units="bpd"`` also ``<column>_bpd`` columns)."""
        if self.units != "bpd":
            return self.table.to_csv(index=False, float_format="%.17g")
        bpd = self.shown().table
        extra = bpd[[c for c in bpd.columns if c in _CONVERTED]].add_suffix("_bpd")
        return pd.concat([self.table, extra], axis=1).to_csv(index=False, float_format="%.17g")

    def to_dict(self) -> Dict[str, Any]:
        """The JSON document as a dict (NaN becomes ``None``)."""
        dims = self.metadata.get("dims")
        reference = {"kind": self.reference.kind, "label": self.reference.label,
                     "estimator": self.reference.estimator, "mean": jsonable(self.reference.mean)}
        return {
            "schema_version": JSON_SCHEMA_VERSION,
            "metadata": jsonable(self.metadata),
            "reference": {**reference, **bpd_fields(reference, dims, values=("mean",))},
            "table": [{**row, **bpd_fields(row, dims, **SWEEP_TABLE_COLUMNS)} for row in records(self.table)],
            "theory_iwae": [{**row, **bpd_fields(row, dims, **THEORY_COLUMNS)} for row in records(self.theory)],
            "fits": [{**row, **bpd_fields(row, dims, **FIT_UNITS)} for row in records(self.fits)],
            "weights": jsonable(self.weights.summary()),
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


def bias_sentence(ref: Reference, unit: str = "nats", quantity: str = DEFAULT_QUANTITY) -> str:
    """The sentence that says what 'bias' is measured against (``quantity``: what is estimated)."""
    if ref.kind == "pool":
        return (f"Reference: {ref.label}. No exact {quantity} was available, so 'bias' is the difference "
                f"from this estimate; it understates the true bias by that estimate's own bias.")
    return f"Reference: {ref.label} (mean {ref.mean:.6g} {unit})."


def versions() -> Dict[str, str]:
    """Versions of evalkit, Python and the numerical libraries (for reports)."""
    import matplotlib
    import scipy

    from .._version import __version__

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


def _ks_text(ks: str) -> str:
    """The ks of a slope for a table cell: ``10, 20, 50``, or ``10, 20, ..., 5000 (9)`` when there are many."""
    values = ks.split(",") if ks else []
    if len(values) > 4:
        return f"{values[0]}, {values[1]}, ..., {values[-1]} ({len(values)})"
    return ", ".join(values) if values else "-"


def _footnote_lines(notes: List[str], start: int) -> List[str]:
    return [f"  [{i}] {text}" for i, text in enumerate(notes, start)]
