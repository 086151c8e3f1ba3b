"""Bidirectional Monte Carlo brackets the exact log p(x) of linear-Gaussian models, and the gap shrinks with steps."""
import math

import pytest
import torch

from evalkit.errors import InputError
from evalkit.models import LinearGaussianModel
from evalkit.sampling.bdmc import bdmc, simulate

F64 = torch.float64


def imperfect_model(data_dim, latent_dim, seed):
    model = LinearGaussianModel.random(data_dim, latent_dim, seed=seed)
    weight, bias, scale_tril = model.exact_posterior_params()
    return model.with_proposal(weight, bias + scale_tril.sum(1), 1.5 * scale_tril)


@pytest.mark.slow
@pytest.mark.parametrize("data_dim, latent_dim", [(5, 1), (20, 4)])
def test_bounds_bracket_the_exact_value_and_the_gap_shrinks(data_dim, latent_dim):
    model = imperfect_model(data_dim, latent_dim, seed=data_dim)
    result = bdmc(model, n=12, steps=[3, 200], chains=4, dtype=F64, progress=False)
    summary = result.summary.set_index("steps")
    for steps, row in summary.iterrows():
        # the dataset means of the stochastic bounds, beyond their standard errors
        assert row["lower"] + 3 * row["lower_se"] > row["lower"]  # finite SE
        assert row["lower"] < row["exact"] < row["upper"], (steps, row.to_dict())
        assert row["lower_lme"] >= row["lower"] and row["upper_lme"] <= row["upper"]
    assert summary.loc[200, "gap"] + 2 * summary.loc[200, "gap_se"] < summary.loc[3, "gap"]
    assert summary.loc[200, "gap"] > 0
    # the exact column is the model's closed form on the simulated data
    assert torch.allclose(torch.tensor(result.per_datapoint.query("steps == 3")["exact"].to_numpy()),
                          model.log_marginal(result.x.double()))


def test_simulation_is_seeded_per_datapoint_and_follows_the_model():
    model = LinearGaussianModel.random(3, 2, seed=0)
    x, z = simulate(model, 1000, seed=5)
    x2, z2 = simulate(model, 3, seed=5)
    assert torch.equal(x[:3], x2) and torch.equal(z[:3], z2)
    # z ~ N(0, I); x - (W z + b) ~ N(0, diag psi)
    assert abs(z.mean()) < 4 / math.sqrt(2000) and abs(z.var() - 1) < 0.15
    residual = x.double() - (z @ model.weight.T + model.bias)
    assert torch.allclose(residual.var(0), model.noise_variance, rtol=0.25)


def test_bad_steps_is_an_input_error():
    with pytest.raises(InputError, match="`steps` to be an int >= 2"):
        bdmc(LinearGaussianModel.random(3, 1), n=2, steps=[1], progress=False)


def test_the_importance_sampling_k_hat_warning_comes_once_naming_every_k():
    # A proposal narrower than the posterior: heavy-tailed weights, k-hat above the threshold at every K.
    import warnings

    import numpy as np

    import evalkit
    from evalkit.errors import WeightWarning
    from evalkit.estimators import khat_threshold, psis_khat

    model = LinearGaussianModel.random(6, 2, seed=3)
    weight, bias, scale_tril = model.exact_posterior_params()
    model = model.with_proposal(weight, bias + 2 * scale_tril.sum(1), 0.5 * scale_tril)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        report = evalkit.bdmc(model, n=8, steps=[2], chains=2, ks=(1, 100, 1000), seed=4, progress=False)
    khat_warnings = [str(r.message) for r in records if issubclass(r.category, WeightWarning)]
    assert len(khat_warnings) == 1, khat_warnings
    message = khat_warnings[0]
    # the datapoints it names are those whose k-hat, computed here from the same weights, exceeds each level
    for k in (100, 1000):
        khat = psis_khat(evalkit.log_weights(model, report.bounds.x, k, seed=4, progress=False).numpy())
        above_half = np.flatnonzero(khat > 0.5)
        assert above_half.size > 0
        part = f"K = {k}: > 0.5 at {above_half.size} ("
        assert part in message, message
        if khat_threshold(k) != 0.5:
            assert f"> {khat_threshold(k):.3g} at {int((khat > khat_threshold(k)).sum())}" in message
    assert "K = 1:" not in message  # no k-hat at K = 1
