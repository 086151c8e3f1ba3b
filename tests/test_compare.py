"""evalkit.compare / `evalkit compare`: paired differences, their Monte Carlo SE and the CLI.

Truths: a hand computation from the per-example values; two linear-Gaussian models with exact
log p(x) and data from a known Gaussian, so that the population difference
E_x[log p_A(x) - log p_B(x)] is exact (coverage of se_total over seeded comparisons); the spread
of the difference over seeds with the data fixed (se_mc).
"""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import evalkit
from evalkit_cli.main import main
from evalkit.errors import InputError
from evalkit.models import LinearGaussianModel

F64 = torch.float64
FAST = dict(progress=False, threads=1, batch_size=64, k_chunk=64)  # tiny models: skip the memory probe


def _imperfect(model: LinearGaussianModel, seed: int, spread: float = 0.15, widen: float = 1.25):
    """``model`` with its exact posterior proposal perturbed: log-weights vary, IWAE's bias stays small."""
    a, c, scale = model.exact_posterior_params()
    gen = torch.Generator().manual_seed(seed)
    return model.with_proposal(a + spread * torch.randn(a.shape, generator=gen, dtype=F64), c, scale * widen)


def _models(latent_b: int = 2):
    """A, and a B close to it (as two trained models are): their estimates are correlated over datapoints."""
    base = LinearGaussianModel.random(4, 2, seed=11)
    a = _imperfect(base, seed=1)
    weight = base.weight * 0.9
    if latent_b > 2:
        extra = 0.3 * torch.randn(4, latent_b - 2, generator=torch.Generator().manual_seed(5), dtype=F64)
        weight = torch.cat([weight, extra], dim=1)
    b = _imperfect(LinearGaussianModel(weight, base.bias + 0.1, base.noise_variance * 1.2), seed=1)
    return a, b


def _expected_log_density(model: LinearGaussianModel, mean: torch.Tensor, cov: torch.Tensor) -> float:
    """E_{x ~ N(mean, cov)}[log p_model(x)], exactly (p_model is Gaussian)."""
    marginal = model.marginal()
    c, b = marginal.covariance_matrix.to(F64), marginal.loc.to(F64)
    inv = torch.linalg.inv(c)
    gap = mean - b
    d = mean.shape[0]
    return float(-0.5 * (d * math.log(2 * math.pi) + torch.logdet(c) + torch.trace(inv @ cov) + gap @ inv @ gap))


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", evalkit.errors.WeightWarning)
        return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def pair():
    a, b = _models()
    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(0), dtype=F64) * 1.5
    return a, b, x


def test_paired_se_is_the_sd_of_the_per_example_differences_over_sqrt_n(pair):
    a, b, x = pair
    result = _quiet(evalkit.compare, [a, b], x, k=40, estimators=("iwae", "elbo"), names=["A", "B"], **FAST)
    for est in ("iwae", "elbo"):
        d = result.per_example[f"{est}[A]"].to_numpy() - result.per_example[f"{est}[B]"].to_numpy()
        row = result.difference("A", "B", est)
        assert row["difference"] == pytest.approx(d.mean(), rel=1e-12)
        assert row["se_paired"] == pytest.approx(d.std(ddof=1) / math.sqrt(len(d)), rel=1e-12)
        assert row["z"] == pytest.approx(d.mean() / row["se_total"], rel=1e-12)
        assert row["p_value"] == pytest.approx(math.erfc(abs(row["z"]) / math.sqrt(2)), rel=1e-12)
        # Rows with their own streams: the MC noise is already in the spread, se_total = se_paired.
        assert row["se_total"] == row["se_paired"]
        assert np.array_equal(result.per_example[f"{est}[A - B]"].to_numpy(), d)
    # The paired SE is far below the unpaired one here (the two models' estimates are correlated).
    t = result.table[result.table.estimator == "iwae"].set_index("model")
    unpaired = math.hypot(t.loc["A", "se_data"], t.loc["B", "se_data"])
    assert result.difference("A", "B", "iwae")["se_paired"] < 0.8 * unpaired


