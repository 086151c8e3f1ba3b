"""Checkpoints: a round trip for every kind, the IWAE reference layout against hand-written math, errors."""
import argparse
import json
import math
import textwrap
import warnings

import pytest
import torch
import torch.serialization
from torch import nn

from evalkit.models.checkpoints import PrefixStrippedWarning, detect_checkpoint_kind, load_model, save_model
from evalkit.sampling.engine import log_weights
from evalkit.errors import CheckpointError, InputError, OutputError
from evalkit.models import IWAE, MLPVAE, LinearGaussianModel
from evalkit.noise import draw_noise


def binary(n_rows, data_dim, seed=0):
    return torch.bernoulli(torch.full((n_rows, data_dim), 0.4), generator=torch.Generator().manual_seed(seed))


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[key], sb[key]) for key in sa)


BUILTINS = [
    lambda: MLPVAE(12, 3, (8, 6)),
    lambda: MLPVAE(12, 3, (8,), likelihood="gaussian", activation="softplus"),
    lambda: IWAE(12, [4, 2], [[8, 8], [5, 5]]),
    lambda: LinearGaussianModel.random(12, 3, seed=2),
]


@pytest.mark.parametrize("build", BUILTINS)
@pytest.mark.parametrize("name,kind", [("model.pt", "evalkit"), ("model.safetensors", "safetensors"), ("saved/", "safetensors")])
def test_builtin_round_trip(tmp_path, build, name, kind):
    torch.manual_seed(0)
    model = build()
    path = save_model(model, f"{tmp_path}/{name}")  # "saved/": a trailing separator asks for a directory
    assert detect_checkpoint_kind(path) == kind
    loaded = load_model(path)
    assert type(loaded) is type(model) and loaded.get_config() == model.get_config() and same_state(loaded, model)
    x = binary(5, 12) if model.requires_binary_data else torch.randn(5, 12)
    assert torch.equal(log_weights(loaded, x, 7, progress=False), log_weights(model, x, 7, progress=False))


def test_safetensors_writes_a_readable_json_header(tmp_path):
    save_model(MLPVAE(12, 3, (8,)), tmp_path / "vae.safetensors")
    header = json.loads((tmp_path / "vae.json").read_text())
    assert header["model"] == "MLPVAE" and header["config"]["latent_dim"] == 3 and header["weights"] == "vae.safetensors"
    assert isinstance(load_model(tmp_path / "vae.json"), MLPVAE)


def test_save_refuses_to_overwrite_unless_asked(tmp_path):
    model = MLPVAE(12, 3, (8,))
    save_model(model, tmp_path / "m.pt")
    with pytest.raises(OutputError, match="already exists"):
        save_model(model, tmp_path / "m.pt")
    save_model(model, tmp_path / "m.pt", overwrite=True)


def test_save_refuses_non_builtin_models(tmp_path):
    with pytest.raises(InputError, match="factory="):
        save_model(nn.Linear(2, 2), tmp_path / "m.pt")


def test_float64_checkpoint_loads_as_float64(tmp_path):
    model = MLPVAE(12, 3, (8,)).double()
    loaded = load_model(save_model(model, tmp_path / "m.pt"))
    assert loaded.encoder_loc.weight.dtype == torch.float64 and same_state(loaded, model)


# ----------------------------------------------------------------------------------------------
# factory= with plain state_dicts, Lightning checkpoints and safetensors weights

FACTORY_MODULE = textwrap.dedent(
    """
    import torch
    from evalkit.models import MLPVAE

    def build():
        torch.manual_seed(123)  # deliberately different weights from the checkpoint
        return MLPVAE(12, 3, (8,))
    """
)


