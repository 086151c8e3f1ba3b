"""Annealed importance sampling against exact marginals, an independent reference AIS, and itself under rebatching."""
import math
import random

import pytest
import torch

import evalkit
from evalkit.errors import InputError
from evalkit.models import IWAE, LinearGaussianModel
from evalkit.sampling import hmc
from evalkit.sampling.ais import ais_log_weights, ais_run
from evalkit.sampling.schedules import make_schedule, sigmoid_schedule

F64 = torch.float64


def imperfect_model(data_dim, latent_dim, seed):
    """A random linear-Gaussian model whose proposal is the exact posterior shifted by one sd and widened 1.5x."""
    model = LinearGaussianModel.random(data_dim, latent_dim, seed=seed)
    weight, bias, scale_tril = model.exact_posterior_params()
    return model.with_proposal(weight, bias + scale_tril.sum(1), 1.5 * scale_tril)


def lme(log_w):
    return torch.logsumexp(log_w, 1) - math.log(log_w.shape[1])


SIZES = [(5, 1), (10, 2), (20, 4)]


@pytest.mark.slow
@pytest.mark.parametrize("data_dim, latent_dim", SIZES)
def test_enough_steps_reach_the_exact_marginal_and_few_steps_fall_below(data_dim, latent_dim):
    model = imperfect_model(data_dim, latent_dim, seed=data_dim)
    x = _data(model, 8, seed=data_dim)
    exact = model.log_marginal(x)
    log_w = ais_log_weights(model, x, chains=8, steps=200, dtype=F64, progress=False)
    # IWAE over chains estimates log p(x) per datapoint; its dataset mean must match within 3 SE.
    diff = lme(log_w) - exact
    se = diff.std() / math.sqrt(len(diff))
    assert abs(diff.mean()) < 3 * se + 1e-3, (diff.mean(), se)
    x_many = _data(model, 64, seed=data_dim + 1)
    few = ais_log_weights(model, x_many, chains=8, steps=3, dtype=F64, progress=False)
    diff_few = few.mean(1) - model.log_marginal(x_many)
    assert diff_few.mean() + 3 * diff_few.std() / math.sqrt(len(diff_few)) < 0
    assert diff_few.mean() < diff.mean()


def _data(model, n, seed):
    generator = torch.Generator().manual_seed(seed)
    marginal = model.marginal()
    return marginal.loc + torch.randn(n, model.data_dim, generator=generator, dtype=F64) @ marginal.scale_tril.T


def _reference_ais(x, *, w, b, s2, q_loc, q_scale, betas, step_size, leapfrog, chains, rng):
    """Independent AIS for z ~ N(0, 1), x | z ~ N(w z + b, s2), f_0 = N(q_loc, q_scale^2): plain floats and loops."""
    def log_f0(z):
        return -0.5 * ((z - q_loc) / q_scale) ** 2 - math.log(q_scale) - 0.5 * math.log(2 * math.pi)

    def log_p(z):
        return (-0.5 * z * z - 0.5 * math.log(2 * math.pi)
                - 0.5 * (x - w * z - b) ** 2 / s2 - 0.5 * math.log(2 * math.pi * s2))

    def grad(z, beta):
        g0 = -(z - q_loc) / q_scale ** 2
        gp = -z + w * (x - w * z - b) / s2
        return (1 - beta) * g0 + beta * gp

    def log_f(z, beta):
        return (1 - beta) * log_f0(z) + beta * log_p(z)

    out = []
    for _ in range(chains):
        z = q_loc + q_scale * rng.gauss(0, 1)
        log_w = 0.0
        for t in range(1, len(betas)):
            log_w += (betas[t] - betas[t - 1]) * (log_p(z) - log_f0(z))
            if t == len(betas) - 1:
                break
            beta = betas[t]
            p0 = rng.gauss(0, 1)
            z1, p = z, p0 + 0.5 * step_size * grad(z, beta)
            for i in range(leapfrog):
                z1 = z1 + step_size * p
                p = p + (step_size if i < leapfrog - 1 else 0.5 * step_size) * grad(z1, beta)
            log_accept = (log_f(z1, beta) - 0.5 * p * p) - (log_f(z, beta) - 0.5 * p0 * p0)
            if math.log(1.0 - rng.random()) < log_accept:
                z = z1
        out.append(log_w)
    return out