def test_table_rows_are_those_of_estimate_with_the_seed_used(pair):
    a, b, x = pair
    result = _quiet(evalkit.compare, [a, b], x, k=40, estimators=("iwae", "jvi1"), seed=5, names=["A", "B"], **FAST)
    for name, model in (("A", a), ("B", b)):
        alone = _quiet(evalkit.estimate, model, x, k=40, estimators=("iwae", "jvi1"), seed=5, **FAST).summary
        rows = result.table[result.table.model == name].reset_index(drop=True)
        for column in ("estimate", "se_data", "se_mc"):
            assert rows[column].tolist() == alone[column].tolist()
    assert set(result.table["rank"]) == {1, 2}
    assert [m["seed"] for m in result.metadata["models"]] == [5, 5]
    assert result.metadata["common_random_numbers"][0]["common"] is True


def test_a_model_against_its_identical_copy_differs_by_exactly_zero_with_z_undefined(pair):
    a, _, x = pair
    result = _quiet(evalkit.compare, [a, a], x, k=30, estimators=("iwae", "elbo", "jvi2", "dvi"), **FAST)
    assert list(result.names) == ["LinearGaussianModel", "LinearGaussianModel (2)"]
    for row in result.pairs.itertuples():
        assert (row.difference, row.se_paired, row.se_mc, row.se_total) == (0.0, 0.0, 0.0, 0.0)
        assert math.isnan(row.z) and math.isnan(row.p_value)
    assert all("z is undefined" in line for line in result.findings())
    doc = json.loads(result.to_json())
    assert doc["pairs"][0]["z"] is None and doc["pairs"][0]["p_value"] is None
    assert "undefined" in result.to_table() and "undefined" in result.to_markdown()


