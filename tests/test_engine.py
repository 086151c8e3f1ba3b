"""The log-weight engine: bitwise batching invariance, errors, planning, memory, progress."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from evalkit.sampling.engine import MAX_ROWS_PER_CALL, ROW_ALIGN, log_weights, model_sample_cost, plan_chunks
from evalkit.errors import DataError, InputError, ResourceError
from evalkit.sampling.memory import SampleCost, measure_sample_cost, parse_memory_budget
from evalkit.models import IWAE, MLPVAE, LinearGaussianModel
from evalkit.noise import NOISE_BLOCK

REPO = Path(__file__).resolve().parents[1]


def binary_data(n_rows: int, data_dim: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n_rows, data_dim), 0.4), generator=generator)


@pytest.fixture(autouse=True, scope="module")
def one_intra_op_thread():
    """Thousands of tiny model calls: with two OpenMP threads on a loaded two-core machine each call
    can stall on a barrier for ~100 ms. One thread gives the same bits (test below) and keeps this fast."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return MLPVAE(64, 4, (32, 32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bitwise_identical_across_batch_size_and_k_chunk(vae, dtype):
    """batch_size in {1, 7, N} and k_chunk in {1, 13, k}: each value appears, against the default plan."""
    x = binary_data(37, 64)  # more than one 32-row group, not a multiple of 32
    k = 20
    full = log_weights(vae, x, k, seed=1, dtype=dtype, progress=False)
    assert full.shape == (37, k) and full.dtype == torch.float64 and full.device.type == "cpu"
    for batch_size, k_chunk in ((1, k), (1, 13), (7, 1), (7, 13), (37, 1), (37, 13), (37, k)):
        out = log_weights(vae, x, k, seed=1, dtype=dtype, batch_size=batch_size, k_chunk=k_chunk, progress=False)
        assert torch.equal(out, full), (batch_size, k_chunk)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bitwise_identical_for_shuffled_and_sliced_data(vae, dtype):
    x = binary_data(45, 64, seed=1)
    full = log_weights(vae, x, 30, seed=2, dtype=dtype, progress=False)
    perm = torch.randperm(45, generator=torch.Generator().manual_seed(0))
    shuffled = log_weights(vae, x[perm], 30, seed=2, indices=perm, dtype=dtype, batch_size=7, progress=False)
    assert torch.equal(shuffled, full[perm])
    sliced = log_weights(vae, x[5:23], 30, seed=2, indices=torch.arange(5, 23), dtype=dtype, progress=False)
    assert torch.equal(sliced, full[5:23])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bitwise_identical_across_noise_blocks_for_a_hierarchical_model(dtype):
    torch.manual_seed(1)
    model = IWAE(64, [6, 3], [[24, 24], [12, 12]])
    x = binary_data(40, 64, seed=2)
    k = NOISE_BLOCK + 44  # chunks straddle the first noise block
    full = log_weights(model, x, k, dtype=dtype, progress=False)
    for batch_size, k_chunk in ((7, 100), (40, 257), (33, 13)):
        out = log_weights(model, x, k, dtype=dtype, batch_size=batch_size, k_chunk=k_chunk, progress=False)
        assert torch.equal(out, full), (batch_size, k_chunk)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bitwise_identical_across_intra_op_thread_counts(dtype):
    torch.manual_seed(2)
    model = IWAE(64, [6, 3], [[24, 24], [12, 12]])
    x = binary_data(70, 64, seed=3)
    one = log_weights(model, x, 300, dtype=dtype, progress=False)
    torch.set_num_threads(2)
    try:
        two = log_weights(model, x, 300, dtype=dtype, progress=False)
    finally:
        torch.set_num_threads(1)
    assert torch.equal(one, two)


def test_seed_and_index_choose_the_stream(vae):
    x = binary_data(4, 64)
    a = log_weights(vae, x, 8, seed=0, progress=False)
    assert torch.equal(a, log_weights(vae, x, 8, seed=0, progress=False))
    assert not torch.equal(a, log_weights(vae, x, 8, seed=1, progress=False))
    same_rows = log_weights(vae, x[[0, 0]], 8, indices=[0, 0], progress=False)
    assert torch.equal(same_rows[0], same_rows[1])
    other_index = log_weights(vae, x[:1], 8, indices=[5], progress=False)
    assert not torch.equal(other_index[0], a[0])


def test_float32_and_float64_see_the_same_noise():
    model = LinearGaussianModel.random(6, 2, seed=4)
    model = model.with_proposal(*[t * 1.1 for t in model.exact_posterior_params()])
    x = model.marginal().sample((10,))
    low = log_weights(model, x, 20, dtype=torch.float32, progress=False)
    high = log_weights(model, x, 20, dtype=torch.float64, progress=False)
    assert (low - high).abs().max() < 1e-3  # rounding only: same samples


