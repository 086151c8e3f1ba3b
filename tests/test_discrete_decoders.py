"""Discrete image decoders: normalisation over all admissible values, agreement with an
independent high-precision computation (mpmath), validation, sampling, dequantisation units."""
from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy.stats import norm

from evalkit.errors import InputError
from evalkit.models.discrete import (
    DequantizedDensity,
    DiscretizedLogistic,
    DiscretizedLogisticMixture,
    PixelCategorical,
    change_of_units,
    logistic,
)

DTYPES = [torch.float32, torch.float64]
LEVELS = [2, 17, 256]


def _params(n: int, seed: int, dtype: torch.dtype, components: int = 0):
    """Random locations (some far outside [-1, 1], some exactly on bin edges) and log-uniform scales 1e-6..1e3."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, components) if components else (n,)
    loc = torch.empty(shape, dtype=torch.float64).uniform_(-3, 3, generator=g)
    loc.view(-1)[: n // 4] *= 100  # far outside the data range
    loc.view(-1)[n // 4: n // 3] = (2 * torch.arange(n // 3 - n // 4) + 1) / 16.0 - 1  # bin edges of levels=17
    scale = 10 ** torch.empty(shape, dtype=torch.float64).uniform_(-6, 3, generator=g)
    scale.view(-1)[:6] = torch.tensor([1e-6, 1e-6, 1e3, 1e3, 1e-3, 1.0], dtype=torch.float64)[: min(6, scale.numel())]
    return loc.to(dtype), scale.to(dtype)


def _total_log_mass(log_p: torch.Tensor) -> torch.Tensor:
    """log sum_v P(v) over the first dimension, in float64."""
    return torch.logsumexp(log_p.double(), dim=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("levels", LEVELS)
def test_discretized_logistic_sums_to_one(levels, dtype):
    loc, scale = _params(400, seed=levels, dtype=dtype)
    values = torch.arange(levels, dtype=dtype).unsqueeze(1)
    log_p = DiscretizedLogistic(loc, scale, levels).log_prob(values)  # [levels, 400]
    assert torch.isfinite(log_p).all()
    assert (log_p <= 0).all()
    assert _total_log_mass(log_p).abs().max() < 1e-6


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("levels", LEVELS)
def test_mixture_sums_to_one(levels, dtype):
    loc, scale = _params(300, seed=100 + levels, dtype=dtype, components=4)
    logits = torch.randn(300, 4, generator=torch.Generator().manual_seed(levels), dtype=torch.float64).to(dtype) * 5
    values = torch.arange(levels, dtype=dtype).unsqueeze(1)
    log_p = DiscretizedLogisticMixture(logits, loc, scale, levels).log_prob(values)
    assert _total_log_mass(log_p).abs().max() < 1e-6


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("levels", LEVELS)
def test_categorical_sums_to_one(levels, dtype):
    g = torch.Generator().manual_seed(levels)
    logits = (torch.randn(200, levels, generator=g, dtype=torch.float64) * torch.logspace(-3, 3, 200, dtype=torch.float64)[:, None]).to(dtype)
    values = torch.arange(levels).unsqueeze(1)
    log_p = PixelCategorical(logits).log_prob(values)
    assert _total_log_mass(log_p).abs().max() < 1e-6


def _mp_logistic_log_mass(v: int, loc: float, scale: float, levels: int) -> float:
    """log P(v) of the discretised logistic, in 60-digit arithmetic from the definition."""
    mp_sigmoid = lambda t: 1 / (1 + mpmath.exp(-t))  # noqa: E731
    loc, scale = mpmath.mpf(loc), mpmath.mpf(scale)
    upper = mpmath.mpf(2 * v + 1) / (levels - 1) - 1
    lower = mpmath.mpf(2 * v - 1) / (levels - 1) - 1
    a = mpmath.inf if v == levels - 1 else (upper - loc) / scale
    b = -mpmath.inf if v == 0 else (lower - loc) / scale
    if b > 0:  # both CDFs near 1: take the difference of the upper tails, 1 - F = sigmoid(-t)
        return mp_sigmoid(-b) - (0 if a == mpmath.inf else mp_sigmoid(-a))
    return (1 if a == mpmath.inf else mp_sigmoid(a)) - (0 if b == -mpmath.inf else mp_sigmoid(b))


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_discretized_logistic_matches_mpmath(levels):
    loc, scale = _params(40, seed=7 + levels, dtype=torch.float64)
    values = torch.tensor([0, 1, levels // 2, levels - 2, levels - 1], dtype=torch.float64).unsqueeze(1)
    log_p = DiscretizedLogistic(loc, scale, levels).log_prob(values)
    with mpmath.workdps(60):
        for i, v in enumerate(values[:, 0].long().tolist()):
            for j in range(loc.shape[0]):
                mass = _mp_logistic_log_mass(v, float(loc[j]), float(scale[j]), levels)
                expected = float(mpmath.log(mass))
                assert abs(float(log_p[i, j]) - expected) <= 1e-5, (v, float(loc[j]), float(scale[j]))


def test_mixture_matches_mpmath():
    levels = 17
    loc, scale = _params(30, seed=3, dtype=torch.float64, components=3)
    logits = torch.randn(30, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 3
    values = torch.arange(levels, dtype=torch.float64).unsqueeze(1)
    log_p = DiscretizedLogisticMixture(logits, loc, scale, levels).log_prob(values)
    with mpmath.workdps(60):
        for j in range(30):
            weights = [mpmath.exp(mpmath.mpf(float(t))) for t in logits[j]]
            total = sum(weights)
            for v in range(levels):
                mass = sum(w / total * _mp_logistic_log_mass(v, float(loc[j, c]), float(scale[j, c]), levels)
                           for c, w in enumerate(weights))
                assert abs(float(log_p[v, j]) - float(mpmath.log(mass))) <= 1e-5


def test_categorical_matches_mpmath():
    logits = torch.randn(5, 256, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 30
    values = torch.arange(256).unsqueeze(1)
    log_p = PixelCategorical(logits).log_prob(values)
    with mpmath.workdps(40):
        for j in range(5):
            log_total = mpmath.log(sum(mpmath.exp(mpmath.mpf(float(t))) for t in logits[j]))
            expected = np.array([float(mpmath.mpf(float(t)) - log_total) for t in logits[j]])
            assert np.abs(log_p[:, j].numpy() - expected).max() <= 1e-5


def test_float32_agrees_with_float64_at_moderate_scales():
    # In float32 the inputs themselves are rounded (relative 6e-8); for scales >= 1e-2 that
    # moves a log-probability by at most about 6e-8 / 1e-2 per edge, well under 1e-4.
    g = torch.Generator().manual_seed(11)
    loc = torch.empty(500, dtype=torch.float64).uniform_(-1.5, 1.5, generator=g)
    scale = 10 ** torch.empty(500, dtype=torch.float64).uniform_(-2, 2, generator=g)
    values = torch.arange(256, dtype=torch.float64).unsqueeze(1)
    exact = DiscretizedLogistic(loc, scale, 256).log_prob(values)
    single = DiscretizedLogistic(loc.float(), scale.float(), 256).log_prob(values.float()).double()
    keep = exact > -30  # relative error matters where the mass is; far tails are tiny either way
    assert ((single - exact).abs()[keep]).max() < 1e-4


@pytest.mark.parametrize("make", [
    lambda: DiscretizedLogistic(torch.zeros(3), torch.ones(3), 17, validate_args=True),
    lambda: DiscretizedLogisticMixture(torch.zeros(3, 2), torch.zeros(3, 2), torch.ones(3, 2), 17, validate_args=True),
    lambda: PixelCategorical(torch.zeros(3, 17), validate_args=True),
], ids=["logistic", "mixture", "categorical"])
@pytest.mark.parametrize("bad", [0.5, -1.0, 17.0])
def test_log_prob_validates_values(make, bad):
    dist = make()
    with pytest.raises(ValueError):
        dist.log_prob(torch.tensor([0.0, 16.0, bad]))
    assert torch.isfinite(dist.log_prob(torch.tensor([0.0, 8.0, 16.0]))).all()


def test_bad_parameters_and_levels():
    with pytest.raises(ValueError):
        DiscretizedLogistic(torch.zeros(2), torch.tensor([1.0, -1.0]), 17, validate_args=True)
    with pytest.raises(InputError, match="levels"):
        DiscretizedLogistic(torch.zeros(2), torch.ones(2), 1)


def test_shapes_and_support():
    dist = DiscretizedLogistic(torch.zeros(4, 3), torch.ones(4, 3), 17)
    assert dist.batch_shape == (4, 3) and dist.event_shape == ()
    assert dist.support.lower_bound == 0 and dist.support.upper_bound == 16
    assert dist.expand((2, 4, 3)).log_prob(torch.zeros(2, 4, 3)).shape == (2, 4, 3)
    mixture = DiscretizedLogisticMixture(torch.zeros(4, 2), torch.zeros(4, 2), torch.ones(4, 2), 17)
    assert mixture.batch_shape == (4,) and mixture.event_shape == ()
    assert PixelCategorical(torch.zeros(4, 17)).batch_shape == (4,)


def test_samples_follow_the_probabilities():
    levels, n = 17, 40000
    dist = DiscretizedLogistic(torch.tensor(0.2, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64), levels)
    torch.manual_seed(0)
    samples = dist.sample((n,))
    assert samples.min() >= 0 and samples.max() <= levels - 1 and (samples == samples.round()).all()
    counts = torch.bincount(samples.long(), minlength=levels).double()
    probs = dist.log_prob(torch.arange(levels, dtype=torch.float64)).exp()
    se = (n * probs * (1 - probs)).sqrt()
    assert ((counts - n * probs).abs() <= 5 * se + 1).all()


def test_dequantized_density_units_and_bin_mass():
    # p_w(w) = p_y(w / L) / L; averaging it over the bin [v, v + 1) gives P(v), the mass of
    # the bin (midpoint rule with 2000 nodes, error ~ p'' / (24 * 2000^2)), whose logs are
    # closed form for a Gaussian: log(Phi((v + 1) / L) - Phi(v / L)) in y units.
    levels, loc, scale = 17, 0.4, 0.2
    dist = DequantizedDensity(torch.distributions.Normal(torch.tensor(loc, dtype=torch.float64),
                                                         torch.tensor(scale, dtype=torch.float64)), levels)
    w = torch.tensor([0.0, 3.25, 16.999], dtype=torch.float64)
    direct = norm.logpdf(w.numpy() / levels, loc, scale) - math.log(levels)
    assert np.abs(dist.log_prob(w).numpy() - direct).max() < 1e-12
    u = (torch.arange(2000, dtype=torch.float64) + 0.5) / 2000
    for v in (0, 5, 8, 16):
        bin_mass = torch.logsumexp(dist.log_prob(v + u), 0) - math.log(2000)
        exact = math.log(norm.cdf((v + 1) / levels, loc, scale) - norm.cdf(v / levels, loc, scale))
        assert abs(float(bin_mass) - exact) < 1e-6
    assert change_of_units(256, 64) == -64 * math.log(256)


def test_logistic_density_is_the_logistic():
    y = torch.tensor([-2.0, 0.1, 0.5, 3.0], dtype=torch.float64)
    t = (y - 0.3) / 0.2
    expected = -t - 2 * torch.nn.functional.softplus(-t) - math.log(0.2)
    got = logistic(torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.2, dtype=torch.float64)).log_prob(y)
    assert torch.allclose(got, expected, atol=1e-12, rtol=0)