def test_mc_variance_of_a_difference_against_brute_force_and_for_independent_streams():
    from evalkit.analysis.compare import difference_mc_variance
    from evalkit.estimators import get

    gen = torch.Generator().manual_seed(3)
    la, lb = torch.randn(6, 50, generator=gen, dtype=F64), torch.randn(6, 50, generator=gen, dtype=F64) * 0.5
    for name in ("iwae", "elbo", "jvi1"):
        est = get(name)
        va, vb = np.asarray(est.mc_variance(la)), np.asarray(est.mc_variance(lb))
        assert np.allclose(difference_mc_variance(la, lb, est, va, vb, common=False), va + vb)
        # Against a copy of itself: the covariance cancels the two variances exactly.
        assert np.all(difference_mc_variance(la, la.clone(), est, va, va, common=True) == 0)
        # Common streams: against brute force, the jackknife over the K paired columns of the
        # IWAE difference (JVI's leading variance term is IWAE's), or the ELBO's exact variance.
        if name == "elbo":
            brute = (la - lb).numpy().var(axis=1, ddof=1) / la.shape[1]
        else:
            k = la.shape[1]
            keep = [[j for j in range(k) if j != i] for i in range(k)]
            t = np.stack([(evalkit.estimators.iwae(la[:, c]) - evalkit.estimators.iwae(lb[:, c])).numpy()
                          for c in keep], axis=1)
            brute = (k - 1) / k * ((t - t.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
        assert np.allclose(difference_mc_variance(la, lb, est, va, vb, common=True), brute, rtol=1e-10)
    # One dominant weight: the leave-one-out sums are taken directly, not as S - w_max.
    spike = torch.full((1, 40), -60.0, dtype=F64)
    spike[0, 3] = 0.0
    value = difference_mc_variance(spike, torch.zeros_like(spike), get("iwae"), np.ones(1), np.ones(1), common=True)
    assert np.isfinite(value).all() and value[0] > 1.0


def _spread_and_reported(models, x, seeds, estimator="iwae"):
    """Differences over seeds (data fixed), and the mean reported se_mc."""
    values, reported = [], []
    for seed in seeds:
        r = _quiet(evalkit.compare, models, x, k=30, estimators=(estimator,), seed=seed, names=["A", "B"], **FAST)
        row = r.pairs.iloc[0]
        values.append(row.difference)
        reported.append(row.se_mc)
    return np.std(values, ddof=1), float(np.sqrt(np.mean(np.square(reported))))


@pytest.mark.slow
@pytest.mark.parametrize("latent_b", [2, 3], ids=["common-random-numbers", "independent-streams"])
def test_se_mc_matches_the_spread_of_the_difference_over_seeds(latent_b):
    a, b = _models(latent_b)
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(1), dtype=F64) * 1.5
    seeds = range(300)
    spread, reported = _spread_and_reported([a, b], x, seeds)
    ratio = spread / reported
    print(f"se_mc check ({'common' if latent_b == 2 else 'independent'}): spread over {len(seeds)} seeds "
          f"{spread:.5f}, reported se_mc {reported:.5f}, ratio {ratio:.3f}")
    # sd over 300 seeds has relative SE 1/sqrt(598) = 4%; the delta method at K = 30 adds a little.
    assert 0.85 < ratio < 1.15
    if latent_b == 2:  # common random numbers shrink the MC error of the difference
        alone = [math.hypot(*[_quiet(evalkit.estimate, m, x, k=30, estimators=("iwae",), **FAST).summary.se_mc[0]
                              for m in (a, b)])]
        assert reported < 0.9 * alone[0]


@pytest.mark.slow
def test_total_se_covers_the_exact_population_difference():
    """200+ seeded comparisons, fresh data from a known Gaussian each time: the 95% interval
    d +- 1.96 se_total should cover E_x[log p_A(x) - log p_B(x)] 95% of the time."""
    a, b = _models()
    truth_model = LinearGaussianModel.random(4, 2, seed=13).marginal()
    mean, cov = truth_model.loc.to(F64), truth_model.covariance_matrix.to(F64)
    truth = _expected_log_density(a, mean, cov) - _expected_log_density(b, mean, cov)
    reps, covered, z_values = 240, 0, []
    for rep in range(reps):
        gen = torch.Generator().manual_seed(1000 + rep)
        x = mean + torch.randn(30, 4, generator=gen, dtype=F64) @ torch.linalg.cholesky(cov).T
        row = _quiet(evalkit.compare, [a, b], x, k=30, estimators=("iwae",), seed=rep, **FAST).pairs.iloc[0]
        z_values.append((row.difference - truth) / row.se_total)
        covered += abs(row.difference - truth) <= 1.96 * row.se_total
    fraction = covered / reps
    binomial_se = math.sqrt(0.95 * 0.05 / reps)
    print(f"coverage of d +- 1.96 se_total: {fraction:.3f} (binomial SE {binomial_se:.3f}) over {reps} "
          f"comparisons; true difference {truth:.4f}; mean z {np.mean(z_values):.3f}, sd z {np.std(z_values):.3f}")
    assert abs(fraction - 0.95) < 3.5 * binomial_se


def test_models_that_need_different_data_are_refused():
    a, _ = _models()
    wider = _imperfect(LinearGaussianModel.random(5, 2, seed=3), seed=3)
    x = torch.randn(10, 4, dtype=F64)
    with pytest.raises(InputError, match=r"^model 'LinearGaussianModel \(2\)' cannot take this data: "):
        evalkit.compare([a, wider], x, k=10, **FAST)
    binary = evalkit.load_model("examples/digits_iwae.pt")
    with pytest.raises(InputError, match="cannot take this data"):
        evalkit.compare([binary, a], x, k=10, **FAST)


@pytest.mark.parametrize("models, kwargs, message", [
    ("one", {}, "at least two models"),
    ("a", {}, "at least two models"),
    ("ab", {"names": ["A"]}, "one non-empty string per model"),
    ("ab", {"names": ["A", "A"]}, "names must be distinct"),
    ("ab", {"k": 0}, "k must be a positive integer"),
    ("ab", {"estimators": ("iwea",)}, "unknown estimator"),
    ("ab", {"k": 2, "estimators": ("jvi2",)}, "needs at least 3 samples"),
])
def test_bad_inputs_are_one_sentence(pair, models, kwargs, message):
    a, b, x = pair
    given = {"one": a, "a": [a], "ab": [a, b]}[models]
    with pytest.raises(InputError, match=message):
        evalkit.compare(given, x, **{"k": 10, **kwargs}, **FAST)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, pair):
    a, b, x = pair
    root = tmp_path_factory.mktemp("compare")
    evalkit.save_model(a, root / "a.pt")
    evalkit.save_model(b, root / "b.pt")
    np.save(root / "x.npy", x.numpy())
    return root


