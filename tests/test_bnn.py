"""Bayes-by-backprop networks: checkpoints, priors, batching invariance, labelled data, bad inputs.

The oracle tests of the numbers are in tests/test_bnn_oracle.py.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import evalkit
from evalkit.models.checkpoints import detect_checkpoint_kind
from evalkit.data import digits_split, load_data, load_labelled_data
from evalkit.errors import DataError
from evalkit.models import BUILTIN_MODELS, BayesianMLP
from evalkit.models.bnn import config_from_bbb_state_dict, is_bbb_layout
from evalkit.models.bnn_priors import GaussianPrior, ScaleMixturePrior, log_softplus_scale, softplus_scale
from evalkit.sampling.bnn_weights import evidence_log_weights, predictive_log_likelihoods, weight_noise
from evalkit.estimators.shared_columns import shared_column_mc_se

ROOT = Path(__file__).resolve().parent.parent


class Gaussian(nn.Module):
    """One layer of the widely copied code: exactly the keys weight_mu/rho, bias_mu/rho."""

    def __init__(self, n_in, n_out, generator):
        super().__init__()
        self.weight_mu = nn.Parameter(torch.randn(n_out, n_in, generator=generator, dtype=torch.float64) * 0.3)
        self.weight_rho = nn.Parameter(torch.randn(n_out, n_in, generator=generator, dtype=torch.float64) - 3)
        self.bias_mu = nn.Parameter(torch.randn(n_out, generator=generator, dtype=torch.float64) * 0.3)
        self.bias_rho = nn.Parameter(torch.randn(n_out, generator=generator, dtype=torch.float64) - 3)

    def forward(self, x, eps_w, eps_b):
        sigma_w, sigma_b = torch.log1p(torch.exp(self.weight_rho)), torch.log1p(torch.exp(self.bias_rho))
        return x @ (self.weight_mu + sigma_w * eps_w).T + self.bias_mu + sigma_b * eps_b


class ReferenceBNN(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.l1, self.l2, self.l3 = Gaussian(6, 5, g), Gaussian(5, 4, g), Gaussian(4, 3, g)

    def log_probs(self, x, eps, act=torch.relu):
        """log softmax of the network at weights mu + sigma * eps (eps laid out layer by layer)."""
        h, start = x, 0
        for i, layer in enumerate((self.l1, self.l2, self.l3)):
            n_w = layer.weight_mu.numel()
            n_b = layer.bias_mu.numel()
            eps_w = eps[start:start + n_w].view_as(layer.weight_mu)
            eps_b = eps[start + n_w:start + n_w + n_b]
            start += n_w + n_b
            h = layer(h, eps_w, eps_b)
            if i < 2:
                h = act(h)
        return torch.log_softmax(h, dim=1)


def test_common_layout_checkpoint_auto_loads_and_gives_the_direct_log_likelihoods(tmp_path):
    reference = ReferenceBNN()
    path = tmp_path / "bbb.pt"
    torch.save(reference.state_dict(), path)
    assert is_bbb_layout(list(reference.state_dict())) and detect_checkpoint_kind(path) == "bbb"
    model = evalkit.load_model(path)
    assert isinstance(model, BayesianMLP) and model.sizes == [6, 5, 4, 3] and model.activation == "relu"
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.arange(40) % 3
    got = predictive_log_likelihoods(model, x, y, k=25, seed=3)
    eps = weight_noise(3, 0, 25, model.n_params)
    with torch.no_grad():
        direct = torch.stack([reference.log_probs(x, eps[k]).gather(1, y[:, None])[:, 0] for k in range(25)], dim=1)
    torch.testing.assert_close(got, direct, rtol=0, atol=1e-12)
    tanh = evalkit.load_model(path, bnn_options={"activation": "tanh"})
    got = predictive_log_likelihoods(tanh, x, y, k=5, seed=3)
    with torch.no_grad():
        direct = torch.stack([reference.log_probs(x, eps[k], torch.tanh).gather(1, y[:, None])[:, 0] for k in range(5)], 1)
    torch.testing.assert_close(got, direct, rtol=0, atol=1e-12)


def test_layer_order_from_shapes_and_prior_options():
    state = {f"{name}.{p}": torch.zeros(shape if p.startswith("weight") else shape[:1])
             for name, shape in (("l10", (2, 4)), ("l2", (4, 3))) for p in ("weight_mu", "weight_rho", "bias_mu", "bias_rho")}
    config = config_from_bbb_state_dict(state, prior={"kind": "gaussian", "sigma": 0.5})
    assert config["sizes"] == [3, 4, 2] and config["prior"] == {"kind": "gaussian", "sigma": 0.5}
    assert not is_bbb_layout(list(state) + ["l2.extra"])


def test_save_and_load_round_trip_keeps_config_and_numbers(tmp_path):
    assert BUILTIN_MODELS["BayesianMLP"] is BayesianMLP
    torch.manual_seed(0)
    model = BayesianMLP([3, 4, 2], activation="tanh", likelihood="gaussian", noise_scale=0.3, prior=GaussianPrior(2.0))
    path = evalkit.save_model(model, tmp_path / "bnn.pt")
    loaded = evalkit.load_model(path)
    assert loaded.get_config() == model.get_config()
    x, y = torch.randn(10, 3), torch.randn(10, 2)
    assert torch.equal(evidence_log_weights(model, x, y, k=7), evidence_log_weights(loaded, x, y, k=7))


def test_priors_are_full_normalised_log_densities():
    w = torch.tensor([-3.0, -0.01, 0.0, 0.2, 5.0], dtype=torch.float64)
    pi, s1, s2 = 0.3, 1.5, math.exp(-6)

    def normal(v, s):
        return math.exp(-v * v / (2 * s * s)) / (s * math.sqrt(2 * math.pi))

    expected = [math.log(pi * normal(v, s1) + (1 - pi) * normal(v, s2)) for v in w.tolist()]
    torch.testing.assert_close(ScaleMixturePrior(pi, s1, s2).log_prob(w), torch.tensor(expected, dtype=torch.float64), rtol=1e-13, atol=0)
    torch.testing.assert_close(GaussianPrior(s1).log_prob(w), torch.tensor([math.log(normal(v, s1)) for v in w.tolist()], dtype=torch.float64))
    # Far tail of the mixture: the narrow component underflows in exp space, not in log space.
    assert torch.isfinite(ScaleMixturePrior(pi, s1, s2).log_prob(torch.tensor([40.0], dtype=torch.float64))).all()


def test_softplus_scale_is_accurate_everywhere():
    rho = torch.tensor([-800.0, -40.0, -1.0, 0.0, 3.0, 25.0, 700.0], dtype=torch.float64)
    sigma = softplus_scale(rho)
    assert sigma[-1] == 700.0 and sigma[5] == 25.0 + math.exp(-25.0)  # torch's softplus drops exp(-25) here
    assert sigma[1] == pytest.approx(math.exp(-40.0), rel=1e-15)
    torch.testing.assert_close(sigma[2:5], torch.log1p(torch.exp(rho[2:5])), rtol=1e-15, atol=0)
    log_sigma = log_softplus_scale(rho)
    assert log_sigma[0] == -800.0 and torch.isfinite(log_sigma).all()
    assert log_sigma[1] == pytest.approx(-40.0 - math.exp(-40.0) / 2, rel=1e-16)


@pytest.fixture(scope="module")
def float32_bnn():
    torch.manual_seed(0)
    model = BayesianMLP([64, 30, 10])
    with torch.no_grad():
        for layer in model.layers:
            layer.weight_rho.fill_(-2.0)
    x, y = load_labelled_data("digits", split="test")
    return model, x[:150], y[:150]


def test_predictive_is_bitwise_independent_of_batch_size_sample_chunk_and_subset(float32_bnn):
    model, x, y = float32_bnn
    reference = predictive_log_likelihoods(model, x, y, k=70, seed=2)
    for batch_size, chunk in ((32, 1), (64, 9), (96, 70), (512, 33)):
        assert torch.equal(predictive_log_likelihoods(model, x, y, k=70, seed=2, batch_size=batch_size, sample_chunk=chunk), reference)
    assert torch.equal(predictive_log_likelihoods(model, x[:64], y[:64], k=40, seed=2), reference[:64, :40])


def test_evidence_is_bitwise_independent_of_data_batch_and_sample_chunk(float32_bnn):
    model, x, y = float32_bnn
    reference = evidence_log_weights(model, x, y, k=30, seed=4)
    for data_batch, chunk in ((32, 1), (64, 7), (1024, 30)):
        assert torch.equal(evidence_log_weights(model, x, y, k=30, seed=4, data_batch=data_batch, sample_chunk=chunk), reference)
    # The ELBO terms are the same weight samples as the predictive's.
    noise = weight_noise(4, 0, 30, model.n_params)
    weights = model.weights_from_noise(noise)
    log_lik = predictive_log_likelihoods(model, x, y, k=30, seed=4).sum(0)
    torch.testing.assert_close(reference[0], log_lik + model.log_prior(weights) - model.log_q_from_noise(noise), rtol=1e-12, atol=1e-9)


def test_shared_column_se_of_a_mean_is_the_classical_formula():
    """For the ELBO (a mean), the jackknife over columns is exactly sd(column means) / sqrt(G)."""
    log_w = np.random.default_rng(0).normal(size=(7, 60))
    column_means = log_w.mean(0)
    assert shared_column_mc_se(log_w, "elbo") == pytest.approx(column_means.std(ddof=1) / math.sqrt(60), rel=1e-12)
    group_means = column_means.reshape(12, 5).mean(1)
    assert shared_column_mc_se(log_w, "elbo", groups=12) == pytest.approx(group_means.std(ddof=1) / math.sqrt(12), rel=1e-12)


def test_digits_labels_follow_the_digits_split():
    from sklearn.datasets import load_digits

    target = load_digits().target
    for split in ("train", "test"):
        x, y = load_labelled_data("digits", split=split)
        assert torch.equal(x, load_data("digits", split=split)) and y.dtype == torch.int64
        assert np.array_equal(y.numpy(), target[digits_split()[split]])


def test_files_with_targets(tmp_path):
    x, y = np.random.default_rng(0).random((5, 3)), np.array([0, 2, 1, 1, 0])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    torch.save({"x": torch.from_numpy(x), "label": torch.from_numpy(y)}, tmp_path / "d.pt")
    (tmp_path / "d.csv").write_text("a,b,label,c\n" + "".join(f"{r[0]},{r[1]},{t},{r[2]}\n" for r, t in zip(x, y)))
    for path, target in (("d.npz", None), ("d.pt", "label"), ("d.csv", "label")):
        got_x, got_y = load_labelled_data(tmp_path / path, target=target)
        np.testing.assert_allclose(got_x.numpy(), x.astype(np.float32), rtol=1e-6)
        assert got_y.dtype == torch.int64 and got_y.tolist() == y.tolist()


# ----------------------------------------------------------------------------------------------
# Bad inputs: one clear DataError each, listed in docs/errors.md (section "Labelled data and
# Bayesian networks"), same ids and order.


def _classifier():
    torch.manual_seed(0)
    return BayesianMLP([3, 4, 3])


def _write(tmp_path, name, **arrays):
    np.savez(tmp_path / name, **arrays)
    return tmp_path / name


def _run(tmp_path, path, target=None, model=None):
    x, y = load_labelled_data(path, target=target)
    predictive_log_likelihoods(model or _classifier(), x, y, k=2)


RNG = np.random.default_rng(0)
CASES = [
    ("targets-missing", lambda t: _run(t, _write(t, "x_only.npz", x=RNG.random((4, 3)))),
     "x_only.npz holds no targets (looked for keys ['y_test', 'y'], found ['x']); save the targets under 'y'."),
    ("csv-target-not-named", lambda t: (t / "d.csv").write_text("a,b,c,y\n1,2,3,0\n") and _run(t, t / "d.csv"),
     "d.csv is a CSV file; name its target column with target= (CLI: --target)."),
    ("csv-target-column-missing", lambda t: (t / "d.csv").write_text("a,b,c,y\n1,2,3,0\n") and _run(t, t / "d.csv", "label"),
     "d.csv has no column 'label' (columns: ['a', 'b', 'c', 'y']); name the target column with target=."),
    ("targets-count-mismatch", lambda t: _run(t, _write(t, "d.npz", x=RNG.random((4, 3)), y=np.array([0, 1, 2]))),
     "d.npz has 4 inputs but 3 targets; give one target per datapoint."),
    ("labels-out-of-range", lambda t: _run(t, _write(t, "d.npz", x=RNG.random((4, 3)), y=np.array([0, 3, 1, -1]))),
     "labels must be in 0..2 for this model's 3 classes, but rows [1, 3] (2 rows) hold [-1, 3]; use the labels the model was trained on."),
    ("labels-not-whole-numbers", lambda t: _run(t, _write(t, "d.npz", x=RNG.random((2, 3)), y=np.array([0.5, 1.0]))),
     "the class labels are not whole numbers; give integer labels 0..C-1 for a categorical model."),
    ("inputs-wrong-width", lambda t: _run(t, _write(t, "d.npz", x=RNG.random((4, 5)), y=np.array([0, 1, 2, 0]))),
     "the data have 5 values per datapoint but the model expects data_dim=3; load the dataset the model was trained on."),
    ("regression-targets-wrong-width",
     lambda t: _run(t, _write(t, "d.npz", x=RNG.random((4, 3)), y=RNG.random((4, 2))),
                    model=BayesianMLP([3, 1], likelihood="gaussian", noise_scale=1.0)),
     "Expected regression targets of shape (4,) for this model's 1 outputs, got (4, 2)."),
]


@pytest.mark.parametrize("case_id, run, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_error(tmp_path, case_id, run, message):
    with pytest.raises(DataError) as info:
        run(tmp_path)
    text = str(info.value).replace(str(tmp_path) + "/", "")
    assert text == message
    assert text.count("; ") <= 1 and "\n" not in text


def test_errors_table_lists_these_cases():
    text = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    section = text.split("## Labelled data and Bayesian networks", 1)[1].split("\n## ", 1)[0]
    ids = re.findall(r"^\|\s*L\d+\s*\|\s*`([a-z0-9-]+)`\s*\|", section, flags=re.M)
    assert ids == [case[0] for case in CASES]
    for case_id, _, message in CASES:
        row = next(line for line in section.splitlines() if f"`{case_id}`" in line)
        assert message in row.replace("\\|", "|"), case_id
