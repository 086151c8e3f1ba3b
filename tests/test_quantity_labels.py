"""Headings, sentences and axis labels name what is estimated: log p(y | x) for a Bayesian
network's predictive, log p(x) for a VAE; never log p(x) for the predictive."""
from __future__ import annotations

import re
import warnings

import matplotlib
import pytest

import evalkit
from evalkit.output import plots

matplotlib.use("Agg")
pytestmark = [pytest.mark.filterwarnings("ignore:PSIS k-hat is nan:UserWarning"),
              pytest.mark.filterwarnings("ignore::evalkit.errors.WeightWarning")]

BNN, VAE = "examples/digits_bnn.pt", "examples/digits_iwae.pt"
KS = [1, 2, 5, 10, 20]


def _sweep(model, data, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evalkit.sweep(model, data=data, ks=KS, estimators=["elbo", "iwae", "jvi1"], seed=0, progress=False,
                             **options)


@pytest.fixture(scope="module")
def bnn_sweep():
    return _sweep(BNN, "digits")


@pytest.fixture(scope="module")
def vae_sweep():
    x = evalkit.data.load_data("digits", split="test", binarize="bernoulli")[:40]
    return _sweep(VAE, x)


def _texts(result, out):
    """Every text a sweep writes: report (Markdown, HTML), str, Markdown, JSON, figure labels."""
    report = result.report(out, overwrite=True)
    texts = {"report.md": (out / "report.md").read_text(), "report.html": (out / "report.html").read_text(),
             "str": str(result), "markdown": result.to_markdown(), "json": result.to_json()}
    for name, fig in (("estimate", plots.plot_estimates(result)), ("bias", plots.plot_bias(result))):
        ax = fig.axes[0]
        texts[name] = "\n".join([ax.get_ylabel(), ax.get_title()] + [t.get_text() for t in ax.get_legend().get_texts()])
    assert report is not None
    return texts


def test_predictive_sweep_says_log_p_y_given_x_everywhere(bnn_sweep, tmp_path):
    assert bnn_sweep.metadata["quantity"] == "log p(y | x)" == bnn_sweep.quantity
    texts = _texts(bnn_sweep, tmp_path / "bnn")
    for name, text in texts.items():
        assert "log p(x)" not in text, name
    for name in ("report.md", "report.html", "str", "markdown", "estimate"):
        assert "log p(y | x" in texts[name], name
    assert "mean log p(y | x) estimate (nats)" in texts["estimate"]
    assert "log p(y | x) extrapolated (a)" in bnn_sweep.fits_display().columns


def test_predictive_estimate_summary_text_says_log_p_y_given_x():
    result = evalkit.estimate(BNN, "digits", k=20, seed=0, progress=False)
    text = result.to_table() + result.to_markdown() + result.to_latex() + result.to_json()
    assert "log p(y | x" in result.to_table() and "log p(x)" not in text and r"\log p(x)" not in text
    assert r"$\log p(y \mid x)$" in result.to_latex()


def test_predictive_user_reference_is_labelled_with_the_quantity(tmp_path):
    result = _sweep(BNN, "digits", reference=-0.1)
    assert result.reference.label.startswith("user-supplied log p(y | x)")
    texts = _texts(result, tmp_path / "user")
    assert all("log p(x)" not in text for text in texts.values())


def test_vae_sweep_and_estimate_still_say_log_p_x(vae_sweep, tmp_path):
    assert "quantity" not in vae_sweep.metadata  # log p(x) results keep their metadata as before
    texts = _texts(vae_sweep, tmp_path / "vae")
    for name in ("report.md", "report.html", "str", "markdown", "estimate"):
        assert "log p(x)" in texts[name] and "log p(y" not in texts[name], name
    assert "mean log p(x) estimate (nats)" in texts["estimate"]
    x = evalkit.data.load_data("digits", split="test", binarize="bernoulli")[:40]
    result = evalkit.estimate(VAE, x, k=20, seed=0, progress=False)
    assert result.to_table().startswith("log p(x) estimates:") and r"$\log p(x)$" in result.to_latex()


def test_markdown_tables_keep_their_columns_when_labels_hold_pipes(bnn_sweep):
    # "log p(y | x) extrapolated (a)" and "|bias| slope" must not split a Markdown cell: every row of
    # a table has as many unescaped pipes as its header.
    tables, current = [], []
    for line in bnn_sweep.to_markdown().splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables, current = tables + [current], []
    assert len(tables) == 2
    for table in tables:
        counts = {len(re.findall(r"(?<!\\)\|", line)) for line in table}
        assert len(counts) == 1, table[:3]
    assert r"log p(y \| x) extrapolated (a)" in tables[1][0] and r"\|bias\| slope" in tables[1][0]
