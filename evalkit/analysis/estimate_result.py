"""The result of :func:`evalkit.estimate`: tables at one K and their renderings.

:class:`EstimateResult` holds the summary (one row per estimator), the per-datapoint values and
the weight diagnostics, and writes them as a terminal table, JSON (schema in the README, "JSON
output"), CSV, Markdown or LaTeX.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Union

import pandas as pd
import torch

from ..estimators.psis import MIN_TAIL_LENGTH
from .in_units import SUMMARY_COLUMNS, bpd_fields, check_units, convert_frame, with_bpd_columns
from .tables import jsonable, markdown_table, quantity_of, render

#: Version of the JSON document written by :meth:`EstimateResult.to_json` (see README, "JSON output").
JSON_SCHEMA_VERSION = 1

#: Weight-diagnostic columns that :meth:`EstimateResult.to_csv` appends to every summary row.
CSV_DIAGNOSTIC_COLUMNS = ("mean_ess_fraction", "max_psis_khat", "fraction_khat_above_0.5",
                          "fraction_khat_above_0.7", "n_khat_above_0.7", "indices_khat_above_0.7")


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
        plus ``ess`` (effective sample size of the K weights) and ``psis_khat``; nats only
        (:meth:`per_example_table`, what files get, adds the ``*_bpd`` twins).
    diagnostics : dict
        Summary of the weight diagnostics: mean ESS/K, fractions of k-hat above 0.5 and 0.7
        and the indices of the datapoints above 0.7.
    metadata : dict
        k, seed, N, what the model and data were, versions, elapsed seconds.
    log_weights : Tensor or None
        The ``[N, K]`` float64 log-weights, when asked for with ``keep_log_weights=True``.
    units : {"nats", "bpd"}
        The unit of the terminal, Markdown and LaTeX tables (:meth:`table_in`). ``summary``'s
        ``estimate``/``se_*`` columns and the JSON's fields are always nats; in ``"bpd"`` (see
        :meth:`in_units`) ``summary`` and the CSV add ``estimate_bpd``, ``se_data_bpd``,
        ``se_mc_bpd`` beside them, as the JSON does whenever D (``metadata["dims"]``) is known.
    """

    summary: pd.DataFrame
    per_example: pd.DataFrame
    diagnostics: Dict[str, Any]
    metadata: Dict[str, Any]
    log_weights: Optional[torch.Tensor] = field(default=None, repr=False)
    units: str = "nats"

    def in_units(self, units: str) -> "EstimateResult":
        """This result shown in ``units``; in ``"bpd"`` :attr:`summary` gains the ``*_bpd`` twins
        (``-estimate / (D ln 2)``, ``se / (D ln 2)``) after its nats columns, so that the summary
        and the CSV carry the unit the user asked for, as the sweep's CSV does."""
        units = check_units(units, self.metadata.get("dims"))
        summary = self._nats_summary()
        if units == "bpd":
            summary = with_bpd_columns(summary, self.metadata["dims"], **SUMMARY_COLUMNS)
        self.summary, self.units = summary, units
        return self

    def _nats_summary(self) -> pd.DataFrame:
        return self.summary[[c for c in self.summary.columns if not c.endswith("_bpd")]]

    def table_in(self, units: Optional[str] = None) -> pd.DataFrame:
        """The summary in ``units`` (default :attr:`units`): nats, or bits per dimension.

        In ``"bpd"`` the ``estimate`` column is ``-estimate / (D ln 2)`` and ``se_data``,
        ``se_mc`` are divided by ``D ln 2`` (:mod:`evalkit.analysis.in_units`).
        """
        units = check_units(self.units if units is None else units, self.metadata.get("dims"))
        if units == "nats":
            return self._nats_summary().copy()
        return convert_frame(self._nats_summary(), self.metadata["dims"], **SUMMARY_COLUMNS)

    @property
    def quantity(self) -> str:
        """What the estimates are of: ``"log p(x)"``, or the source's label (e.g. ``"log p(y | x)"``)."""
        return quantity_of(self.metadata)

    def per_example_table(self) -> pd.DataFrame:
        """:attr:`per_example` as written to files, with bits-per-dimension twins where D is known.

        Each estimator column ``name`` (nats) gets ``name_bpd`` = ``-name / (D ln 2)`` after the
        other columns, like the ``*_bpd`` fields of the summary JSON; ``ess``, ``psis_khat`` and
        ``index`` have none. Without D (``metadata["dims"]`` is None) it is :attr:`per_example`.
        """
        return with_bpd_columns(self.per_example, self.metadata.get("dims"),
                                values=[name for name in self.summary["estimator"]])

    def to_dict(self, *, per_example: bool = False) -> Dict[str, Any]:
        """The JSON document as a dict (schema in the README, "JSON output")."""
        doc: Dict[str, Any] = {
            "schema_version": JSON_SCHEMA_VERSION,
            "metadata": self.metadata,
            "estimates": [_with_bpd({key: jsonable(value) for key, value in row.items()}, self.metadata.get("dims"))
                          for row in self._nats_summary().to_dict(orient="records")],
            "diagnostics": {key: jsonable(value) for key, value in self.diagnostics.items()},
        }
        if per_example:
            table = self.per_example_table()
            doc["per_example"] = {column: [jsonable(v) for v in table[column].tolist()] for column in table.columns}
        return doc

    def to_json(self, *, per_example: bool = False, indent: int = 2) -> str:
        """JSON text; floats are written with full (round-trip) precision, NaN as null."""
        return json.dumps(self.to_dict(per_example=per_example), indent=indent, allow_nan=False)

    def to_csv(self) -> str:
        """The summary table as CSV text, with the weight diagnostics as columns.

        After ``estimator, k, estimate, se_data, se_mc, n`` (and, in ``"bpd"``, ``estimate_bpd,
        se_data_bpd, se_mc_bpd``: the columns of :attr:`summary`) come the dataset-wide diagnostics
        (:data:`CSV_DIAGNOSTIC_COLUMNS`, the same on every row): ``mean_ess_fraction``,
        ``max_psis_khat``, ``fraction_khat_above_0.5``, ``fraction_khat_above_0.7``,
        ``n_khat_above_0.7`` and ``indices_khat_above_0.7`` (space-separated datapoint indices),
        so that a spreadsheet of results still says which datapoints cannot be trusted.
        """
        d = self.diagnostics
        frame = self.summary.copy()
        flagged = list(d.get("indices_khat_above_0.7", []))
        extra = {
            "mean_ess_fraction": d.get("mean_ess_fraction"),
            "max_psis_khat": d.get("max_psis_khat"),
            "fraction_khat_above_0.5": d.get("fraction_khat_above_0.5"),
            "fraction_khat_above_0.7": d.get("fraction_khat_above_0.7"),
            "n_khat_above_0.7": len(flagged),
            "indices_khat_above_0.7": " ".join(str(i) for i in flagged),
        }
        for column in CSV_DIAGNOSTIC_COLUMNS:
            frame[column] = extra[column]
        return frame.to_csv(index=False, float_format="%.17g")

    def to_markdown(self) -> str:
        """The summary table as a Markdown (GitHub) table."""
        return markdown_table(_display_frame(self.table_in(), self.units)) + "\n"

    def to_latex(self) -> str:
        """The summary table as a LaTeX ``tabular`` (booktabs style)."""
        frame = _display_frame(self.table_in(), self.units)
        math_quantity = self.quantity.replace("log ", r"\log ").replace(" | ", r" \mid ")
        quantity = f"${math_quantity}$" if self.units == "nats" else r"bits/dim"
        lines = [
            r"\begin{tabular}{lrrrr}",
            r"\toprule",
            f"Estimator & $K$ & {quantity} & SE (data) & SE (MC) \\\\",
            r"\midrule",
        ]
        for row in frame.itertuples(index=False):
            lines.append(f"{_latex_escape(row.estimator)} & {row.k} & {row[2]} & {row.se_data} & {row.se_mc} \\\\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"

    def to_table(self) -> str:
        """A plain-text table for the terminal, followed by the weight diagnostics."""
        frame = _display_frame(self.table_in(), self.units)
        text = frame.to_string(index=False)
        meta = self.metadata
        head = (
            f"{self.quantity} estimates: {meta['data']}, N = {meta['n']}, K = {meta['k']}, seed = {meta['seed']}"
        )
        sampler = meta.get("sampler")
        if sampler and sampler.get("method") == "ais":
            head += (f"\nannealed importance sampling: {sampler['steps']} {sampler['schedule']} steps from the "
                     f"{sampler['init']}, {sampler['leapfrog']} leapfrog steps, K = chains per datapoint; mean "
                     f"acceptance {sampler.get('mean_acceptance_rate', float('nan')):.2f}")
        if meta.get("prior"):
            head += f"\nweight prior P(w): {meta['prior']}"
        if self.units == "bpd":
            head += f"\nin bits per dimension: bpd = -{self.quantity} / (D ln 2), D = {meta['dims']}"
        # The datapoints above the k-hat threshold are the warning's (stderr; --quiet hides it), not the table's.
        return f"{head}\n{text}\n{self.diagnostics_text(with_warning=False)}\n"

    def diagnostics_text(self, *, with_warning: bool = True) -> str:
        """One or two lines that say whether the importance weights can be trusted (the second, naming
        the datapoints above the threshold, only ``with_warning``: the terminal table leaves that
        to the warning on stderr, which ``--quiet`` hides)."""
        d = self.diagnostics
        if not math.isfinite(d["max_psis_khat"]):
            return (
                f"weights: mean ESS/K = {d['mean_ess_fraction']:.3g}; PSIS k-hat not available "
                f"(needs at least {MIN_TAIL_LENGTH} tail weights, i.e. K >= 21)"
            )
        threshold = d.get("khat_threshold")
        flagged = d.get("indices_khat_above_threshold", d["indices_khat_above_0.7"])
        limit = f"{threshold:.3g}" if threshold is not None else "0.7"
        above = d.get('fraction_khat_above_threshold', d['fraction_khat_above_0.7'])
        judged = f"> {limit} (the threshold for K = {self.metadata.get('k')}) for {above:.1%}"
        if threshold is None or threshold != 0.5:  # at the threshold 0.5 the two fractions are one
            judged = f"> 0.5 for {d['fraction_khat_above_0.5']:.1%}, " + judged
        text = (
            f"weights: mean ESS/K = {d['mean_ess_fraction']:.3g}; PSIS k-hat {judged} of the datapoints with a k-hat"
            + (f" ({d['n_khat_undefined']} without one)" if d.get("n_khat_undefined") else "")
        )
        if flagged and with_warning:
            shown = ", ".join(str(i) for i in flagged[:10])
            more = " ..." if len(flagged) > 10 else ""
            text += (
                f"\nwarning: k-hat > {limit} (above min(1 - 1/log10(K), 0.7), Vehtari et al. 2024: unreliable "
                f"importance sampling) at datapoints {shown}{more}; IWAE/JVI asymptotics and standard errors are "
                "unreliable there"
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

    def save(self, path: Union[str, os.PathLike], *, format: Optional[str] = None,
             overwrite: bool = False) -> Path:
        """Write the summary to ``path`` (atomically), in the format its extension names.

        Parameters
        ----------
        path : str or PathLike
            ``.json``, ``.csv``, ``.md``, ``.tex`` or ``.txt`` pick JSON, CSV, Markdown, LaTeX or
            the terminal table; any other name needs ``format``.
        format : str, optional
            One of ``table``, ``json``, ``csv``, ``markdown``, ``latex``; must agree with a
            recognised extension (:func:`evalkit.output.formats.format_for_path`).
        overwrite : bool
            Replace an existing file. Missing parent directories are created (and removed
            again if the file cannot be written), as for every output of the command line
            (:func:`evalkit.atomic.check_writable`).

        Returns
        -------
        Path
            The file written.
        """
        from ..atomic import atomic_write_text, check_writable
        from ..output.formats import format_for_path

        fmt = format_for_path(path, format, what="output file")
        check_writable(path, overwrite=overwrite)  # before the work; missing directories are made on writing
        text = self.format(fmt)
        atomic_write_text(os.fspath(path), text if text.endswith("\n") else text + "\n", overwrite=overwrite)
        return Path(path)

    def __str__(self) -> str:
        return self.to_table()

    def _repr_html_(self) -> str:
        # Jupyter shows the summary table and the diagnostics line.
        diag = self.diagnostics_text().replace("\n", "<br>")
        return _display_frame(self.table_in(), self.units).to_html(index=False) + f"<p>{diag}</p>"


def _with_bpd(row: Dict[str, Any], dims: Optional[int]) -> Dict[str, Any]:
    """A JSON estimate row with ``estimate_bpd``, ``se_data_bpd``, ``se_mc_bpd`` (null without D)."""
    return {**row, **bpd_fields(row, dims, **SUMMARY_COLUMNS)}


def _display_frame(summary: pd.DataFrame, units: str = "nats") -> pd.DataFrame:
    """Rounded strings; in bits per dimension the estimate column is named ``bpd``."""
    frame = summary.copy()
    frame["estimate"] = frame["estimate"].map(lambda v: f"{v:.4f}")
    for column in ("se_data", "se_mc"):
        frame[column] = frame[column].map(lambda v: "n/a" if not math.isfinite(v) else f"{v:.4f}")
    frame = frame.drop(columns=["n"])
    return frame.rename(columns={"estimate": "bpd"}) if units == "bpd" else frame


def _latex_escape(text: str) -> str:
    return text.replace("_", r"\_")
