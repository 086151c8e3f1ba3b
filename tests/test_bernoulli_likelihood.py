"""The CPU Bernoulli likelihood (grouped products, per-row fallback) against float64 logaddexp."""
import pytest
import torch

from evalkit.models.densities import bernoulli_log_likelihood


def _truth(logits, x):
    """sum_j log sigmoid((2 x_j - 1) l_j) = -sum_j log(1 + exp(-(2 x_j - 1) l_j)), in float64."""
    signed = (2 * x.double()[:, None] - 1) * logits.double()
    return -torch.logaddexp(torch.zeros((), dtype=torch.float64), -signed).sum(-1)


@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0, 1e4])
@pytest.mark.parametrize("width", [784, 37, 1])
def test_matches_the_float64_formula(scale, width):
    g = torch.Generator().manual_seed(int(scale * 10) + width)
    logits = torch.randn(3, 50, width, dtype=torch.float64, generator=g) * scale
    x = torch.bernoulli(torch.full((3, width), 0.3, dtype=torch.float64), generator=g)
    truth = _truth(logits, x)
    torch.testing.assert_close(bernoulli_log_likelihood(logits.clone(), x, overwrite=True), truth,
                               rtol=1e-13, atol=1e-11)
    got32 = bernoulli_log_likelihood(logits.float(), x.float()).double()
    assert ((got32 - truth).abs() / truth.abs().clamp_min(1)).max() < 1e-6


def test_rows_do_not_depend_on_their_neighbours():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 6, 784, generator=g)
    logits[0, 2] *= 200  # confidently wrong pixels: this row's group products underflow
    x = torch.bernoulli(torch.full((2, 784), 0.4), generator=g)
    together = bernoulli_log_likelihood(logits.clone(), x)
    for b in range(2):
        for i in range(6):
            alone = bernoulli_log_likelihood(logits[b:b + 1, i:i + 1].clone(), x[b:b + 1])
            assert torch.equal(alone[0, 0], together[b, i])
    truth = _truth(logits, x)
    assert ((together.double() - truth).abs() / truth.abs()).max() < 1e-6