@pytest.mark.slow
def test_agrees_in_distribution_with_an_independent_reference_ais():
    w, b, s2, q_loc, q_scale, x = 2.0, 0.5, 0.3, 0.2, 1.0, 1.7
    model = LinearGaussianModel(torch.tensor([[w]], dtype=F64), torch.tensor([b], dtype=F64), torch.tensor([s2], dtype=F64),
                                proposal_weight=torch.zeros(1, 1, dtype=F64), proposal_bias=torch.tensor([q_loc], dtype=F64),
                                proposal_scale_tril=torch.tensor([[q_scale]], dtype=F64))
    steps, leapfrog, step_size, chains = 20, 3, 0.3, 2000
    betas = sigmoid_schedule(steps).tolist()
    reference = torch.tensor(_reference_ais(x, w=w, b=b, s2=s2, q_loc=q_loc, q_scale=q_scale, betas=betas,
                                            step_size=step_size, leapfrog=leapfrog, chains=chains,
                                            rng=random.Random(1)), dtype=F64)
    ours = ais_log_weights(model, torch.full((1, 1), x, dtype=F64), chains=chains, steps=steps, leapfrog=leapfrog,
                           step_size=step_size, dtype=F64, progress=False)[0]
    se = math.sqrt(reference.var() / chains + ours.var() / chains)
    assert abs(reference.mean() - ours.mean()) < 4 * se, (reference.mean(), ours.mean(), se)
    assert abs(reference.std() / ours.std() - 1) < 0.15
    # and both are unbiased for p(x): the mean weight matches the closed form within its SE
    exact = -0.5 * (x - b) ** 2 / (w * w + s2) - 0.5 * math.log(2 * math.pi * (w * w + s2))
    for log_w in (reference, ours):
        weights = (log_w - exact).exp()
        assert abs(weights.mean() - 1) < 4 * weights.std() / math.sqrt(chains)


def test_bitwise_independent_of_batch_size_order_and_slicing_float64():
    model = imperfect_model(10, 2, seed=3)
    x = _data(model, 34, seed=3)
    options = dict(chains=2, steps=67, dtype=F64, progress=False)  # 66 transitions cross a noise block
    full = ais_log_weights(model, x, **options)
    perm = torch.randperm(34, generator=torch.Generator().manual_seed(0))
    assert torch.equal(full[perm], ais_log_weights(model, x[perm], indices=perm, batch_size=17, **options))
    assert torch.equal(full[31:], ais_log_weights(model, x[31:], indices=torch.arange(31, 34), batch_size=2, **options))