def test_cli_gives_the_api_result(checkpoints):
    root = checkpoints
    args = [str(root / "a.pt"), str(root / "b.pt"), "--data", str(root / "x.npy"), "-k", "40", "-e", "iwae",
            "-e", "jvi2", "--name", "A", "--name", "B", "--dtype", "float64", "--seed", "3", "-q",
            "--format", "json", "--per-example", str(root / "per.csv")]
    run = CliRunner().invoke(main, ["compare"] + args)
    assert run.exit_code == 0, run.output
    doc = json.loads(run.stdout)
    api = _quiet(evalkit.compare, [str(root / "a.pt"), str(root / "b.pt")], str(root / "x.npy"), k=40,
                 estimators=("iwae", "jvi2"), names=["A", "B"], seed=3, dtype=F64, progress=False)
    expected = json.loads(api.to_json())
    assert doc["pairs"] == expected["pairs"] and doc["models"] == expected["models"]
    assert set(doc) == {"schema_version", "metadata", "models", "pairs"}
    assert set(doc["pairs"][0]) >= {"model_a", "model_b", "estimator", "difference", "se_paired", "se_mc", "z",
                                    "p_value", "n"}
    # The paired SE by hand from --per-example.
    import pandas as pd

    per = pd.read_csv(root / "per.csv")
    d = per["iwae[A]"] - per["iwae[B]"]
    assert doc["pairs"][0]["se_paired"] == pytest.approx(d.std(ddof=1) / math.sqrt(len(d)), rel=1e-12)


@pytest.mark.parametrize("fmt, needle", [("md", "| model"), ("tex", r"\textbf{"), ("csv", "model_a,model_b"),
                                         ("table", "paired differences")])
def test_cli_formats_and_report(checkpoints, tmp_path, fmt, needle):
    root = checkpoints
    out = tmp_path / "out"
    args = ["compare", str(root / "a.pt"), str(root / "b.pt"), "--data", str(root / "x.npy"), "-k", "20", "-q",
            "--format", fmt, "-o", str(out)]
    if fmt == "table":
        args += ["--report", str(tmp_path / "report")]
    run = CliRunner().invoke(main, args)
    assert run.exit_code == 0, run.output
    assert needle in out.read_text()
    if fmt == "table":
        text = (tmp_path / "report" / "report.md").read_text()
        assert "## Findings" in text and ("better than" in text or "no significant difference" in text)
        assert (tmp_path / "report" / "figures" / "compare.png").stat().st_size > 1000
        assert (tmp_path / "report" / "report.html").exists()


