"""Your own model in a few lines: the README's Lightning and pythae glue against independent math.

* The README's glue code is run as written (extracted from README.md), on checkpoints written by
  hand in the two layouts (a Lightning ``.ckpt``: ``{"state_dict": {"vae.encoder...": ...},
  "epoch", "pytorch-lightning_version", ...}``; pythae's ``model.pt``: ``{"model_state_dict":
  ...}``), so neither library is needed.
* IWAE through evalkit equals a hand-written computation from the engine's noise (float64);
  a log-variance encoder set to the exact posterior of a linear-Gaussian model gives log p(x)
  exactly, and the same numbers read as a log standard deviation do not.
* ``diagonal_normal`` against ``Normal`` with each parameterisation; its refusals.
* The factory module is found in the current directory by the console-script entry point, and
  a factory that builds the wrapper gets an error naming the attribute to build.
"""
import json
import math
import os
import re
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.distributions import Independent, MultivariateNormal, Normal

import evalkit
from evalkit.errors import InputError
from evalkit.models import check_model, diagonal_normal
from evalkit.models.checkpoints import PrefixStrippedWarning, load_model, resolve_factory
from evalkit.noise import draw_noise

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
GLUE_END = "# ---- end of my_glue.py"


def _readme_block(marker: str) -> str:
    found = [block for block in BLOCKS if marker in block]
    assert len(found) == 1, f"the README has one python block containing {marker!r}"
    return found[0]


def lightning_glue_source() -> str:
    block = _readme_block("# my_glue.py")
    assert GLUE_END in block
    return block.split(GLUE_END)[0]


def pythae_glue_module() -> types.ModuleType:
    """The README's pythae block up to (not including) the stand-in checkpoint it writes."""
    block = _readme_block("class PythaeVAE")
    source = block.split("# A stand-in for what pythae's model.save")[0]
    module = types.ModuleType("readme_pythae")
    exec(compile(source, "README.md (pythae block)", "exec"), module.__dict__)
    return module


def module_from_source(name: str, source: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(source, f"README.md ({name})", "exec"), module.__dict__)
    return module


def binary(n_rows, data_dim, seed=0):
    return torch.bernoulli(torch.full((n_rows, data_dim), 0.3), generator=torch.Generator().manual_seed(seed))


def lightning_checkpoint(path: Path, vae: nn.Module) -> None:
    """What Trainer.fit saves for a LightningModule with ``self.vae = vae`` and a metric beside it."""
    state = {f"vae.{key}": value for key, value in vae.state_dict().items()}
    state["val_metric.total"] = torch.tensor(3.0)  # a torchmetrics-like state outside the VAE
    torch.save({"epoch": 9, "global_step": 2250, "pytorch-lightning_version": "2.4.0", "state_dict": state,
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]}],
                "lr_schedulers": [], "callbacks": {}, "loops": {}, "hyper_parameters": {"latent_dim": 8}}, path)


def iwae(log_w: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(log_w, dim=1) - math.log(log_w.shape[1])


# ----------------------------------------------------------------------------------------------
# diagonal_normal


def test_diagonal_normal_each_parameterisation_equals_normal_with_its_sigma():
    g = torch.Generator().manual_seed(0)
    mean, raw, z = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(3))
    cases = [({"log_var": raw}, torch.exp(0.5 * raw)), ({"log_std": raw}, torch.exp(raw)),
             ({"scale": raw.exp()}, raw.exp())]
    for kwargs, sigma in cases:
        q = diagonal_normal(mean, **kwargs)
        assert q.batch_shape == (5,) and q.event_shape == (3,)
        expected = (-(z - mean) ** 2 / (2 * sigma**2) - torch.log(sigma) - 0.5 * math.log(2 * math.pi)).sum(-1)
        torch.testing.assert_close(q.log_prob(z), expected, rtol=0, atol=1e-12)
        torch.testing.assert_close(q.log_prob(z), Independent(Normal(mean, sigma), 1).log_prob(z), rtol=0, atol=0)
    # The two readings of one encoder output are different distributions.
    gap = diagonal_normal(mean, log_var=raw).log_prob(z) - diagonal_normal(mean, log_std=raw).log_prob(z)
    assert gap.abs().max() > 0.5


def test_diagonal_normal_log_var_keeps_tiny_sigmas():
    q = diagonal_normal(torch.zeros(2), log_var=torch.tensor([-200.0, -1000.0], dtype=torch.float64))
    assert torch.equal(q.base_dist.scale, torch.exp(torch.tensor([-100.0, -500.0], dtype=torch.float64)))
    assert bool((q.base_dist.scale > 0).all()) and float(torch.exp(torch.tensor(-1000.0, dtype=torch.float64)).sqrt()) == 0