def test_bitwise_independent_of_batch_size_two_layer_iwae_float32():
    torch.manual_seed(0)
    model = IWAE(30, [4, 3], [[16, 16], [8, 8]])
    x = (torch.rand(34, 30, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    options = dict(chains=2, steps=10, progress=False, init="prior")
    full = ais_log_weights(model, x, **options)
    assert torch.isfinite(full).all()
    assert torch.equal(full[32:], ais_log_weights(model, x[32:], indices=[32, 33], batch_size=1, **options))
    proposal = dict(options, init="proposal")
    assert torch.equal(ais_log_weights(model, x, **proposal)[:3], ais_log_weights(model, x[:3], batch_size=2, **proposal))


def test_worker_threads_give_the_same_bits_and_split_the_data():
    model = imperfect_model(10, 2, seed=5)
    x = _data(model, 70, seed=5)
    options = dict(chains=3, steps=12, dtype=torch.float32, progress=False, keep_step_sizes=True)
    one = ais_run(model, x, threads=1, **options)
    calls = []
    original = evalkit.sampling.ais._anneal_call

    def counting(path, z0, *args, **kwargs):
        calls.append(z0.shape[0])
        return original(path, z0, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evalkit.sampling.ais, "_anneal_call", counting)
        for threads in (2, 3):
            calls.clear()
            many = ais_run(model, x, threads=threads, **options)
            assert len(calls) >= threads  # one call per worker at least
            for field in ("log_weights", "acceptance_rate", "step_sizes"):
                assert torch.equal(getattr(one, field), getattr(many, field)), (threads, field)
        calls.clear()
        few = ais_run(model, x[:20], threads=2, **options)
        assert calls == [32]  # one padded call: splitting 20 datapoints would compute padding twice
        assert torch.equal(few.log_weights, one.log_weights[:20])


def test_layout_of_18_chain_rows_per_slot_keeps_the_bits_of_the_32_slot_layout():
    """16 chains + 2 pilot chains: groups of 16 slots (16 x 18 rows = 9 x 32) instead of the engine's 32."""
    from evalkit.sampling import ais as ais_module

    torch.manual_seed(2)
    model = IWAE(20, [3], [[16, 16]])
    x = (torch.rand(40, 20, generator=torch.Generator().manual_seed(3)) < 0.5).float()
    options = dict(chains=16, steps=6, progress=False, threads=1)
    assert ais_module.slot_align(18) == 16 and ais_module.slot_align(16) == 2 and ais_module.slot_align(5) == 32
    full = ais_log_weights(model, x, **options)
    for batch_size in (1, 7, 16, 23):
        assert torch.equal(full, ais_log_weights(model, x, batch_size=batch_size, **options)), batch_size
    assert torch.equal(full[5:12], ais_log_weights(model, x[5:12], indices=range(5, 12), **options))
    with pytest.MonkeyPatch.context() as patch:  # the engine's layout: 32-slot groups
        patch.setattr(ais_module, "slot_align", lambda rows: 32)
        assert torch.equal(full, ais_log_weights(model, x, batch_size=13, **options))


def test_worker_threads_raise_a_workers_error_in_the_caller():
    model = imperfect_model(10, 2, seed=6)
    x = _data(model, 70, seed=6)
    x[65, 0] = 1e6  # finite, so it passes the data checks; the patched call below refuses it
    original = evalkit.sampling.ais._anneal_call

    def refusing(path, *args, **kwargs):
        if (path.x[:, 0] == 1e6).any():
            raise ValueError("the call holding datapoint 65 failed")
        return original(path, *args, **kwargs)

    before = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evalkit.sampling.ais, "_anneal_call", refusing)
        with pytest.raises(ValueError, match="datapoint 65"):
            ais_run(model, x, chains=2, steps=4, progress=False, threads=2)
    assert torch.get_num_threads() == before  # the workers' one-thread setting did not leak
    with pytest.raises(InputError, match="threads"):
        ais_run(model, x, chains=2, steps=4, progress=False, threads=0)


def test_seed_changes_the_chains_and_pilot_adapts_step_sizes():
    model = imperfect_model(10, 2, seed=4)
    x = _data(model, 4, seed=4)
    a = ais_run(model, x, chains=4, steps=200, dtype=F64, progress=False, keep_step_sizes=True)
    b = ais_run(model, x, chains=4, steps=200, dtype=F64, progress=False, seed=1)
    assert not torch.equal(a.log_weights, b.log_weights)
    assert a.step_sizes.shape == (4, 199)
    assert (a.step_sizes[:, -1] > 0.05).all()  # grown from 0.01 towards the target acceptance
    assert (a.acceptance_rate > 0.4).all()


class OnlyLogWeights(torch.nn.Module):
    noise_shape, data_dim, requires_binary_data = (1,), 2, False

    def log_weights(self, x, noise):
        return noise[..., 0]


def test_model_without_the_protocol_gets_one_clear_error():
    with pytest.raises(InputError, match=r"OnlyLogWeights lacks log_joint\(\), proposal\(\) needed by annealed"):
        ais_log_weights(OnlyLogWeights(), torch.zeros(3, 2), steps=5, progress=False)


def test_schedules():
    sig = make_schedule("sigmoid", 10)
    assert sig[0] == 0 and sig[-1] == 1 and bool((sig.diff() > 0).all())
    assert torch.allclose(sig[5], torch.tensor(0.5, dtype=F64))
    geo = make_schedule("geometric", 5)
    assert geo[1] == pytest.approx(1e-4) and geo[-1] == 1
    assert torch.equal(make_schedule("linear", 4), torch.tensor([0, 0.25, 0.5, 0.75, 1], dtype=F64))
    with pytest.raises(InputError, match="increasing values from 0 to 1"):
        make_schedule([0, 0.7, 0.5, 1], 3)


def test_hmc_leaves_a_gaussian_invariant():
    # 1-D standard normal, many chains started from it: after a few transitions still N(0, 1).
    torch.manual_seed(0)
    density = hmc.value_and_grad(lambda z: -0.5 * z.square().sum(-1) - 0.5 * math.log(2 * math.pi))
    state = hmc.init(torch.randn(1, 20000, 1, dtype=F64), density)
    for _ in range(5):
        state, info = hmc.step(state, density, torch.randn(1, 20000, 1, dtype=F64),
                               torch.rand(1, 20000, dtype=F64).log(), torch.tensor(1.2, dtype=F64), 3)
    z = state.position.flatten()
    assert abs(z.mean()) < 4 / math.sqrt(20000) and abs(z.var() - 1) < 4 * math.sqrt(2 / 20000)
    assert 0.3 < info.accepted.double().mean() < 1


def test_one_layer_iwae_written_out_gradient_matches_autograd_and_rebatches_bitwise():
    torch.manual_seed(2)
    model = IWAE(30, [4], [[16, 16]]).double()
    x = (torch.rand(34, 30, generator=torch.Generator().manual_seed(3)) < 0.5).double()
    z = torch.randn(34, 3, 4, dtype=F64)
    with torch.no_grad():
        value, grad = model.log_joint_and_grad(x, z)
    leaf = z.clone().requires_grad_()
    expected = model.log_joint(x, leaf)
    (expected_grad,) = torch.autograd.grad(expected.sum(), leaf)
    assert torch.allclose(value, expected.detach(), rtol=1e-12, atol=1e-12)
    assert torch.allclose(grad, expected_grad, rtol=1e-10, atol=1e-12)
    options = dict(chains=2, steps=10, progress=False)
    full = ais_log_weights(model.float(), x.float(), **options)
    assert torch.equal(full[31:], ais_log_weights(model.float(), x[31:].float(), indices=[31, 32, 33], batch_size=1, **options))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_written_out_initial_gradients_have_autograds_bits(dtype):
    """The diagonal-Gaussian and one-block GaussianChain gradients AIS takes at every leapfrog step."""
    from evalkit.models import MLPVAE
    from evalkit.models.joint import initial_distribution, initial_log_prob, initial_log_prob_and_grad

    torch.manual_seed(0)
    one_layer, two_layers = IWAE(12, [3], [[8, 8]]), IWAE(12, [4, 3], [[8, 8], [6, 6]])
    cases = [(MLPVAE(12, 3, (8,)), 3), (one_layer, 3), (two_layers, 7),
             (LinearGaussianModel.random(12, 3, seed=0), 3)]
    x = (torch.rand(5, 12) < 0.5).to(dtype)
    for model, latent in cases:
        model = model.to(dtype)
        for init in ("proposal", "prior"):
            dist = initial_distribution(model, x, init)
            z = 2 * torch.randn(5, 4, latent, dtype=dtype)
            leaf = z.clone().requires_grad_(True)
            expected_value = initial_log_prob(dist, leaf)
            (expected_grad,) = torch.autograd.grad(expected_value.sum(), leaf)
            with torch.no_grad():
                value, grad = initial_log_prob_and_grad(dist, z)
            assert value.dtype == F64 and value.shape == (5, 4)
            assert torch.equal(value, expected_value.detach()), (type(model).__name__, init)
            assert torch.equal(grad, expected_grad), (type(model).__name__, init)
