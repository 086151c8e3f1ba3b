"""A report that explains itself: titles per command, theory only where valid, slopes with SE or reason."""
import re

import numpy as np
import pandas as pd
import pytest

from evalkit.analysis.asymptotics import iwae_theory, moment_ratios, valid_iwae_theory
from evalkit.analysis.sweep import sweep
from evalkit.analysis.tables import sig2, slope_text
from evalkit.errors import WeightWarning
from evalkit.output import report


@pytest.fixture(scope="module")
def heavy_result():
    # Gamma(0.3) weights: heavy enough that the 1/K^2 term dominates at small K, plus two
    # Pareto rows with k-hat > 0.5.
    rng = np.random.default_rng(5)
    log_w = np.log(rng.gamma(0.3, size=(40, 400)))
    log_w[[4, 9]] = np.log(rng.pareto(1 / 0.9, size=(2, 400)) + 1)
    with pytest.warns(WeightWarning):
        return sweep(log_w, ks=[1, 2, 5, 10, 20, 50, 100, 400], estimators=["iwae", "jvi1", "jvi2"])


def test_raw_theory_goes_negative_but_the_shown_theory_never_does(heavy_result):
    raw = heavy_result.theory  # at K = 1 the raw second-order terms outgrow the leading ones
    assert ((raw["variance_2"] - raw["variance"]).abs() > raw["variance"]).iloc[0]
    shown = heavy_result.theory_in_range()
    assert not shown.empty and (shown["variance_2"] > 0).all()
    second_b = (shown["bias_2"] - shown["bias"]).abs()
    second_v = (shown["variance_2"] - shown["variance"]).abs()
    assert (second_b < shown["bias"].abs()).all() and (second_v < shown["variance"]).all()
    assert 1 not in shown["k"].tolist()
    # ... and it averages only the datapoints with k-hat < 0.5 (the Pareto rows are left out).
    khat = heavy_result.weights.khat
    assert shown["datapoints"].iloc[0] == int(np.sum(np.isfinite(khat) & (khat < 0.5))) < 40


def test_valid_theory_matches_an_independent_check():
    rng = np.random.default_rng(1)
    log_w = np.log(rng.gamma(0.5, size=(30, 300)))
    r2, r3 = moment_ratios(log_w)
    khat = np.zeros(30)
    khat[0] = 0.9
    ks = [1, 2, 3, 5, 10, 100]
    got = valid_iwae_theory(r2, r3, ks, khat)
    r2g, r3g = np.asarray(r2)[1:], np.asarray(r3)[1:]
    lead_b, lead_v = np.mean(r2g) / 2, np.mean(r2g)
    c_b, c_v = np.mean(r3g / 3 - 0.75 * r2g**2), -np.mean(r3g - 2.5 * r2g**2)
    expected = [k for k in ks if abs(c_b) / k**2 < lead_b / k and abs(c_v) / k**2 < lead_v / k]
    assert got["k"].tolist() == expected
    np.testing.assert_allclose(got["variance_2"], [lead_v / k + c_v / k**2 for k in expected], rtol=1e-12)
    assert valid_iwae_theory(r2, r3, ks, np.full(30, np.nan)).empty


def test_report_theory_table_has_no_negative_variance_and_a_sentence(heavy_result, tmp_path):
    paths = heavy_result.report(tmp_path / "r")
    md = paths["report_md"].read_text()
    section = md.split("## IWAE theory")[1].split("## Figures")[0]
    assert "Shown only where the expansion holds" in section and "k-hat < 0.5" in section
    rows = [line for line in section.splitlines() if re.match(r"\|\s*\d+\s*\|", line)]
    assert rows, section
    shown_ks = {int(line.split("|")[1]) for line in rows}
    assert shown_ks == set(heavy_result.theory_in_range()["k"].tolist())
    for line in rows:
        assert float(line.split("|")[4]) > 0 and float(line.split("|")[5]) > 0


def test_html_title_matches_the_command_and_estimates_do_not_wrap(heavy_result, tmp_path):
    paths = heavy_result.report(tmp_path / "r")
    page = paths["report_html"].read_text()
    title = re.search(r"<title>(.*?)</title>", page).group(1)
    assert title.startswith("evalkit report: ") and "evalkit sweep" not in page.split("<body>")[0]
    assert "white-space:nowrap" in page
    assert "k-hat is itself estimated from the K samples" in page
    assert "There is no point at K = K_max" in page


def test_notes_become_numbered_footnotes():
    frame = pd.DataFrame({"x": [1, 2, 3], "note": ["a; b", "", "b"]})
    out, notes = report.footnoted(frame, start=3)
    assert notes == ["a", "b"] and out["note"].tolist() == ["[3] [4]", "", "[4]"]


def test_every_slope_has_an_se_or_a_reason(heavy_result):
    fits = heavy_result.fits_display()
    for text, note in zip(fits["|bias| slope"], fits["note"]):
        # The reason is a footnote (the row's note), never a sentence inside the cell.
        assert "±" in text or ((text == "n/a" or text.endswith("(no SE)")) and "|bias| slope: " in note)
    assert all(", " in ks or ks.isdigit() or ks == "-" for ks in fits["slope ks"])
    assert slope_text(-1.0, float("nan"), "2 points: no SE") == "-1.00 (no SE: 2 points)"


def test_mc_se_has_two_significant_digits_everywhere():
    assert [sig2(v) for v in (0.001962, 0.00147, 0.002, 12.0)] == ["0.0020", "0.0015", "0.0020", "12"]
