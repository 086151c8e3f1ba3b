"""Sweep directories and self-contained reports: every file whole, nothing partial, nothing external."""
import base64
import json
import re

import numpy as np
import pandas as pd
import pytest

from evalkit.output import report
from evalkit.errors import OutputError
from evalkit.analysis.sweep import TABLE_COLUMNS, sweep


@pytest.fixture(scope="module")
def result():
    rng = np.random.default_rng(21)
    return sweep(np.log(rng.gamma(1.0, size=(40, 300))), ks=[1, 2, 5, 10, 20, 50, 100, 300])


def test_write_sweep_writes_tables_and_figures(result, tmp_path):
    out = tmp_path / "run"  # created
    paths = result.save(out, per_datapoint=True)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        ["sweep.csv", "sweep.json", "sweep.md", "theory.csv", "fits.csv", "weights.csv", "per_datapoint.csv"]
        + [f"{fig}.{fmt}" for fig in report.FIGURE_NAMES for fmt in ("png", "svg", "pdf")]
    )
    assert set(paths.values()) == {out / name for name in names}
    table = pd.read_csv(out / "sweep.csv", keep_default_na=False, na_values=[""])
    assert list(table.columns) == TABLE_COLUMNS
    np.testing.assert_array_equal(table["bias"].to_numpy(), result.table["bias"].to_numpy())  # full precision
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["reference"]["kind"] == "pool"
    assert (out / "sweep.md").read_text() == result.to_markdown()
    weights = pd.read_csv(out / "weights.csv")
    assert list(weights.columns) == ["index", "ess_fraction", "khat"] and len(weights) == 40
    per = pd.read_csv(out / "per_datapoint.csv")
    assert len(per) == 40 * len(result.table)
    assert (out / "bias.png").read_bytes()[:4] == b"\x89PNG"


def test_existing_files_are_refused_before_anything_is_written(result, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "khat.png").write_text("mine")  # the last file write_sweep would write
    with pytest.raises(OutputError, match="khat.png' already exists; pass --overwrite"):
        result.save(out, formats=["png"])
    assert sorted(p.name for p in out.iterdir()) == ["khat.png"]
    result.save(out, formats=["png"], overwrite=True)
    assert (out / "khat.png").read_bytes()[:4] == b"\x89PNG"


def test_output_under_a_file_is_refused(result, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="is not a directory, so .* cannot be created; choose another location$"):
        result.save(blocker / "run")


def test_figure_formats_are_chosen(result, tmp_path):
    result.save(tmp_path, formats=["png"])
    assert sorted(p.suffix for p in tmp_path.iterdir() if p.stem in report.FIGURE_NAMES) == [".png"] * 4


def test_report_markdown_and_html(result, tmp_path):
    out = tmp_path / "reports" / "example"
    command = "evalkit report --log-weights lw.npy --out reports/example"
    paths = result.report(out, title="Example report", command=command)
    assert result.report(out, title="Example report", command=command, overwrite=True) == paths
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        ["report.md", "report.html", "sweep.csv", "sweep.json", "weights.csv"]
        + [f"figures/{name}.png" for name in report.FIGURE_NAMES]
    )
    md = paths["report_md"].read_text()
    assert md.startswith("# Example report\n")
    for name in report.FIGURE_NAMES:
        assert f"![{name}](figures/{name}.png)" in md
    assert f"```\n{command}\n```" in md
    assert "| torch |" in md and "| numpy |" in md and "| evalkit |" in md
    assert "No exact log p(x) was available" in md  # the pool reference is labelled
    assert "| estimator" in md and "Extrapolation" in md

    html = paths["report_html"].read_text()
    assert html.startswith("<!DOCTYPE html>") and "<title>Example report</title>" in html
    assert command.replace("<", "&lt;") in html
    # self-contained: every image is inline, nothing is fetched from elsewhere
    sources = re.findall(r'src="([^"]*)"', html)
    assert len(sources) == 4 and all(src.startswith("data:image/png;base64,") for src in sources)
    assert "href=" not in html
    for src, name in zip(sources, report.FIGURE_NAMES):
        data = base64.b64decode(src.split(",", 1)[1])
        assert data == (out / "figures" / f"{name}.png").read_bytes()


def test_report_escapes_html(result, tmp_path):
    html = report.render_html(result, {name: b"" for name in report.FIGURE_NAMES},
                              title="<script>alert(1)</script>", command="a < b && c")
    assert "<script>" not in html and "&lt;script&gt;" in html and "a &lt; b &amp;&amp; c" in html


def test_report_refuses_to_overwrite(result, tmp_path):
    (tmp_path / "r" / "figures").mkdir(parents=True)
    (tmp_path / "r" / "figures" / "khat.png").write_bytes(b"mine")
    with pytest.raises(OutputError, match="khat.png' already exists"):
        result.report(tmp_path / "r")
    assert [p.name for p in (tmp_path / "r").rglob("*") if p.is_file()] == ["khat.png"]


def test_findings_answer_the_three_questions(result):
    lines = report.findings(result)
    text = "\n".join(lines)
    assert "IWAE at K = 300" in text
    assert "Leading-order theory" in text
    assert "Extrapolated log p(x)" in text
    assert "PSIS k-hat" in text
    assert "No exact log p(x) was available" in text


def test_check_output_dir_accepts_a_missing_tree(tmp_path):
    report.check_output_dir(report.report_paths(tmp_path / "a" / "b"))
