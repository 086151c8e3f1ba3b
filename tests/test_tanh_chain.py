"""Tanh networks in sigmoid form: bitwise the modules' own evaluation, close to float64 torch.tanh."""
import copy

import pytest
import torch
from torch import nn

from evalkit.models import IWAE, MLPVAE
from evalkit.models.tanh_chain import chain_layers


def _with_torch_tanh(module):
    """A float64 copy whose activations are torch.tanh: an independent reference."""
    clone = copy.deepcopy(module).double()
    for parent in clone.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Tanh):
                setattr(parent, name, nn.Tanh())
    return clone


@pytest.fixture(params=["one", "two"])
def iwae(request):
    torch.manual_seed(3)
    model = IWAE(30, [6], [[20, 16]]) if request.param == "one" else IWAE(30, [8, 4], [[20, 16], [12, 10]])
    return model.eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_iwae_networks_equal_their_modules_bit_for_bit(iwae, dtype):
    model = iwae.to(dtype)
    h = torch.randn(300, model.latent_dims[0], dtype=dtype) * 3  # saturating units too
    x = torch.randn(300, 30, dtype=dtype)
    with torch.inference_mode():
        assert torch.equal(model.logits(h), model.decoder_x(h))
        fast = model.encoder_h1.params(x)
        hidden = model.encoder_h1.transform(x)
        assert torch.equal(fast[0], model.encoder_h1.fc_mu(hidden))
        assert torch.equal(fast[1], model.encoder_h1.fc_logsigma(hidden))


def test_iwae_networks_are_tanh_networks(iwae):
    reference = _with_torch_tanh(iwae)
    h = torch.randn(50, iwae.latent_dims[0]) * 3
    with torch.no_grad():
        fast = iwae.logits(h)
        exact = reference.decoder_x(h.double())
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast.double(), exact, rtol=0, atol=1e-5)


def test_vae_log_weights_equal_the_module_evaluation():
    torch.manual_seed(0)
    for likelihood in ("bernoulli", "gaussian"):
        model = MLPVAE(12, 3, (10, 7), likelihood=likelihood).eval()
        x = torch.bernoulli(torch.full((5, 12), 0.4))
        noise = torch.randn(5, 40, 3)
        with torch.no_grad():
            fast = model.log_weights(x, noise)
            loc, log_scale = model.encoder_loc(model.encoder(x)), model.encoder_log_scale(model.encoder(x))
            assert torch.equal(model._encoder_heads(x)[0], loc)
            assert torch.equal(model._encoder_heads(x)[1], log_scale)
            z = loc.unsqueeze(1) + log_scale.exp().unsqueeze(1) * noise
            assert torch.equal(model._decoder_heads(z)[0], model.decoder_loc(model.decoder(z)))
        # The distributions' log-densities (torch.distributions) agree.
        z = loc.unsqueeze(1) + log_scale.exp().unsqueeze(1) * noise
        with torch.no_grad():
            slow = (model.likelihood(z).log_prob(x.unsqueeze(1)) + model.prior().log_prob(z)
                    - model.proposal(x).log_prob(z.transpose(0, 1)).transpose(0, 1))
        torch.testing.assert_close(fast, slow.double(), rtol=1e-5, atol=1e-4)


def test_changed_weights_are_seen(iwae):
    h = torch.randn(40, iwae.latent_dims[0])
    with torch.no_grad():
        before = iwae.logits(h)
        iwae.decoder_x[0].weight.mul_(0.5)  # in place: same storage, new version
        after = iwae.logits(h)
        assert torch.equal(after, iwae.decoder_x(h))
        assert not torch.equal(before, after)
        state = {key: value * 1.5 for key, value in iwae.state_dict().items()}
        iwae.load_state_dict(state)
        assert torch.equal(iwae.logits(h), iwae.decoder_x(h))


def test_autograd_runs_the_modules(iwae):
    h = torch.randn(10, iwae.latent_dims[0])
    out = iwae.logits(h)
    assert out.grad_fn is not None
    out.sum().backward()
    assert iwae.decoder_x[0].weight.grad is not None


def test_other_layouts_run_the_modules(iwae):
    iwae.decoder_x[1] = nn.ReLU()
    assert chain_layers(iwae.decoder_x) is None
    h = torch.randn(10, iwae.latent_dims[0])
    with torch.no_grad():
        assert torch.equal(iwae.logits(h), iwae.decoder_x(h))


def test_parameters_made_in_inference_mode_are_not_cached():
    with torch.inference_mode():
        model = IWAE(30, [6], [[20, 16]]).eval()
        h = torch.randn(40, 6)
        before = model.logits(h)
        model.decoder_x[0].weight.mul_(0.5)  # no version counter to notice this
        assert torch.equal(model.logits(h), model.decoder_x(h))
        assert not torch.equal(model.logits(h), before)


def test_linears_without_bias_run_the_modules():
    sequential = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Tanh(), nn.Linear(3, 2))
    assert chain_layers(sequential) is None
