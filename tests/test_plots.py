"""Figures of a sweep, checked by rendering them and inspecting the axes."""
import math

import numpy as np
import pytest

from evalkit import plots
from evalkit.errors import InputError
from evalkit.analysis.sweep import sweep


@pytest.fixture(scope="module")
def result():
    rng = np.random.default_rng(11)
    log_w = np.log(rng.gamma(1.0, size=(60, 500)))
    return sweep(log_w, ks=[1, 2, 5, 10, 50, 100, 500], reference=0.0)


@pytest.fixture(scope="module")
def pool_result():
    rng = np.random.default_rng(12)
    return sweep(np.log(rng.gamma(1.0, size=(30, 200))), ks=[1, 10, 100, 200])


def _render(fig):
    fig.canvas.draw()  # fails loudly on anything matplotlib cannot lay out
    return fig


def _legend_texts(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_estimate_figure(result):
    fig = _render(plots.plot_estimates(result))
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and ax.get_yscale() == "linear"
    assert ax.get_xlabel() == "K (samples per datapoint)"
    assert ax.get_ylabel() == "mean log p(x) estimate (nats)"
    # one line per estimator plus the horizontal reference line
    assert len(ax.lines) == 3 + 1
    reference = ax.lines[-1]
    assert np.all(np.asarray(reference.get_ydata()) == 0.0) and reference.get_linestyle() == "--"
    assert _legend_texts(ax) == ["IWAE", "JVI-1", "JVI-2", "reference: user-supplied log p(x)"]
    assert len(ax.collections) == 3  # one band per estimator
    iwae = ax.lines[0]
    np.testing.assert_array_equal(iwae.get_xdata(), [1, 2, 5, 10, 50, 100, 500])
    np.testing.assert_allclose(iwae.get_ydata(), result.table[result.table.estimator == "iwae"]["estimate"])


def test_bias_figure_is_log_log_with_slope_guides_and_theory(result):
    fig = _render(plots.plot_bias(result))
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_ylabel() == "|bias| (nats) vs user reference"
    labels = _legend_texts(ax)
    assert labels[:3] == ["IWAE", "JVI-1", "JVI-2"]
    assert "IWAE theory: mu2 / (2 K mu^2)" in labels
    assert [label for label in labels if label.startswith("slope")] == ["slope -1", "slope -2", "slope -3"]
    clipped = [line for line in ax.lines if line.get_marker() == "v"]  # bars cut at zero, marked
    assert len(ax.lines) - len(clipped) == 3 + 1 + 3
    assert all(line.get_linestyle() == "None" for line in clipped)
    # the guides really have slopes -1, -2, -3 on the log-log axes
    guides = [line for line in ax.lines if line.get_label().startswith("slope")]
    for s, line in zip((1, 2, 3), guides):
        x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
        assert np.diff(np.log(y))[0] / np.diff(np.log(x))[0] == pytest.approx(-s)
    # all plotted |bias| values are positive (log axis) and equal |table bias|
    iwae = result.table[result.table.estimator == "iwae"]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), np.abs(iwae["bias"]))
    low, high = ax.get_ylim()
    assert low > 0 and low < np.abs(iwae["bias"]).min() and high > np.abs(iwae["bias"]).max()


def test_bias_figure_names_a_pool_reference(pool_result):
    fig = _render(plots.plot_bias(pool_result))
    assert fig.axes[0].get_ylabel() == "|bias| (nats) vs JVI-2 at K=200 (no exact)"
    fig = _render(plots.plot_estimates(pool_result))
    assert _legend_texts(fig.axes[0])[-1] == "reference: JVI-2 at K = 200 (no exact log p(x))"
    # the reference estimator's own point at K_max is exactly 0 and is left out of the log plot
    jvi2 = [line for line in plots.plot_bias(pool_result).axes[0].lines if line.get_label() == "JVI-2"][0]
    assert 200 not in list(jvi2.get_xdata())


def test_variance_figure(result):
    fig = _render(plots.plot_variance(result))
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_ylabel() == "variance of one estimate (nats^2)"
    assert len(ax.lines) == 3 + 1
    iwae = ax.lines[0]
    assert 500 not in list(iwae.get_xdata())  # one group at K_max: no variance
    assert _legend_texts(ax)[-1] == "IWAE theory: mu2 / (K mu^2)"


def test_khat_histogram_with_thresholds(result):
    fig = _render(plots.plot_khat(result))
    (ax,) = fig.axes
    assert ax.get_xlabel() == "PSIS k-hat" and ax.get_ylabel() == "datapoints"
    vertical = [line.get_xdata()[0] for line in ax.lines]
    # K = 500 < 2154: the sample-size threshold 1 - 1/log10(K) is below 0.7 and drawn too
    assert vertical == pytest.approx([0.5, 0.7, 1 - 1 / math.log10(500)])
    counts = sum(patch.get_height() for patch in ax.patches)
    assert counts == np.isfinite(result.weights.khat).sum() == 60
    assert "K = 500" in ax.get_title()


def test_khat_histogram_has_no_extra_threshold_for_large_k():
    rng = np.random.default_rng(13)
    big = sweep(np.log(rng.gamma(1.0, size=(5, 3000))), ks=[1, 3000], estimators=["iwae"], reference=0.0)
    ax = plots.plot_khat(big).axes[0]
    assert [line.get_xdata()[0] for line in ax.lines] == [0.5, 0.7]


def test_functions_draw_on_a_given_axes_and_return_its_figure(result):
    from matplotlib.figure import Figure

    fig = Figure()
    axes = fig.subplots(2, 2)
    for ax, fn in zip(axes.flat, (plots.plot_estimates, plots.plot_bias, plots.plot_variance, plots.plot_khat)):
        assert fn(result, ax=ax) is fig
    assert all(len(ax.lines) > 0 for ax in axes.flat)


def test_figures_do_not_touch_pyplot(result):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plots.sweep_figures(result)
    assert plt.get_fignums() == before


def test_save_figure_writes_each_format(result, tmp_path):
    fig = plots.plot_bias(result)
    paths = plots.save_figure(fig, tmp_path / "bias")
    assert [p.name for p in paths] == ["bias.png", "bias.svg", "bias.pdf"]
    assert (tmp_path / "bias.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "bias.pdf").read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in (tmp_path / "bias.svg").read_bytes()[:500]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bias.pdf", "bias.png", "bias.svg"]  # no temporaries
    from evalkit.errors import OutputError

    with pytest.raises(OutputError, match="already exists"):
        plots.save_figure(fig, tmp_path / "bias", formats=["png"])


def test_svg_and_pdf_are_reproducible(result, tmp_path):
    fig = plots.plot_variance(result)
    plots.save_figure(fig, tmp_path / "a", formats=["svg", "pdf"])
    plots.save_figure(fig, tmp_path / "b", formats=["svg", "pdf"])
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()
    assert (tmp_path / "a.pdf").read_bytes() == (tmp_path / "b.pdf").read_bytes()


def test_unknown_figure_format():
    with pytest.raises(InputError, match="unknown figure format 'jpg'"):
        plots.check_formats(["png", "jpg"])
    assert plots.check_formats("png,pdf,png") == ("png", "pdf")