def test_cli_errors_are_one_line(checkpoints):
    root = checkpoints
    one = CliRunner().invoke(main, ["compare", str(root / "a.pt"), "--data", str(root / "x.npy")])
    assert one.exit_code == 2 and "at least two checkpoints" in one.output
    names = CliRunner().invoke(main, ["compare", str(root / "a.pt"), str(root / "b.pt"), "--data",
                                      str(root / "x.npy"), "--name", "A", "-q"])
    assert names.exit_code == 1
    assert names.output.strip().splitlines() == [
        "Error: names must be one non-empty string per model (2 models), got ['A']"]
    digits = CliRunner().invoke(main, ["compare", "examples/digits_iwae.pt", str(root / "a.pt"), "-k", "5", "-q"])
    assert digits.exit_code == 1 and len(digits.output.strip().splitlines()) == 1
    assert "cannot take this data" in digits.output


def test_plot_compare_returns_a_figure(pair):
    a, b, x = pair
    result = _quiet(evalkit.compare, [a, b, _imperfect(LinearGaussianModel.random(4, 3, seed=4), seed=4)], x, k=20,
                    names=["A", "B", "C"], **FAST)
    from evalkit.plots import plot_compare

    fig = plot_compare(result)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) >= 3
    assert result.metadata["models"][2]["seed"] == 1  # another noise shape: its own, independent streams
    assert [p["common"] for p in result.metadata["common_random_numbers"]] == [True, False, False]


@pytest.mark.slow
def test_under_torchrun_and_through_a_cache_the_pairs_are_bitwise_one_process(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    args = ["compare", str(repo / "examples" / "digits_iwae.pt"), str(repo / "examples" / "digits_iwae_small.pt"),
            "--binarize", "bernoulli", "-k", "50", "-e", "iwae", "-e", "elbo", "--format", "csv", "-q"]
    # --standalone picks a free port: other runs may use torchrun at the same time.
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "evalkit", *args], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    one = subprocess.run([sys.executable, "-m", "evalkit", *args], cwd=tmp_path, capture_output=True, text=True,
                         env=env, timeout=300)
    cached = [subprocess.run([sys.executable, "-m", "evalkit", *args, "--cache", str(tmp_path / "cache")],
                             cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300) for _ in range(2)]
    assert two.returncode == 0 and one.returncode == 0, two.stderr + one.stderr
    assert two.stdout.count("model_a,model_b") == 1 and two.stdout == one.stdout
    assert [run.stdout for run in cached] == [one.stdout, one.stdout]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["0-digits_iwae", "1-digits_iwae_small"]


def test_log_weight_matrices_compare_as_independent_columns():
    gen = torch.Generator().manual_seed(8)
    la = torch.randn(25, 30, generator=gen, dtype=F64)
    lb = la + 0.3 + 0.1 * torch.randn(25, 30, generator=gen, dtype=F64)
    result = _quiet(evalkit.compare, [la, lb], k=30, estimators=("iwae",), names=["A", "B"])
    row = result.difference("A", "B", "iwae")
    d = (evalkit.estimators.iwae(la) - evalkit.estimators.iwae(lb)).numpy()
    assert row["difference"] == pytest.approx(d.mean(), rel=1e-12)
    # How a matrix's columns were drawn is unknown: no covariance is assumed, the variances add.
    var = evalkit.estimators.iwae_mc_variance(la).numpy() + evalkit.estimators.iwae_mc_variance(lb).numpy()
    assert row["se_mc"] == pytest.approx(math.sqrt(var.sum()) / 25, rel=1e-12)
    assert result.metadata["common_random_numbers"][0]["common"] is False


def test_compare_output_never_replaces_a_compared_model(tmp_path):
    import shutil

    model = tmp_path / "a.pt"
    shutil.copy("examples/digits_iwae.pt", model)
    before = model.read_bytes()
    run = CliRunner().invoke(main, ["compare", str(model), "examples/digits_iwae_small.pt", "--binarize", "bernoulli",
                                    "-k", "5", "-o", str(model), "--overwrite", "-q"])
    assert run.exit_code == 1 and "is the same file as the checkpoint" in run.output
    assert model.read_bytes() == before
