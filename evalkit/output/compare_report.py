"""Write a model comparison (:class:`~evalkit.analysis.compare_result.CompareResult`) as a report directory.

``report.md`` (the figure linked as ``figures/compare.png``) and ``report.html`` (the figure
embedded), led by the findings sentences, with the publication table, the pairs, the exact
command and the files ``compare.json`` (full precision) and ``per_example.csv``. Like the sweep
report, the directory appears whole or not at all (:func:`evalkit.atomic.atomic_directory`).
"""
from __future__ import annotations

import base64
import html
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Dict, Optional, Union

from ..analysis.tables import markdown_table
from ..atomic import OutputGroup, atomic_directory, atomic_write_bytes, atomic_write_text, output_group
from .report import check_output_dir

PathLike = Union[str, os.PathLike]

CAPTION = ("Left: each pair's per-datapoint differences a_n - b_n, sorted, with the zero line and the mean "
           "(dashed). Right: each model's estimate with the paired 95% interval of its difference to the best "
           "model (thick) and its separate 95% interval over datapoints (thin, grey).")


def compare_report_paths(out: PathLike) -> Dict[str, Path]:
    """The files :func:`write_compare_report` writes into ``out``, by name."""
    out = Path(out)
    return {"report_md": out / "report.md", "report_html": out / "report.html", "json": out / "compare.json",
            "per_example_csv": out / "per_example.csv", "compare_png": out / "figures" / "compare.png"}


def write_compare_report(result, out: PathLike, *, command: Optional[str] = None,
                         overwrite: bool = False, group: Optional[OutputGroup] = None) -> Dict[str, Path]:
    """Write the comparison's report into directory ``out`` (created if missing); return the paths.

    Parameters
    ----------
    result : CompareResult
    out : path
        Report directory.
    command : str, optional
        The command that made the result (the CLI passes its command line).
    overwrite : bool
        Replace existing files.
    group : OutputGroup, optional
        Commit the report with other outputs of the same run (:func:`evalkit.atomic.output_group`);
        by default the report's own files are committed together.
    """
    from .plots import figure_png_bytes

    paths = compare_report_paths(out)
    check_output_dir(paths, overwrite=overwrite)
    png = figure_png_bytes(result.figures()["compare"])
    command = command or "(not recorded: made from Python without command=)"
    title = "evalkit comparison: " + " vs ".join(result.names)
    with (nullcontext(group) if group is not None else output_group()) as group, \
            atomic_directory(out, group=group) as stage:
        staged = compare_report_paths(stage)
        staged["compare_png"].parent.mkdir(exist_ok=True)
        texts = {"json": result.to_json(per_example=True) + "\n", "per_example_csv": result.to_csv(which="per_example"),
                 "report_md": render_markdown(result, title=title, command=command),
                 "report_html": render_html(result, png, title=title, command=command)}
        atomic_write_bytes(staged["compare_png"], png, overwrite=overwrite, group=group)
        for name, text in texts.items():
            atomic_write_text(staged[name], text, overwrite=overwrite, group=group)
    return paths


def _overview(result) -> str:
    m = result.metadata
    return (f"{len(result.names)} models on {m['data']}: N = {m['n']} datapoints, K = {m['k']} samples each, "
            f"seed {m['seed']}. Differences are paired over the same datapoints; {m['z_method']}.")


def render_markdown(result, *, title: str, command: str) -> str:
    """The report as Markdown."""
    out = [f"# {title}", "", _overview(result), "", "## Findings", ""]
    out += [f"* {line}" for line in result.findings()]
    out += ["", "## Models", "", markdown_table(result.publication_frame()), "",
            "## Paired differences (A - B, nats)", "", markdown_table(result._pairs_display()), "",
            "## Figure", "", "![compare](figures/compare.png)", "", f"*{CAPTION}*", "",
            "## Reproduce", "", "```", command, "```", "",
            "Files: `compare.json` (full precision, per-datapoint values included), `per_example.csv`.", ""]
    return "\n".join(out)


def render_html(result, png: bytes, *, title: str, command: str) -> str:
    """The report as one HTML file with the figure embedded as base64 PNG."""
    esc = html.escape
    data = base64.b64encode(png).decode("ascii")
    body = [f"<h1>{esc(title)}</h1>", f"<p>{esc(_overview(result))}</p>", "<h2>Findings</h2>", "<ul>"]
    body += [f"<li>{esc(line)}</li>" for line in result.findings()]
    body += ["</ul>", "<h2>Models</h2>", result.publication_frame().to_html(index=False, border=0),
             "<h2>Paired differences (A - B, nats)</h2>", result._pairs_display().to_html(index=False, border=0),
             f'<h2>Figure</h2><figure><img alt="compare" src="data:image/png;base64,{data}">',
             f"<figcaption>{esc(CAPTION)}</figcaption></figure>", "<h2>Reproduce</h2>", f"<pre>{esc(command)}</pre>"]
    style = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.4}"
             "table{border-collapse:collapse;font-size:0.85rem}td,th{border-bottom:1px solid #ddd;padding:2px 8px}"
             "img{max-width:100%}pre{background:#f4f4f4;padding:0.5rem}")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{esc(title)}</title>\n<style>{style}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