def test_diagonal_normal_event_dims():
    q = diagonal_normal(torch.zeros(4, 2, 3), log_std=torch.zeros(4, 2, 3), event_dims=2)
    assert q.batch_shape == (4,) and q.event_shape == (2, 3)


@pytest.mark.parametrize("kwargs,named", [({}, "none"), ({"log_var": 0, "log_std": 0}, "log_var, log_std"),
                                          ({"log_var": 0, "log_std": 0, "scale": 1}, "log_var, log_std, scale")])
def test_diagonal_normal_refuses_ambiguity(kwargs, named):
    kwargs = {key: torch.full((3,), float(value)) for key, value in kwargs.items()}
    with pytest.raises(InputError, match=re.escape(f"exactly one of log_var=, log_std= or scale= (got {named})")):
        diagonal_normal(torch.zeros(3), **kwargs)


# ----------------------------------------------------------------------------------------------
# The Lightning layout


def lightning_by_hand(vae, x, seed, k):
    """IWAE of the README's MyVAE written out with explicit formulas (no torch.distributions)."""
    eps = draw_noise(seed, range(len(x)), 0, k, vae.noise_shape)                   # [B, k, d]
    with torch.no_grad():
        mean, log_var = vae.encoder(x).chunk(2, dim=-1)
        z = mean.unsqueeze(1) + torch.exp(0.5 * log_var).unsqueeze(1) * eps
        half_log_2pi = 0.5 * math.log(2 * math.pi)
        log_q = (-0.5 * eps**2 - 0.5 * log_var.unsqueeze(1) - half_log_2pi).sum(-1)
        log_prior = (-0.5 * z**2 - half_log_2pi).sum(-1)
        logits = vae.decoder(z)
        log_lik = (x.unsqueeze(1) * logits - nn.functional.softplus(logits)).sum(-1)
    return iwae(log_prior + log_lik - log_q)


def test_lightning_checkpoint_through_the_readme_glue_equals_a_hand_computation(tmp_path):
    glue = module_from_source("my_glue", lightning_glue_source())
    torch.manual_seed(1)
    trained = glue.build_vae().double()
    with torch.no_grad():                       # not the initial weights: a visible log-variance
        for parameter in trained.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    lightning_checkpoint(tmp_path / "last.ckpt", trained)

    with warnings.catch_warnings():
        warnings.simplefilter("error")          # the explicit prefix is silent
        model = load_model(tmp_path / "last.ckpt", factory=glue.build_vae, prefix="vae.")
    with pytest.warns(PrefixStrippedWarning, match=r"prefix 'vae\.' .* ignored 1 keys"):
        detected = load_model(tmp_path / "last.ckpt", factory=glue.build_vae)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(detected.state_dict().values(), trained.state_dict().values()))

    x = binary(40, 64).double()
    log_w = evalkit.log_weights(model, x, k=96, seed=5, dtype=torch.float64, progress=False)
    expected = lightning_by_hand(trained, x, seed=5, k=96)
    torch.testing.assert_close(iwae(log_w), expected, rtol=0, atol=1e-10)
    # Through estimate(): the mean over datapoints.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", evalkit.errors.WeightWarning)
        result = evalkit.estimate(model, x, k=96, seed=5, dtype=torch.float64, estimators=["iwae"])
    assert float(result.summary["estimate"][0]) == pytest.approx(float(expected.mean()), abs=1e-10)


# ----------------------------------------------------------------------------------------------
# The pythae layout, on a linear-Gaussian model whose log p(x) is known


class LinearEncoder(nn.Module):
    """A custom pythae encoder: returns ``embedding`` and ``log_covariance`` (a log-variance)."""

    def __init__(self, data_dim, latent_dim):
        super().__init__()
        self.embedding, self.log_var = nn.Linear(data_dim, latent_dim), nn.Linear(data_dim, latent_dim)

    def forward(self, x):
        return {"embedding": self.embedding(x), "log_covariance": self.log_var(x)}


class LinearDecoder(nn.Module):
    def __init__(self, data_dim, latent_dim):
        super().__init__()
        self.layer = nn.Linear(latent_dim, data_dim)

    def forward(self, z):
        return {"reconstruction": self.layer(z)}


