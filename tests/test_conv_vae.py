"""ConvVAE through the engine: exact log p(x) (nats and bits per dimension) for models whose
latent does not matter, bitwise batching invariance for every decoder, checkpoints, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import logistic as scipy_logistic
from scipy.stats import norm

import evalkit
from evalkit import estimators
from evalkit.data import load_images
from evalkit.errors import DataError, InputError
from evalkit.models import ConvVAE
from evalkit.models.conv import DECODERS
from evalkit.units import bits_per_dim

LEVELS = 17
D = 64


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _digits(n: int) -> torch.Tensor:
    return load_images("digits")[:n].reshape(n, D)


def _independent_pixels(decoder: str, bias: list[float]) -> ConvVAE:
    """A ConvVAE whose q(z|x) is the prior N(0, I) and whose decoder ignores z: every pixel has
    the decoder parameters ``bias`` (one per output channel of the last layer)."""
    torch.manual_seed(0)
    model = ConvVAE((1, 8, 8), 3, (4, 8), decoder=decoder, levels=LEVELS).double()
    last = model.decoder[-1]
    with torch.no_grad():
        for head in (model.encoder_loc, model.encoder_log_scale):
            head.weight.zero_()
            head.bias.zero_()
        last.weight.zero_()
        last.bias.copy_(torch.tensor(bias, dtype=torch.float64))
    return model


def _check_exact(model: ConvVAE, x: torch.Tensor, exact: np.ndarray, dtype: torch.dtype, tol: float) -> None:
    log_w = evalkit.log_weights(model, x, 50, seed=0, dtype=dtype, progress=False)
    iwae = estimators.iwae(log_w).numpy()
    assert np.abs(iwae - exact).max() < tol
    assert np.abs(estimators.elbo(log_w).numpy() - exact).max() < tol  # every weight is p(x)
    assert abs(float(bits_per_dim(iwae.mean(), D)) - (-exact.mean() / (D * math.log(2)))) < tol / D


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.float32, 1e-3)], ids=["float64", "float32"])
def test_categorical_pixels_give_the_exact_log_likelihood(dtype, tol):
    logits = np.linspace(-2.0, 3.0, LEVELS) ** 2 / 3
    model = _independent_pixels("categorical", logits.tolist())
    x = _digits(40)
    log_pmf = logits - np.log(np.exp(logits).sum())
    exact = log_pmf[x.long().numpy()].sum(1)
    _check_exact(model, x, exact, dtype, tol)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.float32, 1e-3)], ids=["float64", "float32"])
def test_discretized_logistic_pixels_give_the_exact_log_likelihood(dtype, tol):
    loc, scale = -0.4, 0.35
    model = _independent_pixels("logistic", [loc, math.log(scale)])
    x = _digits(40)
    v = x.double().numpy()
    upper = np.where(v == LEVELS - 1, np.inf, (2 * v + 1) / (LEVELS - 1) - 1)
    lower = np.where(v == 0, -np.inf, (2 * v - 1) / (LEVELS - 1) - 1)
    mass = scipy_logistic.cdf(upper, loc, scale) - scipy_logistic.cdf(lower, loc, scale)
    _check_exact(model, x, np.log(mass).sum(1), dtype, tol)


def test_dequantized_gaussian_converges_to_the_bin_mass():
    """log w = sum_j log N((x_j + u_j)/L; m, s^2) - D log L with u uniform: the ELBO is the
    closed-form E_u (the quadratic's mean over the bin adds 1/(12 L^2)), IWAE tends to the log
    mass of the bins, sum_j log(Phi((x_j + 1)/L) - Phi(x_j / L)). Tolerances: 5 standard errors."""
    m, s, n, k = 0.3, 0.3, 24, 2000
    model = _independent_pixels("dequantized_gaussian", [m, math.log(s)])
    x = _digits(n)
    v = x.double().numpy()
    centre = (v + 0.5) / LEVELS
    expected_elbo = (-0.5 * math.log(2 * math.pi * s * s) - ((centre - m) ** 2 + 1 / (12 * LEVELS**2)) / (2 * s * s)
                     - math.log(LEVELS)).sum(1)
    exact = np.log(norm.cdf((v + 1) / LEVELS, m, s) - norm.cdf(v / LEVELS, m, s)).sum(1)
    log_w = evalkit.log_weights(model, x, k, seed=0, dtype=torch.float64, progress=False)
    elbo = estimators.elbo(log_w).numpy()
    se_elbo = math.sqrt(float(log_w.var(dim=1).sum()) / k) / n
    assert abs(elbo.mean() - expected_elbo.mean()) < 5 * se_elbo
    jvi = estimators.jvi(log_w, order=1).numpy()
    se_iwae = math.sqrt(float(estimators.iwae_mc_variance(log_w).sum())) / n
    assert abs(jvi.mean() - exact.mean()) < 5 * se_iwae
    assert exact.mean() - elbo.mean() > 10 * se_elbo  # the bound is visibly below log P(v)


def _model(decoder: str, dtype: torch.dtype = torch.float32) -> tuple[ConvVAE, torch.Tensor]:
    torch.manual_seed(1)
    levels = 2 if decoder == "bernoulli" else LEVELS
    model = ConvVAE((1, 8, 8), 3, (4, 8), decoder=decoder, levels=levels, n_components=3).to(dtype)
    x = _digits(40)
    return model, ((x > 8).to(torch.uint8) if decoder == "bernoulli" else x)


@pytest.mark.parametrize("decoder", DECODERS)
def test_batch_size_invariance_bitwise(decoder):
    """Conv layers keep the engine's guarantee: each call has a multiple of 32 rows with every
    datapoint at the same position modulo 32 (found bitwise equal; a ConvTranspose2d call of
    3 rows with 2 threads did differ in float32, which the engine's layout never makes).
    N = 36 and k = 34 cross the engine's 32-row and 32-column alignment."""
    model, x = _model(decoder)
    x, k = x[:36], 34
    plans = {torch.float32: ({"batch_size": 12}, {"batch_size": 40, "k_chunk": 32}, {"batch_size": 18, "threads": 2}),
             torch.float64: ({"batch_size": 12, "k_chunk": 32},)}
    for dtype, option_sets in plans.items():
        reference = evalkit.log_weights(model, x, k, seed=0, dtype=dtype, progress=False)
        assert torch.isfinite(reference).all()
        for options in option_sets:
            again = evalkit.log_weights(model, x, k, seed=0, dtype=dtype, progress=False, **options)
            assert torch.equal(again, reference), (dtype, options)
    subset = evalkit.log_weights(model, x[10:30], k, seed=0, progress=False, indices=torch.arange(10, 30))
    assert torch.equal(subset, evalkit.log_weights(model, x, k, seed=0, progress=False)[10:30])


@pytest.mark.parametrize("decoder", DECODERS)
def test_save_load_round_trip(tmp_path, decoder):
    model, x = _model(decoder)
    path = evalkit.save_model(model, tmp_path / "conv.pt")
    loaded = evalkit.load_model(path)
    assert type(loaded) is ConvVAE and loaded.get_config() == model.get_config()
    assert loaded.data_levels == model.data_levels and loaded.noise_shape == model.noise_shape
    assert torch.equal(evalkit.log_weights(loaded, x, 8, seed=3, progress=False),
                       evalkit.log_weights(model, x, 8, seed=3, progress=False))


def test_protocol_attributes():
    model = ConvVAE((3, 16, 8), 5, (8, 16, 16), decoder="dequantized_gaussian", levels=256)
    assert model.data_dim == 3 * 16 * 8 and model.noise_shape == (5 + 384,)
    assert not model.requires_binary_data and model.data_levels == 256
    assert ConvVAE((1, 8, 8), 2, (4,), decoder="bernoulli", levels=2).requires_binary_data
    likelihood = model.likelihood(torch.zeros(2, 3, 5))
    assert likelihood.batch_shape == (2, 3) and likelihood.event_shape == (3, 16, 8)


@pytest.mark.parametrize("kwargs, message", [
    ({"image_shape": (1, 6, 6), "channels": (4, 8)}, "divisible by 2 \\*\\* len\\(channels\\) = 4"),
    ({"decoder": "gaussian"}, "`decoder`"),
    ({"decoder": "bernoulli", "levels": 256}, "`levels`"),
    ({"levels": 1}, "`levels`"),
    ({"decoder": "logistic_mixture", "n_components": 0}, "`n_components`"),
])
def test_bad_configuration(kwargs, message):
    with pytest.raises(InputError, match=message):
        ConvVAE(**{"image_shape": (1, 8, 8), "latent_dim": 2, **kwargs})


def test_wrong_image_size_is_a_data_error():
    model, _ = _model("logistic")
    with pytest.raises(DataError, match="data_dim=64"):
        evalkit.log_weights(model, torch.zeros(3, 63), 4, progress=False)


def test_estimate_takes_the_images_directly():
    model, _ = _model("logistic")
    images = load_images("digits")[:32]
    result = evalkit.estimate(model, images, k=16, estimators=["elbo", "iwae"], progress=False)
    direct = evalkit.log_weights(model, images.reshape(32, D), 16, seed=0, progress=False)
    assert result.summary.set_index("estimator").loc["iwae", "estimate"] == pytest.approx(
        float(estimators.iwae(direct).mean()), rel=1e-12)


def test_cache_and_sweep_take_the_conv_vae(tmp_path):
    """The sharded cache gives the engine's bits; a sweep over K runs on the same pool."""
    from evalkit.sampling.cache import cached_log_weights

    model, x = _model("logistic")
    direct = evalkit.log_weights(model, x, 40, seed=0, progress=False)
    cached = cached_log_weights(model, x, 40, cache_dir=tmp_path / "cache", seed=0, shard_size=12)
    assert torch.equal(cached, direct)
    with pytest.warns(UserWarning, match="k-hat > 0.5 at 5 of 40 datapoints"):  # this random model's weights
        result = evalkit.sweep(model, ks=[1, 8, 40], estimators=["iwae", "jvi1"], data=x, seed=0, progress=False,
                               keep_log_weights=True)
    assert torch.equal(torch.as_tensor(result.log_weights), direct)
    table = result.table[result.table["estimator"] == "iwae"].set_index("k")
    assert np.isclose(table.loc[40, "estimate"], float(estimators.iwae(direct).mean()), rtol=1e-12, atol=0)
