"""Rows whose log-weights are all -inf, and log-weights that are not real floating point (issue 24, item 6).

A row of zero weights makes every estimator -inf; that is almost never the model's true log p(x)
(a finite density that underflowed in float32, an infinite parameter), so ``estimate`` refuses it as
``sweep`` does, with one sentence naming the rows by dataset index and the likely cause. Integer
log-weights have lost their fractions and complex ones are no log-densities: both are refused,
never converted.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import evalkit
from evalkit_cli.main import main
from evalkit.errors import InputError
from evalkit.models.base import LatentVariableModel

FAR = (3, 6)  # rows placed ~1e19 from the data: (x - b)^2 ~ 1e39 overflows float32 to inf


def _far_rows_model():
    torch.manual_seed(0)
    model = evalkit.models.LinearGaussianModel.random(data_dim=5, latent_dim=2)
    x = model.marginal().sample((8,)).double()
    x[FAR[0]], x[FAR[1]] = 3e19, -4e19
    return model, x


class _DeadRows(LatentVariableModel):
    """log w = -|noise|^2 / 2 - x_0, and -inf for every datapoint whose x_0 > 5; ``out_dtype`` casts the result."""

    def __init__(self, out_dtype=None):
        super().__init__()
        self.noise_shape, self.data_dim, self.out_dtype = (2,), 3, out_dtype
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def log_weights(self, x, noise):
        log_w = -0.5 * (noise ** 2).sum(-1) - 3.7 * x[:, :1] + self.bias
        log_w = torch.where(x[:, :1] > 5, torch.full_like(log_w, -float("inf")), log_w)
        return log_w if self.out_dtype is None else log_w.to(self.out_dtype)


@pytest.mark.parametrize("run", ["estimate", "sweep"])
def test_float32_underflow_rows_are_refused_by_estimate_and_sweep_naming_them(run):
    # On main, estimate printed iwae -inf with no row named (and sweep a table of n/a).
    model, x = _far_rows_model()
    call = (lambda: evalkit.estimate(model, data=x, k=20, dtype=torch.float32, progress=False)) if run == "estimate" \
        else (lambda: evalkit.sweep(model, data=x, ks=[1, 2, 5, 20], dtype=torch.float32, progress=False))
    with pytest.raises(InputError) as info:
        call()
    message = str(info.value)
    assert "dataset indices [3, 6] is -inf (2 of 8 datapoints)" in message and "-inf" in message
    assert "--dtype float64" in message and message.count(". ") == 0  # one sentence


def test_the_same_rows_in_float64_are_finite_and_exact():
    # The fix the message suggests works: the linear-Gaussian model's proposal is its exact posterior,
    # so every log-weight equals log p(x) (about -3e39 at the far rows) and IWAE is exact.
    model, x = _far_rows_model()
    result = evalkit.estimate(model, data=x, k=20, dtype=torch.float64, estimators=["iwae"], progress=False)
    exact = model.log_marginal(x).mean().item()
    assert result.summary.set_index("estimator").loc["iwae", "estimate"] == pytest.approx(exact, rel=1e-12)


def test_model_rows_refused_with_dataset_indices_under_indices():
    x = torch.zeros(6, 3)
    x[2, 0] = x[4, 0] = 9.0
    with pytest.raises(InputError, match=r"dataset indices \[2, 4\] is -inf \(2 of 6 datapoints\)"):
        evalkit.estimate(_DeadRows(), data=x, k=10, progress=False)
    # Rows whose dataset indices are given (indices=) are named by them.
    with pytest.raises(InputError, match=r"dataset indices \[12, 14\] is -inf \(2 of 6 datapoints\)"):
        evalkit.estimate(_DeadRows(), data=x, k=10, indices=list(range(10, 16)), progress=False)


def test_rows_after_the_first_block_are_named_too():
    x = torch.zeros(70, 3)
    x[[1, 40, 69], 0] = 9.0
    with pytest.raises(InputError, match=r"dataset indices \[1, 40, 69\] is -inf \(3 of 70 datapoints\)"):
        evalkit.estimate(_DeadRows(), data=x, k=4, estimators=["iwae"], block_size=32, progress=False)


@pytest.mark.parametrize("call", ["estimate", "sweep", "estimate_from_log_weights"])
def test_a_matrix_with_zero_weight_rows_is_refused_naming_them(call):
    log_w = np.random.default_rng(0).normal(size=(5, 10))
    log_w[[1, 3]] = -np.inf
    log_w[2, :9] = -np.inf  # one finite weight: a legal row
    with pytest.raises(InputError, match=r"rows \[1, 3\] is -inf \(2 of 5 rows"):
        getattr(evalkit, call)(log_w)


@pytest.mark.parametrize("dtype", [torch.int64, torch.complex64])
def test_a_model_returning_integer_or_complex_log_weights_is_refused(dtype):
    # On main, int64 was truncated without a word (IWAE -0.69 instead of the model's float value)
    # and complex lost its imaginary part with a raw torch warning.
    x = torch.randn(6, 3)
    with pytest.raises(InputError, match=rf"_DeadRows.log_weights\(x, noise\) returned {dtype} values; "
                                         "log-weights must be real floating point"):
        evalkit.estimate(_DeadRows(dtype), data=x, k=10, progress=False)


@pytest.mark.parametrize("dtype", [np.int64, np.complex128])
@pytest.mark.parametrize("call", ["estimate", "sweep", "estimate_from_log_weights"])
def test_an_integer_or_complex_matrix_is_refused(call, dtype):
    log_w = np.array([[-8.72, -8.5, -9.1, -8.0], [-7.3, -7.9, -8.1, -7.7]])
    with pytest.raises(InputError, match="must be real floating point numbers"):
        getattr(evalkit, call)(log_w.astype(dtype) if dtype is np.int64 else log_w + 0j)


def test_cli_estimate_refuses_zero_weight_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, x = _far_rows_model()
    evalkit.save_model(model, "lg.pt")
    np.save("far.npy", x.numpy())
    result = CliRunner().invoke(main, ["estimate", "lg.pt", "--data", "far.npy", "-k", "20", "-o", "out.json", "-q"])
    assert result.exit_code == 1
    assert "dataset indices [3, 6] is -inf (2 of 8 datapoints)" in result.output and "--dtype float64" in result.output
    assert not (tmp_path / "out.json").exists()
    ok = CliRunner().invoke(main, ["estimate", "lg.pt", "--data", "far.npy", "-k", "20", "--dtype", "float64",
                                   "-e", "iwae", "-q", "--format", "json"])
    assert ok.exit_code == 0, ok.output


def test_cli_sweep_refuses_an_integer_log_weights_file(tmp_path):
    path = tmp_path / "lw.npy"
    np.save(path, np.full((4, 10), -8, dtype=np.int64))
    result = CliRunner().invoke(main, ["sweep", "--log-weights", str(path), "--ks", "1,2,5,10", "-q"])
    assert result.exit_code == 1 and "must be real floating point numbers" in result.output
