"""The result of :func:`evalkit.compare`: models' estimates, paired differences and their renderings.

:class:`CompareResult` holds one row per model and estimator (``table``), one row per pair of
models and estimator (``pairs``: the difference and its standard errors, formulas in
:mod:`evalkit.analysis.compare`), the per-datapoint values, and writes them as a terminal table,
JSON, CSV, Markdown or a publication LaTeX table.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import pandas as pd

from .in_units import check_units, convert_frame
from .tables import jsonable, markdown_table, pm, records, render

JSON_SCHEMA_VERSION = 1
TABLE_COLUMNS = ["model", "estimator", "k", "estimate", "se_data", "se_mc", "rank", "n"]
PAIR_COLUMNS = ["model_a", "model_b", "estimator", "difference", "se_paired", "se_mc", "se_total", "z", "p_value", "n"]
SIGNIFICANCE_LEVEL = 0.05
"""Two-sided level of the findings sentences (:meth:`CompareResult.findings`)."""


def pair_rows(labels: Sequence[str], chosen: Sequence[Any], stats: Sequence[Any], pair_variances: Dict[tuple, np.ndarray],
              *, shared_columns: bool = False, common: Optional[Dict[tuple, bool]] = None) -> pd.DataFrame:
    """One row per unordered pair of models (A before B in the given order) and estimator.

    ``stats[m]`` are model m's per-datapoint statistics; ``pair_variances[(a, b, name)]`` the
    per-datapoint MC variances of ``a_n - b_n``. Formulas: :mod:`evalkit.analysis.compare`.
    """
    from ..estimators.shared_columns import jackknife_se

    rows = []
    for a in range(len(labels)):
        for b in range(a + 1, len(labels)):
            for est in chosen:
                d = stats[a].values[est.name] - stats[b].values[est.name]
                n = d.shape[0]
                finite = bool(np.all(np.isfinite(d)))
                se_paired = float(np.std(d, ddof=1) / math.sqrt(n)) if n >= 2 and finite else math.nan
                var_rows = pair_variances[(a, b, est.name)]
                mc_rows = float(np.sum(var_rows)) / n**2 if np.all(np.isfinite(var_rows)) else math.nan
                if shared_columns:
                    key = "elbo" if est.name == "elbo" else "iwae"
                    sums_a, sums_b = stats[a].column_sums.get(key), stats[b].column_sums.get(key)
                    if common is not None and common.get((a, b)):
                        se_mc = _jackknife(jackknife_se, (sums_a - sums_b) / n)
                    else:
                        se_mc = math.hypot(_jackknife(jackknife_se, sums_a / n), _jackknife(jackknife_se, sums_b / n))
                    total2 = se_paired**2 + se_mc**2 - mc_rows
                    se_total = math.sqrt(max(total2, 0.0)) if math.isfinite(total2) else math.nan
                else:
                    se_mc = math.sqrt(mc_rows) if math.isfinite(mc_rows) else math.nan
                    se_total = se_paired  # the MC noise is already in the spread of the d_n
                difference = float(np.mean(d))
                z = difference / se_total if math.isfinite(se_total) and se_total > 0 and finite else math.nan
                p_value = math.erfc(abs(z) / math.sqrt(2.0)) if math.isfinite(z) else math.nan
                rows.append({"model_a": labels[a], "model_b": labels[b], "estimator": est.name,
                             "difference": difference, "se_paired": se_paired, "se_mc": se_mc, "se_total": se_total,
                             "z": z, "p_value": p_value, "n": n})
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def _jackknife(jackknife_se, values: Optional[np.ndarray]) -> float:
    return jackknife_se(values) if values is not None and np.all(np.isfinite(values)) else math.nan


@dataclass
class CompareResult:
    """Several models' estimates on the same data, and every pair's paired difference.

    Attributes
    ----------
    table : DataFrame
        One row per model and estimator: ``model``, ``estimator``, ``k``, ``estimate`` (nats),
        ``se_data``, ``se_mc`` (as in :attr:`evalkit.EstimateResult.summary`), ``rank`` (1 = the
        highest estimate of that estimator), ``n``.
    pairs : DataFrame
        One row per unordered pair (A before B in the order given) and estimator:
        ``difference`` = mean(a_n - b_n) (nats), ``se_paired`` = sd(a_n - b_n) / sqrt(N),
        ``se_mc`` (Monte Carlo SE of the difference, common random numbers included),
        ``se_total`` (SE as an estimate of the population difference), ``z`` = difference /
        se_total, ``p_value`` (two-sided normal), ``n``. z and p are NaN when se_total is 0.
    per_example : DataFrame
        ``index``, then ``"<estimator>[<model>]"`` per model and ``"<estimator>[<A> - <B>]"`` per pair.
    estimates : dict of str -> EstimateResult
        Each model's full result (weight diagnostics included).
    metadata : dict
        k, n, seeds per model, whether each pair shares its random streams, the formulas.
    units : {"nats", "bpd"}
        Unit of the terminal, Markdown and LaTeX tables (JSON and CSV are nats).
    """

    table: pd.DataFrame
    pairs: pd.DataFrame
    per_example: pd.DataFrame
    estimates: Dict[str, Any] = field(repr=False)
    metadata: Dict[str, Any]
    units: str = "nats"

    @classmethod
    def build(cls, labels, chosen, estimates, stats, pairs, metadata, *, units: str = "nats") -> "CompareResult":
        """Assemble from each model's :class:`~evalkit.EstimateResult` and statistics and the pairs."""
        rows = []
        for label, result in zip(labels, estimates):
            for row in result.summary.to_dict(orient="records"):
                rows.append({"model": label, **row})
        table = pd.DataFrame(rows)
        table["rank"] = table.groupby("estimator")["estimate"].rank(ascending=False, method="min").astype("Int64")
        per_example: Dict[str, Any] = {"index": np.arange(len(stats[0].values[chosen[0].name]))}
        for est in chosen:
            for label, s in zip(labels, stats):
                per_example[f"{est.name}[{label}]"] = s.values[est.name]
            for a in range(len(labels)):
                for b in range(a + 1, len(labels)):
                    per_example[f"{est.name}[{labels[a]} - {labels[b]}]"] = \
                        stats[a].values[est.name] - stats[b].values[est.name]
        return cls(table=table[TABLE_COLUMNS], pairs=pairs, per_example=pd.DataFrame(per_example),
                   estimates=dict(zip(labels, estimates)), metadata=metadata, units=units)

    # -- tables in a unit -------------------------------------------------------------------

    @property
    def names(self) -> List[str]:
        return list(dict.fromkeys(self.table["model"]))

    def table_in(self, units: Optional[str] = None) -> pd.DataFrame:
        """:attr:`table` in ``units`` (bits per dimension: ``-estimate / (D ln 2)``, SEs ``/ (D ln 2)``)."""
        units = check_units(self.units if units is None else units, self.metadata.get("dims"))
        if units == "nats":
            return self.table.copy()
        return convert_frame(self.table, self.metadata["dims"], values=("estimate",), spreads=("se_data", "se_mc"))

    def pairs_in(self, units: Optional[str] = None) -> pd.DataFrame:
        """:attr:`pairs` in ``units`` (in bits per dimension a better A has a negative difference)."""
        units = check_units(self.units if units is None else units, self.metadata.get("dims"))
        if units == "nats":
            return self.pairs.copy()
        return convert_frame(self.pairs, self.metadata["dims"], values=("difference",),
                             spreads=("se_paired", "se_mc", "se_total"))

    def difference(self, model_a: str, model_b: str, estimator: str) -> Dict[str, float]:
        """The pair row of ``model_a - model_b`` (either order; the sign follows the order asked)."""
        p = self.pairs
        for a, b, sign in ((model_a, model_b, 1.0), (model_b, model_a, -1.0)):
            hit = p[(p.model_a == a) & (p.model_b == b) & (p.estimator == estimator)]
            if len(hit):
                row = hit.iloc[0].to_dict()
                row["difference"] *= sign
                row["z"] *= sign
                row["model_a"], row["model_b"] = model_a, model_b
                return row
        raise KeyError(f"no pair {model_a!r} - {model_b!r} for estimator {estimator!r}")

    # -- findings -----------------------------------------------------------------------------

    def findings(self, level: float = SIGNIFICANCE_LEVEL) -> List[str]:
        """One sentence per pair and estimator: which model is better and by how much, or that none is."""
        unit = "nats"
        out = []
        for row in self.pairs.itertuples(index=False):
            a, b, d = row.model_a, row.model_b, row.difference
            if not math.isfinite(row.z):
                why = ("the per-datapoint differences are all exactly 0, as for a model against its own copy"
                       if d == 0 and row.se_total == 0 else "its standard error is 0 or not defined")
                out.append(f"{a} - {b} ({row.estimator}): {d:.6g} {unit}; z is undefined ({why}).")
            elif row.p_value < level:
                better, worse = (a, b) if d > 0 else (b, a)
                out.append(f"{better} is better than {worse} by {pm(abs(d), row.se_total)} {unit} ({row.estimator}, "
                           f"paired; z = {abs(row.z):.2f}, p = {row.p_value:.2g}; Monte Carlo SE "
                           f"{row.se_mc:.2g}).")
            else:
                out.append(f"no significant difference between {a} and {b} at the {level:.0%} level "
                           f"({row.estimator}: {a} - {b} = {pm(d, row.se_total)} {unit}, paired; "
                           f"z = {row.z:.2f}, p = {row.p_value:.2g}).")
        return out

    # -- renderings ---------------------------------------------------------------------------

    def to_dict(self, *, per_example: bool = False) -> Dict[str, Any]:
        """The JSON document: ``{"metadata", "models": [...], "pairs": [...]}`` (nats)."""
        meta = {key: value for key, value in self.metadata.items() if key != "models"}
        models = []
        for info in self.metadata["models"]:
            rows = self.table[self.table.model == info["name"]].drop(columns=["model"])
            models.append({**jsonable(info), "estimates": records(rows)})
        doc: Dict[str, Any] = {"schema_version": JSON_SCHEMA_VERSION, "metadata": jsonable(meta), "models": models,
                               "pairs": records(self.pairs)}
        if per_example:
            doc["per_example"] = {c: [jsonable(v) for v in self.per_example[c].tolist()] for c in self.per_example}
        return doc

    def to_json(self, *, per_example: bool = False, indent: int = 2) -> str:
        """JSON text; full-precision floats, NaN (an undefined z) as null."""
        return json.dumps(self.to_dict(per_example=per_example), indent=indent, allow_nan=False)

    def to_csv(self, which: str = "pairs") -> str:
        """``which`` = ``"pairs"`` (default), ``"table"`` or ``"per_example"`` as CSV text (nats)."""
        frames = {"pairs": self.pairs, "table": self.table, "per_example": self.per_example}
        if which not in frames:
            raise KeyError(f"which must be one of {', '.join(frames)}, got {which!r}")
        return frames[which].to_csv(index=False, float_format="%.17g")

    def publication_frame(self) -> pd.DataFrame:
        """Models as rows, per estimator ``estimate ± se_data`` and the paired difference to the best."""
        table, unit = self.table_in(), self.units
        out: Dict[str, List[str]] = {"model": self.names}
        for est in self.metadata["estimators"]:
            rows = table[table.estimator == est].set_index("model")
            best = self.table[(self.table.estimator == est) & (self.table["rank"] == 1)]["model"].iloc[0]
            out[est] = [pm(rows.loc[m, "estimate"], rows.loc[m, "se_data"]) for m in self.names]
            gaps = []
            for m in self.names:
                if m == best:
                    gaps.append("best")
                    continue
                row = self.difference(m, best, est)
                d, se = row["difference"], row["se_total"]
                if unit == "bpd":
                    scale = int(self.metadata["dims"]) * math.log(2.0)
                    d, se = -d / scale, se / scale
                gaps.append(pm(d, se))
            out[f"{est} - best"] = gaps
        return pd.DataFrame(out)

    def to_markdown(self) -> str:
        """The publication table and the pairs table in Markdown."""
        return (markdown_table(self.publication_frame()) + "\n\n" + markdown_table(self._pairs_display()) + "\n")

    def to_latex(self) -> str:
        """A publication ``tabular`` (booktabs): models as rows, estimators as columns, the best in ``\\textbf``,
        and each model's paired difference to the best with its SE."""
        frame = self.publication_frame()
        best = {est: set(self.table[(self.table.estimator == est) & (self.table["rank"] == 1)]["model"])
                for est in self.metadata["estimators"]}
        unit = "nats" if self.units == "nats" else "bits/dim"
        head = ["Model"]
        for est in self.metadata["estimators"]:
            head += [_latex(est.upper()), rf"$\Delta$ to best"]
        lines = [r"\begin{tabular}{l" + "rr" * len(self.metadata["estimators"]) + "}", r"\toprule",
                 " & ".join(head) + r" \\", r"\midrule"]
        for i, model in enumerate(frame["model"]):
            cells = [_latex(model)]
            for est in self.metadata["estimators"]:
                value = frame[est].iloc[i].replace("±", r"$\pm$")
                cells.append(rf"\textbf{{{value}}}" if model in best[est] else value)
                cells.append(frame[f"{est} - best"].iloc[i].replace("±", r"$\pm$").replace("best", "--"))
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}",
                  f"% {self.metadata['quantity']} in {unit}, N = {self.metadata['n']}, K = {self.metadata['k']}; "
                  "estimate +- SE over datapoints; Delta: paired difference to the best with its paired SE"]
        return "\n".join(lines) + "\n"

    def to_table(self) -> str:
        """The terminal text: the models, the pairs and the findings."""
        meta = self.metadata
        head = f"{meta['quantity']} comparison: {meta['data']}, N = {meta['n']}, K = {meta['k']}, seed = {meta['seed']}"
        if self.units == "bpd":
            head += f"\nin bits per dimension (D = {meta['dims']}): lower is better, differences are A - B in bpd"
        models = self._table_display().to_string(index=False)
        pairs = self._pairs_display().to_string(index=False)
        return f"{head}\n{models}\n\npaired differences (A - B):\n{pairs}\n\n" + "\n".join(self.findings()) + "\n"

    def _table_display(self) -> pd.DataFrame:
        frame = self.table_in()
        frame["estimate"] = frame["estimate"].map(lambda v: f"{v:.4f}")
        for column in ("se_data", "se_mc"):
            frame[column] = frame[column].map(_fixed)
        return frame.drop(columns=["n"]).rename(columns={"estimate": "bpd"} if self.units == "bpd" else {})

    def _pairs_display(self) -> pd.DataFrame:
        frame = self.pairs_in()
        for column in ("difference", "se_paired", "se_mc", "se_total"):
            frame[column] = frame[column].map(_fixed)
        frame["z"] = frame["z"].map(lambda v: "undefined" if not math.isfinite(v) else f"{v:.2f}")
        frame["p_value"] = frame["p_value"].map(lambda v: "undefined" if not math.isfinite(v) else f"{v:.2g}")
        return frame.drop(columns=["n"])

    def format(self, fmt: str) -> str:
        """Render in ``fmt``: one of ``table``, ``json``, ``csv``, ``markdown``, ``latex``."""
        return render(fmt, {"table": self.to_table, "json": self.to_json, "csv": self.to_csv,
                            "markdown": self.to_markdown, "latex": self.to_latex})

    def save(self, path: Union[str, os.PathLike], *, format: Optional[str] = None, overwrite: bool = False) -> Path:
        """Write to ``path`` atomically, in the format its extension names (``.json .csv .md .tex .txt``);
        missing parent directories are created (:func:`evalkit.atomic.check_writable`)."""
        from ..atomic import atomic_write_text, check_writable
        from ..output.formats import format_for_path

        fmt = format_for_path(path, format, what="output file")
        check_writable(path, overwrite=overwrite)
        text = self.format(fmt)
        atomic_write_text(os.fspath(path), text if text.endswith("\n") else text + "\n", overwrite=overwrite)
        return Path(path)

    def figures(self) -> Dict[str, Any]:
        """``{"compare": Figure}`` (:func:`evalkit.plots.plot_compare`)."""
        from ..output.plots_compare import plot_compare

        return {"compare": plot_compare(self)}

    def report(self, out: Union[str, os.PathLike], *, command: Optional[str] = None, overwrite: bool = False,
               group: Any = None):
        """Write a Markdown + HTML report into directory ``out`` (:func:`evalkit.output.compare_report.write_compare_report`;
        ``group``, an :class:`evalkit.atomic.OutputGroup`, commits it with a run's other outputs)."""
        from ..output.compare_report import write_compare_report

        return write_compare_report(self, out, command=command, overwrite=overwrite, group=group)

    def __str__(self) -> str:
        return self.to_table()

    def _repr_html_(self) -> str:
        findings = "<br>".join(self.findings())
        return (self._table_display().to_html(index=False) + self._pairs_display().to_html(index=False)
                + f"<p>{findings}</p>")


def _fixed(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"


def _latex(text: str) -> str:
    return str(text).replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("&", r"\&").replace("%", r"\%")