def linear_gaussian(pythae):
    """z ~ N(0, I_2), x | z ~ N(W z + b, I_4) with W^T W diagonal, so q = the exact posterior is diagonal.

    Posterior: covariance S = (I + W^T W)^-1 (diagonal), mean S W^T (x - b).
    """
    w = torch.tensor([[1.0, 0.5], [1.0, -0.5], [1.0, 0.5], [1.0, -0.5]], dtype=torch.float64)   # W^T W = diag(4, 1)
    b = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=torch.float64)
    s = torch.diag(1.0 / (1.0 + torch.diagonal(w.T @ w)))
    model = pythae.PythaeVAE(LinearEncoder(4, 2), LinearDecoder(4, 2), 2, 4, reconstruction_loss="mse").double()
    with torch.no_grad():
        model.decoder.layer.weight.copy_(w)
        model.decoder.layer.bias.copy_(b)
        model.encoder.embedding.weight.copy_(s @ w.T)
        model.encoder.embedding.bias.copy_(-(s @ w.T @ b))
        model.encoder.log_var.weight.zero_()
        model.encoder.log_var.bias.copy_(torch.log(torch.diagonal(s)))
    marginal = MultivariateNormal(b, w @ w.T + torch.eye(4, dtype=torch.float64))
    return model, marginal


