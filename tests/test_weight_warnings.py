"""Diagnostics never silently dropped: the k-hat warning on stderr for every format, in the CSV,
and as one filterable Python warning class (evalkit.errors.WeightWarning) from estimate() and sweep()."""
import io
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import evalkit
from evalkit_cli.main import main
from evalkit.errors import WeightWarning
from evalkit.models import LinearGaussianModel


def _pareto_log_weights(n=40, k=400, shape=0.9, heavy=(3, 17), seed=0):
    """Light-tailed (lognormal, small sigma) rows, except rows ``heavy``: Pareto weights of tail index ``shape``."""
    rng = np.random.default_rng(seed)
    log_w = 0.1 * rng.standard_normal((n, k))
    for row in heavy:
        log_w[row] = np.log(rng.pareto(1 / shape, size=k) + 1.0)
    return torch.from_numpy(log_w)


def test_estimate_warns_with_one_class_naming_the_datapoints():
    with pytest.warns(WeightWarning) as caught:
        result = evalkit.estimate_from_log_weights(_pareto_log_weights(), ["iwae"])
    weight = [w for w in caught if issubclass(w.category, WeightWarning)]
    assert len(weight) == 1
    text = str(weight[0].message)
    assert "at 2 of 40 datapoints (3, 17)" in text and "improve the proposal" in text
    assert result.diagnostics["indices_khat_above_0.7"] == [3, 17]
    assert issubclass(WeightWarning, UserWarning)


def test_weight_warning_can_be_filtered_and_light_tails_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", WeightWarning)
        evalkit.estimate_from_log_weights(_pareto_log_weights(), ["iwae"])
        evalkit.estimate_from_log_weights(_pareto_log_weights(heavy=()), ["iwae"])  # nothing to say


def test_sweep_warns_with_the_same_class_and_words():
    log_w = _pareto_log_weights()
    with pytest.warns(WeightWarning) as caught:
        sweep = evalkit.sweep(log_w, ks=[1, 10, 100, 400], estimators=["iwae"], progress=False)
    with pytest.warns(WeightWarning) as caught_estimate:
        evalkit.estimate_from_log_weights(log_w, ["iwae"])
    sweep_text = [str(w.message) for w in caught if issubclass(w.category, WeightWarning)]
    estimate_text = [str(w.message) for w in caught_estimate if issubclass(w.category, WeightWarning)]
    assert sweep_text == estimate_text == [sweep.weights.warning]


def test_csv_carries_the_diagnostics():
    with pytest.warns(WeightWarning):
        result = evalkit.estimate_from_log_weights(_pareto_log_weights(), ["iwae", "elbo"])
    frame = pd.read_csv(io.StringIO(result.to_csv()))
    assert list(frame.columns[:6]) == ["estimator", "k", "estimate", "se_data", "se_mc", "n"]
    assert (frame["n_khat_above_0.7"] == 2).all()
    assert (frame["indices_khat_above_0.7"] == "3 17").all()
    assert frame["max_psis_khat"][0] == result.diagnostics["max_psis_khat"]
    assert frame["fraction_khat_above_0.7"][0] == pytest.approx(2 / 40)


@pytest.fixture
def heavy_checkpoint(tmp_path):
    # A proposal far narrower than the posterior: heavy-tailed importance weights everywhere.
    model = LinearGaussianModel.random(data_dim=4, latent_dim=2, seed=7)
    narrow = model.with_proposal(torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2, dtype=torch.float64),
                                 0.05 * torch.eye(2, dtype=torch.float64))
    path = tmp_path / "narrow.pt"
    evalkit.save_model(narrow, path)
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32))
    return path, data


@pytest.mark.parametrize("extra", [[], ["--format", "json"], ["--format", "csv"], ["-o", "out.json"],
                                   ["-o", "out.csv"]])
def test_cli_warning_on_stderr_for_every_format_and_destination(heavy_checkpoint, tmp_path, monkeypatch, extra):
    ckpt, data = heavy_checkpoint
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["estimate", str(ckpt), "--data", str(data), "-k", "200",
                                                       "-e", "iwae", *extra])
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("warning: PSIS k-hat > 0.5")]
    assert len(lines) == 1 and "improve the proposal" in lines[0]
    if "out.csv" in extra or "csv" in extra:
        body = (tmp_path / "out.csv").read_text() if "out.csv" in extra else result.stdout
        frame = pd.read_csv(io.StringIO(body))
        assert frame["n_khat_above_0.7"][0] > 0
    quiet = CliRunner().invoke(main, ["estimate", str(ckpt), "--data", str(data), "-k", "200",
                                                      "-e", "iwae", "--quiet", "--format", "json"])
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr
