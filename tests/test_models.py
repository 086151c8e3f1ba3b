"""Models: the protocol, the base class, built-in architectures, and the linear-Gaussian oracle.

Truths used here are independent of evalkit's code: the exact marginal of factor analysis,
torch's closed-form Gaussian KL (for E[ELBO] = log p(x) - KL), and the closed-form second
moment of Gaussian importance weights (for the IWAE bias -V / (2k) at large k).
"""
import math
import re
from pathlib import Path

import pytest
import torch
from torch.distributions import Gamma, Independent, Normal, kl_divergence

from evalkit.sampling.engine import log_weights
from evalkit.errors import InputError
from evalkit.models import IWAE, MLPVAE, EncoderDecoderModel, LinearGaussianModel, check_model
from evalkit.noise import draw_noise

SIZES = [(3, 1), (8, 3), (24, 6)]


@pytest.fixture(autouse=True, scope="module")
def one_intra_op_thread():
    """Same bits as with more threads (tests/test_engine.py) and no OpenMP stalls on a loaded machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)  # (data_dim, latent_dim): latent dim 1 and data dim >= 20 included


def imperfect(model: LinearGaussianModel, scale: float = 1.2, shift: float = 0.3) -> LinearGaussianModel:
    """The exact posterior widened by ``scale`` and shifted by ``shift`` posterior standard deviations."""
    weight, bias, scale_tril = model.exact_posterior_params()
    return model.with_proposal(weight, bias + shift * scale_tril.diagonal(), scale * scale_tril)


def log_second_moment(p, q) -> torch.Tensor:
    """log of int p(z)^2 / q(z) dz for Gaussians p = N(m_p, S_p), q = N(m_q, S_q) (batched)."""
    m_p, m_q = p.loc, q.loc
    s_p, s_q = p.covariance_matrix, q.covariance_matrix
    p_inv, q_inv = torch.linalg.inv(s_p), torch.linalg.inv(s_q)
    lam = 2 * p_inv - q_inv
    eta = 2 * (p_inv @ m_p.unsqueeze(-1)) - q_inv @ m_q.unsqueeze(-1)
    quad = lambda m, inv: (m.unsqueeze(-2) @ inv @ m.unsqueeze(-1)).squeeze(-1).squeeze(-1)  # noqa: E731
    return (-torch.logdet(s_p) + 0.5 * torch.logdet(s_q) - 0.5 * torch.logdet(lam)
            + 0.5 * (eta.transpose(-1, -2) @ torch.linalg.solve(lam, eta)).squeeze(-1).squeeze(-1)
            - quad(m_p, p_inv) + 0.5 * quad(m_q, q_inv))


def test_log_second_moment_matches_one_dimensional_formula():
    p = torch.distributions.MultivariateNormal(torch.zeros(1, dtype=torch.float64), torch.eye(1, dtype=torch.float64))
    s = 1.3
    q = torch.distributions.MultivariateNormal(torch.zeros(1, dtype=torch.float64), s**2 * torch.eye(1, dtype=torch.float64))
    assert float(log_second_moment(p, q)) == pytest.approx(math.log(s / math.sqrt(2 - 1 / s**2)), rel=1e-12)


@pytest.mark.parametrize("data_dim,latent_dim", SIZES)
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-9), (torch.float32, 2e-3)])
def test_exact_posterior_gives_log_marginal_in_every_sample(data_dim, latent_dim, dtype, atol):
    torch.manual_seed(data_dim)
    model = LinearGaussianModel.random(data_dim, latent_dim, seed=data_dim)
    x = model.marginal().sample((20,))
    log_w = log_weights(model, x, 50, dtype=dtype, progress=False)
    assert torch.allclose(log_w, model.log_marginal(x)[:, None].expand_as(log_w), atol=atol, rtol=0)


def test_log_marginal_matches_explicit_gaussian_density():
    model = LinearGaussianModel.random(4, 2, seed=1)
    x = torch.randn(3, 4, dtype=torch.float64)
    covariance = model.weight @ model.weight.T + torch.diag(model.noise_variance)
    diff = x - model.bias
    maha = (diff @ torch.linalg.inv(covariance) * diff).sum(-1)
    expected = -0.5 * (maha + torch.logdet(covariance) + 4 * math.log(2 * math.pi))
    assert torch.allclose(model.log_marginal(x), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("data_dim,latent_dim", SIZES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_iwae_per_datapoint_within_4_mc_se_of_exact_log_marginal(data_dim, latent_dim, dtype):
    """Imperfect q, k = 2000: the IWAE bias (~V/2k, V = Var(w)/E[w]^2 < 2 here) is ~1 % of the SE."""
    torch.manual_seed(100 + data_dim)
    exact_q = LinearGaussianModel.random(data_dim, latent_dim, seed=data_dim)
    model = imperfect(exact_q)
    x = model.marginal().sample((20,))
    k = 2000
    log_w = log_weights(model, x, k, seed=3, dtype=dtype, progress=False)
    iwae = torch.logsumexp(log_w, dim=1) - math.log(k)
    weights = torch.exp(log_w - log_w.max(dim=1, keepdim=True).values)
    se = weights.std(dim=1) / (weights.mean(dim=1) * math.sqrt(k))  # delta method
    z_scores = (iwae - model.log_marginal(x)) / se
    assert z_scores.abs().max() < 4, z_scores
    assert se.max() < 0.1  # the check is not vacuous


@pytest.mark.slow
def test_dataset_mean_converges_to_exact_value_as_k_grows():
    """One pool of 1000 samples per datapoint, disjoint groups of k columns for k = 1, 10, 100, 1000.

    Gap(k) = mean_n [log p(x_n) - IWAE_k(x_n)]. Exact expectations: Gap(1) = mean KL(q || p(z|x));
    Gap(k) = mean V_n / (2k) + O(k^-2) with V_n = E_q[w^2] / p(x)^2 - 1 in closed form.
    """
    torch.manual_seed(7)
    model = imperfect(LinearGaussianModel.random(24, 6, seed=11), scale=1.25, shift=0.4)
    n_points, pool = 100, 1000
    x = model.marginal().sample((n_points,))
    log_w = log_weights(model, x, pool, seed=5, dtype=torch.float64, progress=False)
    log_p = model.log_marginal(x)
    q = torch.distributions.MultivariateNormal(
        x @ model.proposal_weight.T + model.proposal_bias, scale_tril=model.proposal_scale_tril
    )
    posterior = model.posterior(x)
    kl = kl_divergence(q, posterior)
    v = torch.expm1(log_second_moment(posterior, q))
    gaps, ses = {}, {}
    for k in (1, 10, 100, 1000):
        groups = log_w.reshape(n_points, pool // k, k)
        gap = log_p[:, None] - (torch.logsumexp(groups, dim=2) - math.log(k))  # [N, groups]
        gaps[k] = float(gap.mean())
        ses[k] = float(gap.std() / math.sqrt(gap.numel()))
    assert abs(gaps[1] - float(kl.mean())) < 4 * ses[1]
    for k in (100, 1000):
        assert abs(gaps[k] - float(v.mean()) / (2 * k)) < 4 * ses[k] + float((v**2).mean()) / k**2
    assert gaps[1] > gaps[10] > gaps[100] > gaps[1000] - 4 * ses[1000]
    assert gaps[1] - gaps[10] > 4 * (ses[1] + ses[10]) and gaps[10] - gaps[100] > 4 * (ses[10] + ses[100])
    assert abs(gaps[1000]) < 4 * ses[1000] + float(v.mean()) / 2000


def test_mlpvae_log_weights_match_hand_formulas():
    torch.manual_seed(0)
    for likelihood in ("bernoulli", "gaussian"):
        model = MLPVAE(6, 2, (5, 4), likelihood=likelihood).double()
        x = torch.bernoulli(torch.full((3, 6), 0.5, dtype=torch.float64))
        eps = torch.randn(3, 4, 2, dtype=torch.float64)
        h = torch.tanh(model.encoder[2](torch.tanh(model.encoder[0](x))))
        mu, sigma = model.encoder_loc(h), model.encoder_log_scale(h).exp()
        z = mu[:, None] + sigma[:, None] * eps
        log_q = (-0.5 * eps**2 - sigma.log()[:, None] - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prior = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
        g = torch.tanh(model.decoder[2](torch.tanh(model.decoder[0](z))))
        if likelihood == "bernoulli":
            logits = model.decoder_loc(g)
            log_lik = (x[:, None] * torch.nn.functional.logsigmoid(logits)
                       + (1 - x[:, None]) * torch.nn.functional.logsigmoid(-logits)).sum(-1)
        else:
            loc, scale = model.decoder_loc(g), model.decoder_log_scale(g).exp()
            log_lik = (-0.5 * ((x[:, None] - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
        assert torch.allclose(model.log_weights(x, eps), log_lik + log_prior - log_q, atol=1e-12, rtol=0)
        assert model.requires_binary_data == (likelihood == "bernoulli")


def test_burda_architectures_have_the_paper_sizes():
    one, two = IWAE.burda_one_layer(), IWAE.burda_two_layer()
    assert one.noise_shape == (50,) and two.noise_shape == (150,)
    assert one.encoder_h1.transform[0].weight.shape == (200, 784) and one.decoder_x[4].weight.shape == (784, 200)
    assert two.encoder_h2.transform[0].weight.shape == (100, 100) and two.encoder_h2.fc_mu.weight.shape == (50, 100)
    assert two.decoder_h1.transform[0].weight.shape == (100, 50) and two.decoder_h1.fc_mu.weight.shape == (100, 100)
    assert two.decoder_x[0].weight.shape == (200, 100)
    check_model(one)
    check_model(two)


def test_float64_combination_keeps_precision_of_terms():
    """A huge float32 log-likelihood does not swallow a small log p(z) - log q(z): terms add in float64."""

    class Offset(EncoderDecoderModel):
        def __init__(self):
            super().__init__()
            self.noise_shape, self.data_dim, self.requires_binary_data = (1,), 1, False

        def proposal(self, x):
            return Independent(Normal(x * 0, torch.full_like(x, 2.0)), 1)

        def prior(self):
            return Independent(Normal(torch.zeros(1), torch.ones(1)), 1)

        def likelihood(self, z):
            return Independent(Normal(z * 0 + 1e4, torch.ones_like(z)), 1)

    model = Offset()
    x = torch.zeros(2, 1)
    eps = torch.full((2, 3, 1), 0.1)
    out = model.log_weights(x, eps)
    log_lik = model.likelihood(2 * eps).log_prob(x.reshape(2, 1, 1))  # float32, about -5e7 (ulp 4)
    z = 0.2
    prior_minus_q = math.log(2) - 3 * z**2 / 8  # log N(z; 0, 1) - log N(z; 0, 2^2)
    assert out.dtype == torch.float64
    assert torch.allclose(out - log_lik.double(), torch.full_like(out, prior_minus_q), atol=1e-6, rtol=0)


def test_base_class_explains_missing_independent():
    class NoIndependent(EncoderDecoderModel):
        def __init__(self):
            super().__init__()
            self.noise_shape, self.data_dim, self.requires_binary_data = (2,), 3, False

        def proposal(self, x):
            return Normal(torch.zeros(x.shape[0], 2), torch.ones(x.shape[0], 2))

        def prior(self):
            return Independent(Normal(torch.zeros(2), torch.ones(2)), 1)

        def likelihood(self, z):
            return Independent(Normal(torch.zeros(*z.shape[:2], 3), 1.0), 1)

    with pytest.raises(InputError, match=r"batch shape \(4, 2\).*Independent"):
        NoIndependent().log_weights(torch.zeros(4, 3), torch.zeros(4, 5, 2))


def test_reparameterize_asks_for_an_override_for_other_families():
    class GammaProposal(EncoderDecoderModel):
        def __init__(self):
            super().__init__()
            self.noise_shape, self.data_dim, self.requires_binary_data = (2,), 2, False

        def proposal(self, x):
            return Independent(Gamma(torch.ones_like(x), torch.ones_like(x)), 1)

    with pytest.raises(InputError, match="override reparameterize"):
        GammaProposal().log_weights(torch.ones(3, 2), torch.zeros(3, 4, 2))


@pytest.mark.parametrize(
    "attribute,value,message",
    [("noise_shape", None, "noise_shape must be a tuple"), ("data_dim", 0, "data_dim must be a positive int"),
     ("requires_binary_data", None, "requires_binary_data must be True")],
)
def test_check_model_names_the_broken_attribute(attribute, value, message):
    model = MLPVAE(4, 2, (3,))
    setattr(model, attribute, value)
    with pytest.raises(InputError, match=message):
        check_model(model)


def test_check_model_rejects_non_modules():
    with pytest.raises(InputError, match="torch.nn.Module"):
        check_model(object())


def test_protocol_documentation_example_runs():
    """The complete minimal model of the README's model-protocol section runs; with q = prior, IWAE-2000 is close to exact.

    (docs/model-protocol.md holds the rules; the worked examples live in the README.)
    """
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = [block for block in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "class TinyGaussianModel" in block]
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102
    assert abs(namespace["mean_error"]) < 0.05 and namespace["max_error"] < 0.6


def test_draw_noise_is_what_the_model_sees():
    model = LinearGaussianModel.random(5, 2, seed=3)
    x = model.marginal().sample((32,))
    noise = draw_noise(9, range(32), 0, 40, model.noise_shape, dtype=torch.float64)
    direct = model.log_weights(x, noise)
    assert torch.equal(log_weights(model, x, 40, seed=9, dtype=torch.float64, progress=False), direct)