def test_pythae_model_pt_with_a_log_variance_encoder_gives_the_exact_log_px(tmp_path):
    pythae = pythae_glue_module()
    trained, marginal = linear_gaussian(pythae)
    (tmp_path / "my_model").mkdir()
    torch.save({"model_state_dict": trained.state_dict()}, tmp_path / "my_model" / "model.pt")
    (tmp_path / "my_model" / "model_config.json").write_text(json.dumps({"name": "VAEConfig", "latent_dim": 2}))

    def build():
        return pythae.PythaeVAE(LinearEncoder(4, 2), LinearDecoder(4, 2), 2, 4, reconstruction_loss="mse")

    with warnings.catch_warnings():
        warnings.simplefilter("error")          # keys match without a prefix: nothing to warn about
        model = load_model(tmp_path / "my_model" / "model.pt", factory=build)
    assert model.encoder.embedding.weight.dtype == torch.float64
    torch.manual_seed(0)
    x = marginal.sample(torch.Size([37]))
    log_w = evalkit.log_weights(model, x, k=64, seed=3, dtype=torch.float64, progress=False)
    exact = marginal.log_prob(x)
    # q is the exact posterior, so every log-weight is log p(x): IWAE and ELBO are exact.
    torch.testing.assert_close(log_w, exact.unsqueeze(1).expand_as(log_w), rtol=0, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # equal weights: k-hat is undefined, and evalkit says so
        result = evalkit.estimate(model, x, k=64, seed=3, dtype=torch.float64, estimators=["elbo", "iwae"])
    assert result.summary["estimate"].tolist() == pytest.approx([float(exact.mean())] * 2, abs=1e-12)


def test_pythae_log_variance_read_as_log_std_is_visibly_wrong():
    pythae = pythae_glue_module()
    model, marginal = linear_gaussian(pythae)

    class ReadAsLogStd(pythae.PythaeVAE):      # the README's earlier example copied into a pythae model
        def proposal(self, x):
            out = self.encoder(x)
            return diagonal_normal(out["embedding"], log_std=out["log_covariance"])

    wrong = ReadAsLogStd(model.encoder, model.decoder, 2, 4, reconstruction_loss="mse")
    torch.manual_seed(1)
    x = marginal.sample(torch.Size([200]))
    exact = marginal.log_prob(x)
    right = evalkit.log_weights(model, x, k=100, seed=0, dtype=torch.float64, progress=False)
    off = evalkit.log_weights(wrong, x, k=100, seed=0, dtype=torch.float64, progress=False)
    torch.testing.assert_close(iwae(right), exact, rtol=0, atol=1e-12)
    # sigma = S instead of sqrt(S) (S = diag(1/5, 1/2)): the same mean, a too narrow q. Its ELBO gap
    # is KL(q || posterior) = sum_i (S_i - 1 - log S_i) / 2 = 0.5017 nats, whatever x is.
    s = torch.tensor([0.2, 0.5], dtype=torch.float64)
    kl = float(0.5 * (s - 1 - torch.log(s)).sum())
    elbo_gap = exact - off.mean(dim=1)
    se = float(elbo_gap.std() / math.sqrt(len(x)))
    assert abs(float(elbo_gap.mean()) - kl) < 4 * se and se < 0.01, (float(elbo_gap.mean()), kl, se)
    iwae_gap = exact - iwae(off)                # IWAE-100 recovers part of it (0.10 nats left here), not all
    assert float(iwae_gap.mean()) > 3 * float(iwae_gap.std() / math.sqrt(len(x)))


def test_the_readme_pythae_stand_in_has_pythae_key_names():
    pythae = pythae_glue_module()
    keys = set(pythae.build_pythae().state_dict())
    assert {"encoder.layers.0.0.weight", "encoder.embedding.weight", "encoder.log_var.weight",
            "decoder.layers.0.0.weight", "decoder.layers.1.0.weight"} <= keys


# ----------------------------------------------------------------------------------------------
# The factory module from the current directory, and the error for a wrapper


LIT_WRAPPER = '''
from torch import nn
from my_glue import MyVAE


class LitVAE(nn.Module):                # what a LightningModule looks like to evalkit
    def __init__(self):
        super().__init__()
        self.vae = MyVAE()
'''


def console_script(args, cwd):
    """Run the CLI the way the installed `evalkit` script does: the current directory not on sys.path."""
    code = ("import os, sys; sys.path[:] = [p for p in sys.path if p not in ('', os.getcwd())]; "
            "import importlib.util; "  # the checkout's cli/ folder, imported as the installed package is
            f"spec = importlib.util.spec_from_file_location('evalkit_cli', {str(ROOT / 'cli' / '__init__.py')!r}, "
            f"submodule_search_locations=[{str(ROOT / 'cli')!r}]); "
            "sys.modules['evalkit_cli'] = importlib.util.module_from_spec(spec); "
            "spec.loader.exec_module(sys.modules['evalkit_cli']); "
            "from evalkit_cli.main import main; sys.argv = ['evalkit'] + sys.argv[1:]; main()")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_console_script_finds_the_factory_module_in_the_current_directory(tmp_path):
    (tmp_path / "my_glue.py").write_text(lightning_glue_source())
    (tmp_path / "lit_module.py").write_text(LIT_WRAPPER)
    glue = module_from_source("my_glue_copy", lightning_glue_source())
    torch.manual_seed(2)
    trained = glue.build_vae()
    lightning_checkpoint(tmp_path / "last.ckpt", trained)
    x = binary(33, 64, seed=4)
    torch.save(x, tmp_path / "x.pt")

    proc = console_script(["estimate", "last.ckpt", "--model", "my_glue:build_vae", "--prefix", "vae.",
                           "--data", "x.pt", "-k", "64", "-e", "iwae", "--dtype", "float64", "--seed", "7",
                           "--format", "json", "--quiet"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    estimate = json.loads(proc.stdout)["estimates"][0]["estimate"]
    assert estimate == pytest.approx(float(lightning_by_hand(trained.double(), x.double(), seed=7, k=64).mean()),
                                     abs=1e-10)

    proc = console_script(["estimate", "last.ckpt", "--model", "lit_module:LitVAE", "--data", "x.pt", "-k", "8"],
                          tmp_path)
    assert proc.returncode == 1
    assert ("LitVAE has no log_weights(x, noise); its attribute `vae` (MyVAE) has one: build that in your factory"
            in proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr


def test_resolve_factory_puts_the_working_directory_first(tmp_path, monkeypatch):
    (tmp_path / "glue_in_cwd_7f3.py").write_text("def build():\n    return 'built'\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert resolve_factory("glue_in_cwd_7f3:build")() == "built"
    assert sys.path[0] == str(tmp_path)
    monkeypatch.delitem(sys.modules, "glue_in_cwd_7f3")


class _Inner(nn.Module):
    noise_shape, data_dim, requires_binary_data = (1,), 1, False

    def log_weights(self, x, noise):
        return noise.sum(-1)


class _Lit(nn.Module):
    def __init__(self):
        super().__init__()
        self.loss = nn.Linear(1, 1)
        self.model = nn.Module()
        self.model.net = _Inner()               # deeper: not the one to name
        self.vae = _Inner()


def test_a_wrapper_without_log_weights_names_the_attribute_to_build():
    with pytest.raises(InputError) as raised:
        check_model(_Lit())
    assert str(raised.value).startswith(
        "_Lit has no log_weights(x, noise); its attribute `vae` (_Inner) has one: build that in your factory "
        "(return the `vae` module; the checkpoint's 'vae.' key prefix is then stripped)")
    nested = nn.Module()
    nested.wrapper = nn.Module()
    nested.wrapper.core = _Inner()
    with pytest.raises(InputError, match=r"its attribute `wrapper\.core` \(_Inner\) has one"):
        check_model(nested)
    with pytest.raises(InputError, match=r"^Linear has no log_weights\(x, noise\) method; subclass"):
        check_model(nn.Linear(2, 2))


def test_load_model_with_a_wrapper_factory_names_the_attribute(tmp_path):
    torch.save({"state_dict": {"vae.w": torch.zeros(1)}}, tmp_path / "last.ckpt")
    with pytest.raises(InputError, match=r"_Lit has no log_weights\(x, noise\); its attribute `vae` \(_Inner\)"):
        load_model(tmp_path / "last.ckpt", factory=_Lit)
