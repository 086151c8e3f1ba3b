"""Bayes-by-backprop state_dicts of blitz-bayesian-pytorch and bayesian-torch, each with its own prior.

Issue 24 item 5. The fixtures are built by hand (neither library is installed here) with exactly
the keys the real modules write, checked against their sources:

* blitz-bayesian-pytorch (github.com/piEsposito/blitz-bayesian-deep-learning, commit 5af1174):
  ``blitz/modules/linear_bayesian_layer.py`` -- ``BayesianLinear`` registers ``weight_mu``,
  ``weight_rho``, then ``weight_sampler = TrainableRandomDistribution(weight_mu, weight_rho)``,
  ``bias_mu``, ``bias_rho``, ``bias_sampler``; defaults ``prior_sigma_1 = 0.1``, ``prior_pi = 1``.
  ``blitz/modules/weight_sampler.py`` -- ``TrainableRandomDistribution`` holds ``mu``, ``rho``
  (``nn.Parameter`` of the same tensors) and the buffer ``eps_w``; ``PriorWeightDistribution``
  holds no tensors and its ``log_prior`` is ``(log(pi N1 + (1 - pi) N2 + 1e-6) - 0.5).sum()``.
* bayesian-torch (github.com/IntelLabs/bayesian-torch, commit aa7e57b):
  ``bayesian_torch/layers/variational_layers/linear_variational.py`` -- ``LinearReparameterization``
  has ``mu_weight``, ``rho_weight``, ``mu_bias``, ``rho_bias`` and the buffers ``eps_weight``,
  ``prior_weight_mu``, ``prior_weight_sigma``, ``eps_bias``, ``prior_bias_mu``,
  ``prior_bias_sigma``, non-persistent since commit 09b8d0a (July 2021; persistent before, so
  older files carry them); defaults ``prior_mean = 0``, ``prior_variance = 1``, the latter filled
  into ``prior_weight_sigma`` and used as a standard deviation by ``kl_div`` in
  ``bayesian_torch/layers/base_variational_layer.py``. sigma = log1p(exp(rho)) in both.

The oracle is Bayesian linear regression (:mod:`tests.bnn_oracle_helpers`): per weight sample the
evidence log-weight ``log p(D|w) + log P(w) - log q(w)`` has a brute-force closed form.
"""
import json
import math
import sys
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.distributions import Normal

import evalkit
from bnn_oracle_helpers import make_problem
from evalkit_cli.main import main
from evalkit.errors import CheckpointError
from evalkit.models.bnn import BayesianMLP, GaussianPrior, ScaleMixturePrior
from evalkit.models.checkpoints import detect_checkpoint_kind, load_model
from evalkit.sampling.bnn_weights import evidence_log_weights, predictive_log_likelihoods, weight_noise

pytestmark = pytest.mark.filterwarnings("ignore::evalkit.errors.WeightWarning")  # few samples on purpose


def _layers(sizes, seed):
    generator = torch.Generator().manual_seed(seed)
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        yield i, (torch.randn(n_out, n_in, generator=generator) * 0.3, torch.randn(n_out, n_in, generator=generator) * 0.1 - 4,
                  torch.randn(n_out, generator=generator) * 0.3, torch.randn(n_out, generator=generator) * 0.1 - 4)


def blitz_state_dict(sizes, seed=0):
    """What ``nn.Sequential``-free blitz networks with ``blinear1, blinear2, ...`` BayesianLinear layers save."""
    out = {}
    for i, (w_mu, w_rho, b_mu, b_rho) in _layers(sizes, seed):
        name = f"blinear{i + 1}"
        # own parameters first, then the child modules (state_dict order), copies sharing storage
        out.update({f"{name}.weight_mu": w_mu, f"{name}.weight_rho": w_rho, f"{name}.bias_mu": b_mu, f"{name}.bias_rho": b_rho,
                    f"{name}.weight_sampler.mu": w_mu, f"{name}.weight_sampler.rho": w_rho,
                    f"{name}.weight_sampler.eps_w": torch.randn_like(w_mu),
                    f"{name}.bias_sampler.mu": b_mu, f"{name}.bias_sampler.rho": b_rho,
                    f"{name}.bias_sampler.eps_w": torch.randn_like(b_mu)})
    return out


def bayesian_torch_state_dict(sizes, seed=0, buffers=None):
    """``fc1, fc2, ...`` LinearReparameterization layers; ``buffers=(mean, sigma)`` adds the pre-2021 persistent buffers."""
    out = {}
    for i, (w_mu, w_rho, b_mu, b_rho) in _layers(sizes, seed):
        name = f"fc{i + 1}"
        out.update({f"{name}.mu_weight": w_mu, f"{name}.rho_weight": w_rho, f"{name}.mu_bias": b_mu, f"{name}.rho_bias": b_rho})
        if buffers is not None:
            mean, sigma = buffers
            out.update({f"{name}.eps_weight": torch.randn_like(w_mu), f"{name}.prior_weight_mu": torch.full_like(w_mu, mean),
                        f"{name}.prior_weight_sigma": torch.full_like(w_mu, sigma), f"{name}.eps_bias": torch.randn_like(b_mu),
                        f"{name}.prior_bias_mu": torch.full_like(b_mu, mean), f"{name}.prior_bias_sigma": torch.full_like(b_mu, sigma)})
    return out


def all_weights(model, seed, k):
    """The K weight samples as one row each, ``[K, n_params]`` (weight row-major then bias, layer by layer)."""
    with torch.no_grad():
        weights = model.weights_from_noise(weight_noise(seed, 0, k, model.n_params))
    return weights, torch.cat([torch.cat([w.flatten(1), b], 1) for w, b in weights], 1)


@pytest.mark.parametrize("build,kind", [(blitz_state_dict, "blitz"), (bayesian_torch_state_dict, "bayesian_torch"),
                                        (lambda sizes: bayesian_torch_state_dict(sizes, buffers=(0.0, 1.0)), "bayesian_torch")])
def test_library_layouts_are_detected_and_load_their_weights(tmp_path, build, kind):
    state = build([6, 5, 3])
    path = tmp_path / "net.pt"
    torch.save(state, path)
    assert detect_checkpoint_kind(path) == kind
    model = load_model(path)
    assert isinstance(model, BayesianMLP) and model.sizes == [6, 5, 3] and model.activation == "relu"
    own = "weight_mu" if kind == "blitz" else "mu_weight"
    first = "blinear1" if kind == "blitz" else "fc1"
    assert torch.equal(model.layers[0].weight_mu, state[f"{first}.{own}"])


@pytest.mark.parametrize("build,sigma,mean", [
    (blitz_state_dict, 0.1, 0.0),
    (bayesian_torch_state_dict, 1.0, 0.0),
    (lambda sizes: bayesian_torch_state_dict(sizes, buffers=(0.25, 0.5)), 0.5, 0.25),
])
def test_each_library_gets_its_own_prior_and_the_log_prior_is_the_sum_of_normal_log_densities(tmp_path, build, sigma, mean):
    expected = GaussianPrior(sigma, mean=mean)
    path = tmp_path / "net.pt"
    torch.save(build([6, 5, 3]), path)
    model = load_model(path)
    assert model.prior == expected
    weights, flat = all_weights(model, seed=3, k=7)
    truth = Normal(torch.tensor(expected.mean, dtype=torch.float64), expected.sigma).log_prob(flat.double()).sum(1)
    assert torch.allclose(model.log_prior(weights), truth, rtol=0, atol=1e-9)


def _regression_file(tmp_path, layout, problem):
    """The oracle problem's q saved in a library layout (one layer: ``[D] -> 1``)."""
    net = problem.model()
    layer = net.layers[0]
    p = {"weight_mu": layer.weight_mu, "weight_rho": layer.weight_rho, "bias_mu": layer.bias_mu, "bias_rho": layer.bias_rho}
    p = {key: value.detach().clone() for key, value in p.items()}
    if layout == "blitz":
        state = {f"blinear1.{key}": value for key, value in p.items()}
        state.update({"blinear1.weight_sampler.mu": p["weight_mu"], "blinear1.weight_sampler.rho": p["weight_rho"],
                      "blinear1.weight_sampler.eps_w": torch.zeros_like(p["weight_mu"]),
                      "blinear1.bias_sampler.mu": p["bias_mu"], "blinear1.bias_sampler.rho": p["bias_rho"],
                      "blinear1.bias_sampler.eps_w": torch.zeros_like(p["bias_mu"])})
    else:
        state = {"fc1.mu_weight": p["weight_mu"], "fc1.rho_weight": p["weight_rho"], "fc1.mu_bias": p["bias_mu"],
                 "fc1.rho_bias": p["bias_rho"]}
    path = tmp_path / f"{layout}.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("layout,prior_sigma", [("bayesian_torch", 1.0), ("blitz", 0.1)])