@pytest.fixture
def factory(tmp_path, monkeypatch):
    (tmp_path / "user_models.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_models:build"


@pytest.fixture
def trained():
    torch.manual_seed(7)
    return MLPVAE(12, 3, (8,))


def test_factory_with_plain_state_dict(tmp_path, factory, trained):
    torch.save(trained.state_dict(), tmp_path / "weights.pt")
    assert detect_checkpoint_kind(tmp_path / "weights.pt") == "state_dict"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no prefix: no warning
        loaded = load_model(tmp_path / "weights.pt", factory=factory)
    assert same_state(loaded, trained)


def test_factory_with_lightning_checkpoint_detects_and_reports_the_prefix(tmp_path, factory, trained):
    checkpoint = {
        "epoch": 3, "global_step": 300, "pytorch-lightning_version": "2.4.0",
        "state_dict": {**{f"model.{key}": value for key, value in trained.state_dict().items()},
                       "loss_scale.weight": torch.ones(1)},
        "hyper_parameters": {"lr": 1e-3, "latent_dim": 3},
        "optimizer_states": [], "lr_schedulers": [],
    }
    torch.save(checkpoint, tmp_path / "last.ckpt")
    with pytest.warns(PrefixStrippedWarning, match=r"stripped the prefix 'model\.'.*ignored 1 keys.*prefix='model\.'"):
        loaded = load_model(tmp_path / "last.ckpt", factory=factory)
    assert same_state(loaded, trained)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert same_state(load_model(tmp_path / "last.ckpt", factory=factory, prefix="model."), trained)


def test_lightning_checkpoint_with_pickled_hyperparameters_needs_allow_pickle(tmp_path, factory, trained):
    checkpoint = {"state_dict": {f"model.{key}": value for key, value in trained.state_dict().items()},
                  "hyper_parameters": argparse.Namespace(lr=1e-3)}
    torch.save(checkpoint, tmp_path / "old.ckpt")
    with pytest.raises(CheckpointError, match=r"references argparse\.Namespace.*allow_pickle=True"):
        load_model(tmp_path / "old.ckpt", factory=factory)
    loaded = load_model(tmp_path / "old.ckpt", factory=factory, prefix="model.", allow_pickle=True)
    assert same_state(loaded, trained)


def test_factory_with_safetensors_weights_and_a_callable(tmp_path, trained):
    from safetensors.torch import save_file

    save_file(trained.state_dict(), str(tmp_path / "weights.safetensors"))
    loaded = load_model(tmp_path / "weights.safetensors", factory=lambda: MLPVAE(12, 3, (8,)))
    assert same_state(loaded, trained)


def test_mismatched_keys_are_listed_with_a_prefix_hint(tmp_path, factory, trained):
    state = {f"model.{key}": value for key, value in trained.state_dict().items()}
    del state["model.decoder_loc.bias"]
    state["model.extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "broken.ckpt")
    with pytest.raises(CheckpointError, match=r"missing keys \['decoder_loc.bias'\] and has unexpected keys \['extra.weight'\]; "
                                              r"the keys carry the prefix 'model\.'.*pass prefix='model\.'"):
        load_model(tmp_path / "broken.ckpt", factory=factory)


def test_wrong_shapes_are_named(tmp_path, factory):
    torch.save(MLPVAE(12, 4, (8,)).state_dict(), tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"wrong shape, e\.g\. 'encoder_loc\.weight' is \(4, 8\) but the model expects \(3, 8\)"):
        load_model(tmp_path / "other.pt", factory=factory)


@pytest.mark.parametrize(
    "factory_text,message",
    [("no_colon", "package.module:function"), ("not_a_module_xyz:build", "cannot import module 'not_a_module_xyz'"),
     ("math:not_there", "has no attribute 'not_there'")],
)
def test_bad_factories_are_explained(tmp_path, trained, factory_text, message):
    torch.save(trained.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(InputError, match=message):
        load_model(tmp_path / "weights.pt", factory=factory_text)


def test_unrecognised_state_dict_asks_for_a_factory(tmp_path, trained):
    torch.save(trained.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match="pass factory='package.module:function'"):
        load_model(tmp_path / "weights.pt")


# ----------------------------------------------------------------------------------------------
# TorchScript


class ScriptableGaussian(nn.Module):
    """z ~ N(0, I), x | z ~ N(W z + b, I), q = N(A x, I): log-densities written out for TorchScript."""

    def __init__(self):
        super().__init__()
        self.noise_shape = (2,)
        self.data_dim = 4
        self.requires_binary_data = False
        self.decoder = nn.Linear(2, 4)
        self.encoder = nn.Linear(4, 2, bias=False)

    @torch.jit.export
    def log_weights(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x).unsqueeze(1) + noise
        half_log_2pi = 0.5 * math.log(2 * math.pi)
        log_q = (-0.5 * noise**2 - half_log_2pi).sum(-1)
        log_prior = (-0.5 * z**2 - half_log_2pi).sum(-1)
        log_lik = (-0.5 * (x.unsqueeze(1) - self.decoder(z)) ** 2 - half_log_2pi).sum(-1)
        return log_lik + log_prior - log_q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # scripting in the test itself
def test_torchscript_round_trip_with_attributes(tmp_path):
    torch.manual_seed(0)
    eager = ScriptableGaussian()
    torch.jit.save(torch.jit.script(eager), str(tmp_path / "model.ts"))
    assert detect_checkpoint_kind(tmp_path / "model.ts") == "torchscript"
    loaded = load_model(tmp_path / "model.ts")
    assert (loaded.noise_shape, loaded.data_dim, loaded.requires_binary_data) == ((2,), 4, False)
    x = torch.randn(6, 4)
    assert torch.equal(log_weights(loaded, x, 9, progress=False), log_weights(eager, x, 9, progress=False))


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # scripting in the test itself
def test_torchscript_without_attributes_takes_them_from_load_model(tmp_path):
    torch.manual_seed(0)
    class Traceable(ScriptableGaussian):  # without @torch.jit.export, which tracing would duplicate
        def log_weights(self, x, noise):
            return ScriptableGaussian.log_weights(self, x, noise)

    eager = Traceable()
    traced = torch.jit.trace_module(eager, {"log_weights": (torch.randn(32, 4), torch.randn(32, 3, 2))})
    torch.jit.save(traced, str(tmp_path / "traced.pt"))
    with pytest.raises(CheckpointError, match=r"no attribute 'noise_shape'; pass noise_shape=\.\.\. to load_model"):
        load_model(tmp_path / "traced.pt")
    loaded = load_model(tmp_path / "traced.pt", noise_shape=(2,), data_dim=4, requires_binary_data=False)
    x = torch.randn(6, 4)
    assert torch.equal(log_weights(loaded, x, 5, progress=False), log_weights(eager, x, 5, progress=False))


def test_protocol_overrides_are_only_for_torchscript(tmp_path):
    path = save_model(MLPVAE(12, 3, (8,)), tmp_path / "m.pt")
    with pytest.raises(InputError, match="describe TorchScript archives"):
        load_model(path, data_dim=12)


# ----------------------------------------------------------------------------------------------
# The IWAE reference layout, against an independent module and hand-written densities


class ReferenceBlock(nn.Module):
    """The reference's BasicBlock: Linear-Tanh-Linear-Tanh, then mu and logsigma heads."""

    def __init__(self, n_in, n_hidden, n_out):
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(n_in, n_hidden), nn.Tanh(), nn.Linear(n_hidden, n_hidden), nn.Tanh())
        self.fc_mu = nn.Linear(n_hidden, n_out)
        self.fc_logsigma = nn.Linear(n_hidden, n_out)

    def forward(self, h):
        out = self.transform(h)
        return self.fc_mu(out), torch.exp(self.fc_logsigma(out))


class ReferenceIWAE(nn.Module):
    """IWAE_1 (dims = [d1]) or IWAE_2 (dims = [d1, d2]) of the reference implementation, small."""

    def __init__(self, data_dim, dims):
        super().__init__()
        self.dims = dims
        self.encoder_h1 = ReferenceBlock(data_dim, 20, dims[0])
        if len(dims) == 2:
            self.encoder_h2 = ReferenceBlock(dims[0], 10, dims[1])
            self.decoder_h1 = ReferenceBlock(dims[1], 10, dims[0])
        self.decoder_x = nn.Sequential(nn.Linear(dims[0], 20), nn.Tanh(), nn.Linear(20, 20), nn.Tanh(),
                                       nn.Linear(20, data_dim), nn.Sigmoid())

    def log_weights_by_hand(self, x, noise):
        """log p(x, h) - log q(h | x) with the densities written out (float64)."""

        def log_normal(value, mu, sigma):
            return (-0.5 * ((value - mu) / sigma) ** 2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)).sum(-1)

        eps = noise.split(self.dims, dim=-1)
        mu1, sigma1 = self.encoder_h1(x)
        mu1, sigma1 = mu1[:, None], sigma1[:, None]
        h1 = mu1 + sigma1 * eps[0]
        log_q = log_normal(h1, mu1, sigma1)
        top = h1
        log_p = 0.0
        if len(self.dims) == 2:
            mu2, sigma2 = self.encoder_h2(h1)
            h2 = mu2 + sigma2 * eps[1]
            log_q = log_q + log_normal(h2, mu2, sigma2)
            mu1p, sigma1p = self.decoder_h1(h2)
            log_p = log_normal(h1, mu1p, sigma1p)
            top = h2
        log_p = log_p + log_normal(top, torch.zeros_like(top), torch.ones_like(top))
        p = self.decoder_x(h1)  # Bernoulli means, as in the reference's test_loss
        log_p = log_p + (x[:, None] * torch.log(p) + (1 - x[:, None]) * torch.log(1 - p)).sum(-1)
        return log_p - log_q


def save_as_if_on_cuda(obj, path):
    """torch.save with every storage tagged 'cuda:0', as a checkpoint saved from a GPU would be."""

    def tag(storage):
        return "cuda:0"

    torch.serialization.register_package(0, tag, lambda obj, location: None)
    try:
        torch.save(obj, path)
    finally:
        torch.serialization._package_registry[:] = [entry for entry in torch.serialization._package_registry
                                                    if entry[1] is not tag]


@pytest.mark.parametrize("dims", [[5], [6, 3]])
@pytest.mark.parametrize("wrap", ["plain", "model_state_dict", "data_parallel"])
def test_iwae_reference_checkpoint_loads_and_matches_hand_computation(tmp_path, dims, wrap):
    torch.manual_seed(len(dims))
    reference = ReferenceIWAE(16, dims).double()  # the reference trains in float64 on CUDA
    state = reference.state_dict()
    if wrap == "model_state_dict":
        state = {"model_state_dict": state, "epoch": 199}
    elif wrap == "data_parallel":
        state = {"state_dict": {f"module.{key}": value for key, value in state.items()}}
    save_as_if_on_cuda(state, tmp_path / "IWAE_layers_k_5_epoch_199.model")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tmp_path / "IWAE_layers_k_5_epoch_199.model", weights_only=True)  # really CUDA-tagged

    assert detect_checkpoint_kind(tmp_path / "IWAE_layers_k_5_epoch_199.model") == "iwae_reference"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(tmp_path / "IWAE_layers_k_5_epoch_199.model")
    stripped = [str(w.message) for w in caught if issubclass(w.category, PrefixStrippedWarning)]
    assert len(stripped) == (wrap == "data_parallel") and all("prefix 'module.'" in text for text in stripped)
    assert isinstance(model, IWAE) and model.latent_dims == dims and model.data_dim == 16
    assert model.encoder_h1.fc_mu.weight.dtype == torch.float64

    x = binary(40, 16, seed=3).double()
    k = 30
    engine = log_weights(model, x, k, seed=11, dtype=torch.float64, progress=False)
    noise = draw_noise(11, range(40), 0, k, (sum(dims),), dtype=torch.float64)
    with torch.no_grad():
        by_hand = reference.log_weights_by_hand(x, noise)
    assert torch.allclose(engine, by_hand, rtol=1e-12, atol=1e-10)