def test_caller_model_is_not_modified():
    model = LinearGaussianModel.random(5, 2, seed=0)  # float64 buffers: the engine works on a float32 copy
    x = model.marginal().sample((3,))
    log_weights(model, x, 4, dtype=torch.float32, progress=False)
    assert model.weight.dtype == torch.float64
    vae = MLPVAE(5, 2, (4,), likelihood="gaussian").train()  # float32: used in place, in eval mode
    before = {key: value.clone() for key, value in vae.state_dict().items()}
    log_weights(vae, x.float(), 4, progress=False)
    assert all(module.training for module in vae.modules())
    assert all(torch.equal(before[key], value) for key, value in vae.state_dict().items())


class _Constant(torch.nn.Module):
    """Returns a fixed log-weight matrix pattern: ``bad`` rows get ``value``."""

    def __init__(self, bad_rows, value):
        super().__init__()
        self.noise_shape, self.data_dim, self.requires_binary_data = (1,), 2, False
        self.bad_rows, self.value = bad_rows, value

    def log_weights(self, x, noise):
        out = torch.zeros(noise.shape[:2], dtype=torch.float64)
        rows = x[:, 0].long()  # the datapoint carries its id in column 0
        for row in self.bad_rows:
            out[rows == row] = self.value
        return out


@pytest.mark.parametrize("value,label", [(float("nan"), "NaN"), (float("inf"), r"\+inf")])
def test_invalid_log_weights_name_the_datapoints(value, label):
    x = torch.stack([torch.arange(10.0), torch.zeros(10)], dim=1)
    model = _Constant([3, 7], value)
    with pytest.raises(InputError, match=rf"{label} log-weights for datapoints with dataset indices \[13, 17\]"):
        log_weights(model, x, 5, indices=torch.arange(10, 20), progress=False)


def test_minus_infinity_is_a_valid_log_weight():
    x = torch.stack([torch.arange(4.0), torch.zeros(4)], dim=1)
    out = log_weights(_Constant([1], float("-inf")), x, 3, progress=False)
    assert torch.isneginf(out[1]).all() and (out[[0, 2, 3]] == 0).all()