def test_evidence_log_weights_match_the_closed_form_under_the_librarys_prior(tmp_path, layout, prior_sigma):
    problem = make_problem(n=12, d=2, seed=1)
    problem.a = prior_sigma  # the prior the library trained with
    path = _regression_file(tmp_path, layout, problem)
    model = load_model(path, bnn_options={"likelihood": "gaussian", "noise_scale": problem.s})
    x, y, _, _ = problem.tensors()
    k = 400
    log_w = evidence_log_weights(model, x, y, k=k, seed=5)[0]
    _, flat = all_weights(model, seed=5, k=k)
    truth = torch.from_numpy(problem.evidence_log_weights(flat.numpy()))
    assert torch.allclose(log_w, truth, rtol=0, atol=1e-8)
    # The ELBO (mean log-weight) covers the exact expectation; under the scale mixture that main
    # assumed for such files it is off by far more than its standard error.
    elbo, se = float(log_w.mean()), float(log_w.std() / math.sqrt(k))
    assert abs(elbo - problem.elbo()) < 4 * se
    mixture = {"kind": "scale_mixture", "pi": 0.5, "sigma1": 1.0, "sigma2": math.exp(-6)}
    assumed = load_model(path, bnn_options={"likelihood": "gaussian", "noise_scale": problem.s, "prior": mixture})
    assert abs(float(evidence_log_weights(assumed, x, y, k=k, seed=5).mean()) - problem.elbo()) > 10 * se


def test_prior_override_changes_the_evidence_by_exactly_the_log_prior_difference_and_not_the_predictive(tmp_path):
    path = tmp_path / "bt.pt"
    torch.save(bayesian_torch_state_dict([6, 5, 3]), path)
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    y = torch.arange(40) % 3
    default = evalkit.estimate(path, (x, y), k=50, quantity="evidence", estimators=["elbo"], keep_log_weights=True)
    other = evalkit.estimate(path, (x, y), k=50, quantity="evidence", estimators=["elbo"], keep_log_weights=True,
                             prior="gaussian:0.3")
    model = load_model(path)
    weights, _ = all_weights(model, seed=0, k=50)
    difference = GaussianPrior(0.3).log_prob(torch.cat([torch.cat([w.flatten(1), b], 1) for w, b in weights], 1)).sum(1) \
        - model.log_prior(weights)
    assert torch.allclose(other.log_weights[0] - default.log_weights[0], difference, rtol=0, atol=1e-8)
    assert "N(0, 1^2)" in default.metadata["prior"] and "bayesian-torch" in default.metadata["prior"]
    assert "N(0, 0.3^2)" in other.metadata["prior"] and "prior=" in other.metadata["prior"]
    assert "weight prior P(w): N(0, 1^2)" in default.to_table()
    pred_default = evalkit.estimate(path, (x, y), k=50, estimators=["iwae"], keep_log_weights=True)
    pred_other = evalkit.estimate(path, (x, y), k=50, estimators=["iwae"], keep_log_weights=True, prior="gaussian:0.3")
    assert torch.equal(pred_default.log_weights, pred_other.log_weights)


def test_activation_option_replaces_the_assumed_relu(tmp_path):
    state = blitz_state_dict([6, 5, 3])
    path = tmp_path / "blitz.pt"
    torch.save(state, path)
    x = torch.randn(30, 6, generator=torch.Generator().manual_seed(1))
    y = torch.arange(30) % 3
    tanh_model = load_model(path, bnn_options={"activation": "tanh"})
    expected = predictive_log_likelihoods(tanh_model, x, y, k=20, seed=0)
    got = evalkit.estimate(path, (x, y), k=20, estimators=["iwae"], keep_log_weights=True, activation="tanh")
    relu = evalkit.estimate(path, (x, y), k=20, estimators=["iwae"], keep_log_weights=True)
    assert torch.equal(got.log_weights, expected) and not torch.equal(relu.log_weights, expected)


