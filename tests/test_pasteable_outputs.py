"""Issue 25's defects, one test each: outputs and messages a researcher can paste as they are."""
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import evalkit
from evalkit.errors import DataError, ReferenceWarning
from evalkit.models import LinearGaussianModel, ModelCheck, check_model
from evalkit.output import report
from evalkit.output.plots import _ref_legend

ROOT = Path(__file__).resolve().parents[1]


def test_log_weights_takes_a_numpy_array_like_estimate_and_sweep():
    model = LinearGaussianModel.random(data_dim=5, latent_dim=2, seed=3)
    x = model.marginal().sample((6,))
    from_tensor = evalkit.log_weights(model, x, 40, dtype=torch.float64, progress=False)
    from_array = evalkit.log_weights(model, x.numpy(), 40, dtype=torch.float64, progress=False)
    assert torch.equal(from_tensor, from_array)  # float64 stays float64: the same bits
    with pytest.raises(DataError, match="got list"):
        evalkit.log_weights(model, x.tolist(), 4, progress=False)


def test_check_model_says_what_it_checked():
    model = LinearGaussianModel.random(data_dim=5, latent_dim=2, seed=3)
    found = check_model(model)
    assert isinstance(found, ModelCheck)
    assert (found.noise_shape, found.data_dim, found.requires_binary_data, found.has_log_marginal) == ((2,), 5, False, True)
    assert str(found).startswith("LinearGaussianModel follows the log-weight protocol: log_weights(x, noise), "
                                 "noise_shape (2,), data_dim 5, real-valued data; an exact log_marginal(x)")
    iwae = evalkit.load_model(ROOT / "examples" / "digits_iwae.pt")
    assert "binary data; no exact log_marginal" in str(check_model(iwae))


@pytest.fixture(scope="module")
def gamma_sweep():
    rng = np.random.default_rng(21)
    return evalkit.sweep(np.log(rng.gamma(1.0, size=(40, 300))), ks=[1, 2, 5, 10, 20, 50, 100, 300],
                         estimators=("elbo", "iwae", "jvi1"))


def test_findings_agree_in_sign_with_the_theory(gamma_sweep):
    """IWAE's theoretical bias is negative; what a debiased estimator adds to IWAE is its negation.
    The old text said "bias at -0.00089" and then "which the theory puts at 0.00089"."""
    text = "\n".join(report.findings(gamma_sweep))
    k_max = 300
    bias = gamma_sweep.theory[gamma_sweep.theory["k"] == k_max]["bias"].iloc[0]
    assert bias < 0
    assert f"remaining bias at {bias:.3g} nats" in text
    assert f"so the leading-order theory expects jvi1 - IWAE = {-bias:+.3g} nats" in text
    assert f"theory puts at {-bias:.3g}" not in text


def test_findings_do_not_call_the_elbo_a_debiased_estimator(gamma_sweep):
    elbo_line = next(line for line in report.findings(gamma_sweep) if line.startswith("elbo - IWAE"))
    assert "debiased" not in elbo_line and "never above IWAE on the same samples" in elbo_line


def test_the_ais_legend_says_reference_once():
    class Ref:
        kind = "ais"
    assert _ref_legend(Ref(), "log p(x)") == "AIS log p(x)"  # the plot prefixes "reference: "


@pytest.mark.filterwarnings("ignore::evalkit.errors.WeightWarning")
def test_a_reference_below_iwae_is_called_unconverged():
    """A reference that IWAE (a stochastic lower bound) exceeds by many SE is not log p(x)."""
    rng = np.random.default_rng(5)
    log_w = rng.normal(-3.0, 0.3, size=(200, 100))  # light tails: no k-hat warning
    exact = np.full(200, -3.0 + 0.3**2 / 2)  # log E w for log w ~ N(-3, 0.3^2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReferenceWarning)
        evalkit.sweep(log_w, ks=[1, 10, 100], reference=exact)  # a true reference: no warning
    with pytest.warns(ReferenceWarning, match=r"the reference lies 0\.\d+ \+- 0\.\d+ nats below IWAE at K = 100") as caught:
        result = evalkit.sweep(log_w, ks=[1, 10, 100], reference=exact - 0.5)
    assert [str(w.message) for w in caught if w.category is ReferenceWarning][0].count("cannot be log p(x)") == 1
    assert any("below IWAE" in text for text in result.warnings)


