"""What the README and docs/model-protocol.md promise about order: the noise is keyed by the row's
position in the dataset (or ``indices=``), not by the datapoint's content."""
import pytest
import torch

from evalkit.models import LinearGaussianModel
from evalkit.sampling.engine import log_weights

pytestmark = pytest.mark.pinned


def test_permuted_rows_with_their_indices_are_the_same_bits_and_without_them_other_noise():
    exact = LinearGaussianModel.random(data_dim=6, latent_dim=3, seed=4)
    # A proposal that is not the exact posterior, so that the noise matters (with it every weight is p(x)).
    model = exact.with_proposal(torch.zeros(3, 6), torch.zeros(3), torch.eye(3)).double()
    x = model.marginal().sample((40,)).double()
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    full = log_weights(model, x, 64, dtype=torch.float64, progress=False)
    kept = log_weights(model, x[perm], 64, indices=perm, dtype=torch.float64, progress=False)
    assert torch.equal(kept, full[perm])  # each datapoint keeps its stream: bit for bit
    moved = log_weights(model, x[perm], 64, dtype=torch.float64, progress=False)
    assert torch.equal(moved[0], log_weights(model, x[perm][:1], 64, dtype=torch.float64, progress=False)[0])
    changed = perm != torch.arange(40)
    assert changed.any()
    # Other noise, not last-bit rounding: the rows that moved differ by far more than float64 noise.
    assert (moved[changed] - full[perm][changed]).abs().amax(dim=1).min() > 1e-3