def _labelled_file(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "labelled.npz"
    np.savez(data, x=rng.normal(size=(25, 6)).astype(np.float32), y=(np.arange(25) % 3).astype(np.int64))
    return data


def test_cli_prior_and_activation_and_json_name_the_prior(tmp_path):
    path = tmp_path / "bt.pt"
    torch.save(bayesian_torch_state_dict([6, 5, 3]), path)
    data = _labelled_file(tmp_path)
    args = ["estimate", str(path), "--data", str(data), "--split", "test", "-k", "30", "-e", "elbo", "--quantity", "evidence",
            "--format", "json", "-q"]
    plain = CliRunner().invoke(main, args)
    assert plain.exit_code == 0, plain.output
    meta = json.loads(plain.output)["metadata"]
    assert meta["prior"] == "N(0, 1^2) per weight (bayesian-torch's default: prior_mean = 0, prior_variance = 1)"
    given = CliRunner().invoke(main, args + ["--prior", "gaussian:0.3", "--activation", "tanh"])
    assert given.exit_code == 0, given.output
    api = evalkit.estimate(str(path), str(data), k=30, estimators=["elbo"], quantity="evidence", split="test", prior=GaussianPrior(0.3),
                           activation="tanh")
    assert json.loads(given.output)["estimates"][0]["estimate"] == pytest.approx(float(api.summary.estimate[0]), rel=1e-12)
    bad = CliRunner().invoke(main, args + ["--prior", "laplace:1"])
    assert bad.exit_code != 0 and "gaussian:SIGMA" in bad.output and "Traceback" not in bad.output


def test_model_option_accepts_evalkits_own_bayesian_mlp(tmp_path, monkeypatch):
    net = BayesianMLP([6, 5, 3], activation="tanh", prior=GaussianPrior(2.0))
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "my_bnn.py").write_text(textwrap.dedent("""
        from evalkit.models import BayesianMLP
        from evalkit.models.bnn import GaussianPrior

        def build():
            return BayesianMLP([6, 5, 3], activation="tanh", prior=GaussianPrior(2.0))
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_bnn", None)
    model = load_model(tmp_path / "weights.pt", factory="my_bnn:build")
    assert isinstance(model, BayesianMLP) and model.prior == GaussianPrior(2.0) and model.activation == "tanh"
    assert torch.equal(model.layers[1].weight_mu, net.layers[1].weight_mu)
    data = _labelled_file(tmp_path)
    result = CliRunner().invoke(main, ["estimate", "weights.pt", "--model", "my_bnn:build", "--data", str(data), "-k", "10",
                                       "-e", "iwae", "--quantity", "evidence", "--split", "test", "--format", "json", "-q"])
    assert result.exit_code == 0, result.output
    assert "N(0, 2^2)" in json.loads(result.output)["metadata"]["prior"]
    # a library layout through a BayesianMLP factory: the keys are renamed to the network's
    torch.save(blitz_state_dict([6, 5, 3]), tmp_path / "blitz.pt")
    assert load_model(tmp_path / "blitz.pt", factory="my_bnn:build").prior == GaussianPrior(2.0)


def test_unrecognised_state_dict_names_the_conversion_in_docs():
    state = {"fc1.w_mean": torch.zeros(3, 2), "fc1.w_logvar": torch.zeros(3, 2)}
    from evalkit.models.checkpoint_formats import _Checkpoint  # noqa: F401 -- the message is load_model's
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    import tempfile, pathlib

    with tempfile.TemporaryDirectory() as directory:
        path = pathlib.Path(directory) / "other.pt"
        path.write_bytes(buffer.getvalue())
        with pytest.raises(CheckpointError, match=r"docs/bnn\.md"):
            load_model(path)


def test_damaged_library_files_are_refused(tmp_path):
    state = blitz_state_dict([6, 5, 3])
    state["blinear2.weight_sampler.mu"] = state["blinear2.weight_mu"] + 1
    torch.save(state, tmp_path / "blitz.pt")
    with pytest.raises(CheckpointError, match="weight_sampler.mu"):
        load_model(tmp_path / "blitz.pt")
    state = bayesian_torch_state_dict([6, 5, 3], buffers=(0.0, 1.0))
    state["fc2.prior_weight_sigma"] = torch.full_like(state["fc2.prior_weight_sigma"], 0.5)
    torch.save(state, tmp_path / "bt.pt")
    with pytest.raises(CheckpointError, match="--prior"):
        load_model(tmp_path / "bt.pt")
    assert load_model(tmp_path / "bt.pt", bnn_options={"prior": "gaussian:1"}).prior == GaussianPrior(1.0)


def test_bbb_layout_keeps_its_scale_mixture_default(tmp_path):
    net = BayesianMLP([6, 5, 3])
    torch.save({f"l{i + 1}.{key.split('.')[-1]}": value for i, layer in enumerate(net.layers)
                for key, value in layer.state_dict().items()}, tmp_path / "bbb.pt")
    model = load_model(tmp_path / "bbb.pt")
    assert model.prior == ScaleMixturePrior(0.5, 1.0, math.exp(-6))