def test_bdmc_prints_n_a_for_the_mc_se_at_k_1():
    out = subprocess.run([sys.executable, "-m", "evalkit", "bdmc", str(ROOT / "examples" / "digits_iwae.pt"),
                          "--n", "2", "--steps", "2", "--ks", "1,4", "--chains", "2", "-q"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    iwae_1 = next(line for line in out.stdout.splitlines() if re.match(r"\s*iwae\s+1\s", line))
    assert iwae_1.split()[-1] == "n/a" and "NaN" not in out.stdout


@pytest.mark.parametrize("steps, message", [
    ("20,10", "the values of --steps must be strictly increasing, got 20,10"),
    ("0,5", "every value of --steps must be a positive integer, got 0,5"),
])
def test_list_options_are_named_as_the_command_line_spells_them(steps, message):
    out = subprocess.run([sys.executable, "-m", "evalkit", "bdmc", str(ROOT / "examples" / "digits_iwae.pt"),
                          "--steps", steps], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and message in out.stderr and "ks" not in out.stderr.replace("--ks", "")


def test_ais_chains_below_an_estimators_minimum_are_called_chains():
    out = subprocess.run([sys.executable, "-m", "evalkit", "estimate", str(ROOT / "examples" / "digits_iwae.pt"),
                          "--data", "digits", "--binarize", "bernoulli", "--method", "ais", "--chains", "1",
                          "--steps", "2", "-e", "jvi1"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 1
    assert "needs at least 2 AIS chains per datapoint (--chains on the command line, k in Python), got 1" in out.stderr
    assert "k = 1" not in out.stderr


def test_single_array_file_with_train_split_names_the_cli_option(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 4)))
    with pytest.raises(DataError, match=r"--split test or --split all; split='test' or 'all' in Python"):
        evalkit.data.load_data(tmp_path / "x.npy", split="train")


def test_docs_show_what_check_model_prints_and_the_log_marginal_hook():
    protocol = (ROOT / "docs" / "model-protocol.md").read_text()
    iwae = evalkit.load_model(ROOT / "examples" / "digits_iwae.pt")
    assert str(check_model(iwae)) in protocol
    assert "| `log_marginal(x) -> Tensor[B]` |" in protocol


def test_image_messages_print_no_placeholder():
    with pytest.raises(DataError) as caught:
        evalkit.data.as_images(np.full((2, 8, 8), 0.5))
    assert "levels-1" not in str(caught.value) and "0..255 for 8-bit images" in str(caught.value)


@pytest.mark.filterwarnings("ignore::evalkit.errors.WeightWarning")
def test_bits_per_dimension_reach_the_summary_and_the_csv_of_estimate():
    model = evalkit.load_model(ROOT / "examples" / "digits_iwae.pt")
    x = evalkit.data.load_data("digits", binarize="bernoulli")[:20]
    nats = evalkit.estimate(model, x, k=30, estimators=("iwae",))
    bpd = evalkit.estimate(model, x, k=30, estimators=("iwae",), units="bpd")
    assert "estimate_bpd" not in nats.summary and "estimate_bpd" not in nats.to_csv().splitlines()[0]
    row = bpd.summary.iloc[0]
    np.testing.assert_allclose(row["estimate_bpd"], -row["estimate"] / (64 * np.log(2)), rtol=1e-15)
    np.testing.assert_allclose(row["se_mc_bpd"], row["se_mc"] / (64 * np.log(2)), rtol=1e-15)
    header = bpd.to_csv().splitlines()[0].split(",")
    assert header[:9] == ["estimator", "k", "estimate", "se_data", "se_mc", "n", "estimate_bpd", "se_data_bpd", "se_mc_bpd"]
    assert bpd.to_json() == nats.to_json().replace('"units": "nats"', '"units": "bpd"') or \
        bpd.to_dict()["estimates"] == nats.to_dict()["estimates"]  # the JSON has both units either way
    assert list(bpd.table_in().columns) == ["estimator", "k", "estimate", "se_data", "se_mc", "n"]


def test_report_html_keeps_tables_and_the_command_on_the_page(gamma_sweep):
    html = report.render_html(gamma_sweep, {name: b"" for name in report.FIGURE_NAMES}, title="t",
                              command="evalkit report " + " ".join(f"--option-{i} value" for i in range(30)))
    assert html.count('<div class="scroll"><table') == html.count("<table") - 1  # all but the versions table
    assert "white-space:pre-wrap" in html and "overflow-wrap:anywhere" in html  # the command wraps, not clipped
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", html)
    assert captions and not any("`" in c for c in captions) and "<code>evalkit estimate</code>" in html


def test_fits_table_cells_hold_no_sentences(gamma_sweep):
    fits = gamma_sweep.fits_display().drop(columns=["note"])
    longest = max(len(str(v)) for v in fits.to_numpy().ravel())
    assert longest <= 24, fits.to_string()


@pytest.mark.filterwarnings("ignore::evalkit.errors.WeightWarning")
def test_sweep_mc_se_of_shared_columns_matches_the_spread_over_replications():
    """Rows that share their columns (a Bayesian network's weight samples) have correlated Monte Carlo
    errors: the sweep's MC SE must be the spread over independent groups, as estimate's jackknife is,
    not the independent-rows formula (which was about half the truth on the bundled BNN)."""
    from evalkit.analysis.sweep import sweep_source
    from evalkit.sources.matrix import MatrixSource

    rng = np.random.default_rng(11)
    n, k_max, k = 40, 200, 10
    estimates, reported = {"elbo": [], "iwae": []}, {"elbo": [], "iwae": []}
    for _ in range(80):
        shared = rng.normal(0.0, 0.5, size=k_max)  # one draw per column, common to every row
        log_w = torch.from_numpy(shared[None, :] + rng.normal(0.0, 0.3, size=(n, k_max)))
        table = sweep_source(MatrixSource(log_w, shared_columns=True), ks=[k, k_max],
                             estimators=("elbo", "iwae"), progress=False).table
        for name in estimates:
            row = table[(table["estimator"] == name) & (table["k"] == k)].iloc[0]
            estimates[name].append(row["estimate"])
            reported[name].append(row["mc_se"])
    for name in estimates:
        spread = np.std(estimates[name], ddof=1)
        ratio = np.mean(reported[name]) / spread
        # 80 replications: the spread is known to about 8 %, the mean reported SE to a few %.
        assert 0.75 < ratio < 1.3, (name, ratio)


@pytest.mark.filterwarnings("ignore::evalkit.errors.WeightWarning")
def test_theory_curves_from_a_subset_say_so_in_the_legend():
    from evalkit.output.plots import plot_bias, plot_variance

    rng = np.random.default_rng(2)
    light = np.log(rng.gamma(2.0, size=(30, 400)))
    heavy = rng.normal(0.0, 2.5, size=(30, 400))  # log-normal weights with sigma 2.5: k-hat well above 0.5
    result = evalkit.sweep(np.concatenate([light, heavy]), ks=[1, 10, 100, 400], estimators=("iwae",))
    used = int(result.theory_in_range()["datapoints"].iloc[0])
    assert 0 < used < 60
    for plot in (plot_bias, plot_variance):
        labels = plot(result).axes[0].get_legend_handles_labels()[1]
        assert any(label.startswith("IWAE theory") and f"(from {used} of 60 datapoints: k-hat < 0.5)" in label
                   for label in labels), labels


def test_a_predictive_report_does_not_offer_bits_per_dimension():
    from types import SimpleNamespace

    bnn = SimpleNamespace(metadata={"dims": None}, units="nats", quantity="log p(y | x)")
    assert report.units_sentence(bnn) == "Units: nats per datapoint (log p(y | x) of each test point)."
    vae = SimpleNamespace(metadata={"dims": None}, units="nats", quantity="log p(x)")
    assert "dims=" in report.units_sentence(vae)


@pytest.mark.filterwarnings("ignore::evalkit.errors.WeightWarning")  # few samples: the k-hat warning is expected
def test_every_json_output_and_report_records_its_provenance(tmp_path):
    out = subprocess.run([sys.executable, "-m", "evalkit", "estimate", str(ROOT / "examples" / "digits_iwae.pt"),
                          "--binarize", "bernoulli", "-k", "3", "--threads", "1", "-o", str(tmp_path / "e.json"), "-q"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    import json

    prov = json.loads((tmp_path / "e.json").read_text())["metadata"]["provenance"]
    assert prov["command"].startswith("python -m evalkit estimate ") and prov["command"].endswith("-q")
    assert prov["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert (prov["device"], prov["threads"], prov["dtype"]) == ("cpu", 1, "float32")
    assert prov["torch_version"] == torch.__version__ and prov["numpy_version"] == np.__version__
    assert prov["evalkit_version"] == evalkit.__version__ and re.match(r"\d{4}-\d\d-\d\dT", prov["date"])
    assert prov["git_revision"] is None or re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", prov["git_revision"])
    log_w = np.log(np.random.default_rng(0).gamma(2.0, size=(6, 50)))
    result = evalkit.sweep(log_w, ks=[1, 10, 50])
    assert "device" not in result.metadata["provenance"]  # a matrix was given: nothing was computed
    md = report.render_markdown(result, title="t", command="c")
    assert f"| cpu capability | {torch.backends.cpu.get_cpu_capability()} |" in md and "| date | " in md


def test_an_error_from_outside_evalkit_says_what_failed(tmp_path, monkeypatch):
    """Not "(raised inside the run, e.g. by the model's log_weights)" for every failure: the
    user's file and line, a syntax error's file, or the stage of evalkit."""
    from evalkit.errors import describe_exception

    (tmp_path / "glue_model.py").write_text("def build():\n    raise ValueError('no weights here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import glue_model

    with pytest.raises(ValueError) as caught:
        glue_model.build()
    assert describe_exception(caught.value).startswith(
        "ValueError: no weights here (raised in glue_model.py, line 2, in build); re-run with --debug")
    with pytest.raises(SyntaxError) as caught:
        compile("def f(:\n", "broken_factory.py", "exec")
    assert "(a syntax error in broken_factory.py, line 1)" in describe_exception(caught.value)
    (tmp_path / "x.npz").write_bytes(b"PK\x03\x04 not a zip")
    out = subprocess.run([sys.executable, "-m", "evalkit", "estimate", str(ROOT / "examples" / "digits_iwae.pt"),
                          "--data", str(tmp_path / "x.npz"), "-k", "4", "-q"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 1 and "e.g. by the model's log_weights" not in out.stderr


@pytest.mark.filterwarnings("ignore::evalkit.errors.WeightWarning")
def test_findings_quote_the_theory_tables_numbers_not_the_mean_over_heavy_tails():
    """The findings said "remaining bias at -0.00089" over every datapoint while the theory table
    beside them (over the datapoints with k-hat < 0.5) said -0.00049 at the same K."""
    rng = np.random.default_rng(3)
    log_w = np.concatenate([rng.normal(0.0, 0.3, size=(30, 400)), rng.normal(0.0, 3.0, size=(10, 400))])
    result = evalkit.sweep(log_w, ks=[1, 10, 100, 400], estimators=("iwae", "jvi1"))
    table = result.theory_in_range()
    valid, everyone = (t[t["k"] == 400]["bias"].iloc[0] for t in (table, result.theory))
    assert abs(everyone) > 2 * abs(valid)  # the heavy-tailed datapoints inflate the mean over all
    text = "\n".join(report.findings(result))
    assert f"remaining bias at {valid:.3g} nats (the theory table: the mean over the 30 datapoints" in text
    assert f"expects jvi1 - IWAE = {-valid:+.3g} nats" in text
    assert f"{everyone:.3g}" not in text


def test_a_zero_with_a_zero_se_prints_without_a_minus_sign():
    from evalkit.analysis.tables import pm

    assert pm(-0.0, 0.0) == "0 ± 0" and pm(-0.0, 0.01) == "0.000 ± 0.010" and pm(-1.5, 0.0) == "-1.5 ± 0"