def test_wrong_output_shape_is_explained():
    class Wrong(_Constant):
        def log_weights(self, x, noise):
            return torch.zeros(noise.shape[1])

    with pytest.raises(InputError, match=r"must return a tensor \[32, 3\]"):
        log_weights(Wrong([], 0.0), torch.zeros(4, 2), 3, progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_a_resource_error(vae):
    with pytest.raises(ResourceError, match="no CUDA GPU"):
        log_weights(vae, binary_data(2, 64), 3, device="cuda", progress=False)


def test_budget_below_one_call_names_the_minimum(vae):
    with pytest.raises(ResourceError, match=r"raise memory_budget to at least [0-9.]+ KiB"):
        log_weights(vae, binary_data(2, 64), 3, memory_budget=1000, progress=False)


def test_explicit_chunks_beyond_an_explicit_budget_are_refused(vae):
    with pytest.raises(ResourceError, match="batch_size=64 with k_chunk=512"):
        log_weights(vae, binary_data(64, 64), 512, batch_size=64, k_chunk=512, memory_budget="1MB", progress=False)


@pytest.mark.parametrize(
    "kwargs,message",
    [({"k": 0}, "`k` to be a positive int"), ({"seed": -1}, r"`seed` to be in \[0, 2\*\*64\)"),
     ({"batch_size": 0}, "`batch_size`"), ({"dtype": torch.float16}, "`dtype`"),
     ({"indices": [0, 1]}, r"`indices` to be an integer tensor of shape \(3,\)"), ({"progress": "yes"}, "`progress`"),
     ({"device": "tpu"}, "`device`"), ({"memory_budget": "lots"}, "`memory_budget`")],
)
def test_bad_arguments_name_the_argument(vae, kwargs, message):
    arguments = {"k": 2, "progress": False, **kwargs}
    with pytest.raises(InputError, match=message):
        log_weights(vae, binary_data(3, 64), **arguments)


def test_data_are_checked_against_the_model(vae):
    with pytest.raises(DataError, match="data_dim=64"):
        log_weights(vae, binary_data(3, 10), 2, progress=False)
    with pytest.raises(DataError, match="binarize='bernoulli'"):
        log_weights(vae, torch.rand(3, 64), 2, progress=False)


@pytest.mark.parametrize(
    "text,expected",
    [(4096, 4096), ("512MB", 512 * 10**6), ("2GiB", 2 * 2**30), ("1.5 GB", 1_500_000_000), ("64k", 65536), ("10 b", 10)],
)
def test_parse_memory_budget(text, expected):
    assert parse_memory_budget(text) == expected


def test_plan_fits_the_budget_with_aligned_rows_and_block_chunks():
    cost = SampleCost(bytes_per_datapoint=10_000, bytes_per_sample=1_000, source="model")
    for budget in (2**21, 2**22, 2**24, 2**30):  # the smallest call is 32 slots x 32 columns (1.3 MiB here)
        plan = plan_chunks(1000, 5000, cost, budget, device=torch.device("cpu"))
        assert plan.call_bytes <= budget
        assert plan.batch_size % ROW_ALIGN == 0
        assert plan.k_chunk % NOISE_BLOCK == 0 or (plan.k_chunk < NOISE_BLOCK and plan.k_chunk % ROW_ALIGN == 0)
    small = plan_chunks(1000, 100, cost, 2**30, device=torch.device("cpu"))
    assert small.batch_size * small.columns <= MAX_ROWS_PER_CALL["cpu"] and small.k_chunk in (100, 64, 32)
    assert plan_chunks(5, 100, cost, 2**30, device=torch.device("cpu")).batch_size == 32
    user = plan_chunks(1000, 5000, cost, 2**24, device=torch.device("cpu"), batch_size=10)
    assert user.batch_size == 10 and user.call_bytes <= 2**24


def test_model_memory_hook_and_measurement():
    class Hooked(MLPVAE):
        def bytes_per_sample(self, dtype):
            return 123_456

    class Unhooked(MLPVAE):
        bytes_per_sample = None  # not callable: the engine measures

    x = binary_data(32, 64)
    assert model_sample_cost(Hooked(64, 4, (8,)), x, torch.float32).source == "model"
    measured = model_sample_cost(Unhooked(64, 4, (32, 32)), x, torch.float32)
    # Per sample the decoder holds at least its 64 logits and 32-wide hidden layers in float32.
    assert measured.source == "measured" and measured.bytes_per_sample >= 4 * (64 + 32)
    assert model_sample_cost(MLPVAE(64, 4, (32, 32)), x, torch.float32).source == "model"  # built-ins state it


@pytest.mark.parametrize("model", [IWAE.burda_one_layer(), IWAE.burda_two_layer(), MLPVAE(784, 20, (400, 200))],
                         ids=["burda1", "burda2", "mlpvae"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_builtin_memory_statements_cover_the_measured_working_memory(model, dtype):
    x = binary_data(32, 784).to(dtype)
    model = model.to(dtype)
    with torch.inference_mode():  # as the engine runs it
        # The first call caches the sigmoid-form weights, model memory like the parameters.
        model.log_weights(x, torch.zeros(32, 1, *model.noise_shape, dtype=dtype))
        measured = measure_sample_cost(
            lambda k: model.log_weights(x, torch.zeros(32, k, *model.noise_shape, dtype=dtype)), 32,
            torch.device("cpu"), k_small=32, k_large=64)
    # What planning needs: the statement covers the working memory of the calls measured (the
    # likelihood's cache-sized pieces make part of it fixed, so compare totals, not slopes).
    for k in (32, 64):
        stated = model.bytes_per_datapoint(dtype) + k * model.bytes_per_sample(dtype)
        assert stated >= measured.bytes_per_datapoint + k * measured.bytes_per_sample


def test_progress_bar_only_when_asked(vae, capsys):
    log_weights(vae, binary_data(3, 64), 4, progress=True)
    assert "log-weights" in capsys.readouterr().err
    log_weights(vae, binary_data(3, 64), 4, progress=False)
    assert capsys.readouterr().err == ""


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    sys.path.insert(0, {repo!r})
    import torch
    from evalkit.sampling.engine import log_weights, model_sample_cost, plan_chunks, parse_memory_budget
    from evalkit.models import MLPVAE

    torch.set_num_threads(1)  # speed on a shared machine; memory does not depend on it
    torch.manual_seed(0)
    model = MLPVAE(784, 8, (32,))
    x = torch.bernoulli(torch.full((32, 784), 0.3))
    budget = "32MiB"
    log_weights(model, x, 512, memory_budget=budget, progress=False)  # warm up libraries and pools
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = log_weights(model, x, 20000, memory_budget=budget, progress=False)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cost = model_sample_cost(model, x, torch.float32)
    plan = plan_chunks(32, 20000, cost, parse_memory_budget(budget), device=torch.device("cpu"))
    print(json.dumps({{"growth": after - before, "out_bytes": out.numel() * 8, "finite": bool(torch.isfinite(out).all()),
                      "batch_size": plan.batch_size, "k_chunk": plan.k_chunk, "call_bytes": plan.call_bytes}}))
    """
)


@pytest.mark.slow
def test_k_20000_with_small_budget_stays_far_below_holding_all_decoder_outputs():
    """Peak RSS growth of a K = 20 000 run in a fresh process, against [B, K, D_x] float32 = 2.0 GB.

    The budget (32 MiB) bounds one model call; the [32, 20000] float64 result (5 MB) comes on top.
    """
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT.format(repo=str(REPO))],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    naive = 32 * 20000 * 784 * 4
    assert report["finite"] and report["k_chunk"] < 20000
    assert report["call_bytes"] <= 32 * 2**20
    assert report["growth"] < 32 * 2**20 + report["out_bytes"] + 24 * 2**20, report
    assert report["growth"] * 20 < naive, report
