"""AIS's step-size tuning: pilot trials at f_0, then proportional adaptation, from the pilot chains only.

The reference rule (start every chain at 0.01, move by 2 % per transition) leaves a short run
with step sizes far too small: acceptance near 1 and chains that hardly move. These tests pin
what the pilot's trials must give instead, and that they keep E[w] = p(x).
"""
import math

import torch

from evalkit.models import LinearGaussianModel
from evalkit.models.joint import initial_distribution, initial_sample, latent_shape
from evalkit.noise import _PURPOSE_AIS_ACCEPT, _PURPOSE_AIS_MOMENTUM
from evalkit.sampling.ais import _Path, ais_run
from evalkit.sampling.ais_step_size import TUNE_TRIALS, tuned_step_size
from evalkit.sampling.chain_noise import ChainNoise

F64 = torch.float64


def _imperfect(data_dim, latent_dim, seed):
    model = LinearGaussianModel.random(data_dim, latent_dim, seed=seed)
    weight, bias, scale_tril = model.exact_posterior_params()
    return model.with_proposal(weight, bias + 0.5 * scale_tril.sum(1), 1.3 * scale_tril)


def _data(model, n, seed):
    generator = torch.Generator().manual_seed(seed)
    marginal = model.marginal()
    return marginal.loc + torch.randn(n, model.data_dim, generator=generator, dtype=F64) @ marginal.scale_tril.T


def test_pilot_trials_bring_a_short_run_to_the_target_acceptance():
    # 10 steps: under the reference rule the step size would stay near 0.01 (acceptance ~1.0).
    model = _imperfect(20, 4, seed=3)
    x = _data(model, 16, seed=3)
    result = ais_run(model, x, chains=8, steps=10, dtype=F64, progress=False, keep_step_sizes=True)
    assert 0.45 < float(result.acceptance_rate.mean()) < 0.85, result.acceptance_rate
    # the posterior sd here is about 0.1-0.2: the first step size is of that order, not 0.01
    assert float(result.step_sizes[:, 0].min()) > 0.05, result.step_sizes[:, 0]


def test_tuned_step_size_depends_on_the_pilot_chains_only():
    model = _imperfect(10, 2, seed=5)
    x = _data(model, 16, seed=5)
    chains, pilot = 4, 2
    initial = initial_distribution(model, x, "proposal")
    noise = ChainNoise(0, list(range(16)), chains + pilot, latent_shape(initial),
                       (_PURPOSE_AIS_MOMENTUM, _PURPOSE_AIS_ACCEPT), F64, torch.device("cpu"))
    z0 = initial_sample(model, initial, noise.initial())
    path = _Path(model, x, initial)
    moved = z0.clone()
    moved[:, :chains] += 100.0  # the weighted chains somewhere else entirely
    sizes = [tuned_step_size(path, path.state(z, None, 0.0), 0.0, noise, slice(chains, None), 0.65, 2)
             for z in (z0, moved)]
    assert torch.equal(sizes[0], sizes[1])
    assert TUNE_TRIALS > 0 and (sizes[0] != 0.01).all()


def test_a_tuned_short_run_keeps_the_mean_weight_at_p_x():
    # E[w] = p(x) holds for any T when the kernels do not depend on the weighted chains: with
    # 3 steps the log-weights are far below log p(x), yet their mean weight is p(x).
    w, b, s2 = 2.0, 0.5, 0.3
    model = LinearGaussianModel(torch.tensor([[w]], dtype=F64), torch.tensor([b], dtype=F64),
                                torch.tensor([s2], dtype=F64), proposal_weight=torch.zeros(1, 1, dtype=F64),
                                proposal_bias=torch.tensor([0.2], dtype=F64),
                                proposal_scale_tril=torch.tensor([[1.0]], dtype=F64))
    x = torch.tensor([[1.7], [0.3], [-1.0], [2.5]], dtype=F64)
    chains = 4000
    log_w = ais_run(model, x, chains=chains, steps=3, dtype=F64, progress=False).log_weights
    exact = model.log_marginal(x)
    weights = (log_w - exact.unsqueeze(1)).exp()
    for row in weights:
        assert abs(float(row.mean()) - 1) < 4 * float(row.std()) / math.sqrt(chains), (row.mean(), row.std())
    assert float((log_w.mean(1) - exact).max()) < -0.02  # the log-weights themselves do fall below