def test_iwae_reference_layout_with_inconsistent_shapes_is_explained(tmp_path):
    state = ReferenceIWAE(16, [6, 3]).state_dict()
    state["decoder_h1.fc_mu.weight"] = torch.zeros(5, 10)
    state["decoder_h1.fc_logsigma.weight"] = torch.zeros(5, 10)
    torch.save(state, tmp_path / "bad.model")
    with pytest.raises(CheckpointError, match=r"decoder_h1 maps 3 -> 5, expected 3 -> 6"):
        load_model(tmp_path / "bad.model")


# ----------------------------------------------------------------------------------------------
# Pickles and unreadable files


def test_pickled_module_needs_allow_pickle(tmp_path):
    model = MLPVAE(12, 3, (8,))
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(CheckpointError, match=r"references evalkit\.models\.vae\.MLPVAE.*pass allow_pickle=True"):
        load_model(tmp_path / "whole.pt")
    assert detect_checkpoint_kind(tmp_path / "whole.pt", allow_pickle=True) == "pickled_module"
    assert same_state(load_model(tmp_path / "whole.pt", allow_pickle=True), model)


@pytest.mark.parametrize("content,message", [(None, "does not exist"), (b"not a checkpoint", "cannot read")])
def test_missing_and_garbage_files(tmp_path, content, message):
    path = tmp_path / "model.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_checkpoint_without_a_state_dict_says_where_it_looked(tmp_path):
    torch.save({"epoch": 1, "notes": "hello"}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=r"keys \['epoch', 'notes'\] and no state_dict"):
        load_model(tmp_path / "odd.pt")
