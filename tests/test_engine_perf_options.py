"""Engine performance options: worker threads, the call layout, compile, tf32, the GPU path, memory reuse."""
import warnings

import pytest
import torch

import evalkit
from evalkit.sampling import engine
from evalkit.sampling.engine import ROW_ALIGN, _make_batches, call_columns, log_weights
from evalkit.errors import InputError
from evalkit.models import IWAE, MLPVAE
from evalkit.models.densities import Tanh, bernoulli_log_likelihood


def binary(n_rows, data_dim, seed=0):
    return torch.bernoulli(torch.full((n_rows, data_dim), 0.4), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def narrow():
    """Layers of width 5, 6 and 3: MKL gives such rows position-dependent bits (pairs or quads)."""
    torch.manual_seed(3)
    return IWAE(10, [5, 3], [[6, 6], [6, 6]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_worker_thread_counts_give_the_same_bits(narrow, dtype):
    x = binary(75, 10)
    one = log_weights(narrow, x, 300, seed=2, threads=1, dtype=dtype, progress=False)
    for threads in (2, 3):
        for batch_size, k_chunk in ((None, None), (7, 64), (40, 300)):
            out = log_weights(narrow, x, 300, seed=2, threads=threads, batch_size=batch_size, k_chunk=k_chunk,
                              dtype=dtype, progress=False)
            assert torch.equal(out, one), (threads, batch_size, k_chunk)


def test_workers_restore_the_callers_thread_count(narrow):
    before = torch.get_num_threads()
    log_weights(narrow, binary(70, 10), 64, threads=2, batch_size=32, progress=False)
    log_weights(narrow, binary(70, 10), 64, threads=1, progress=False)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("indices", [[5, 37, 69, 101, 2, 3, 34], [0, 0, 0, 32, 64], list(range(100, 0, -3))])
def test_layout_puts_each_datapoint_at_its_index_modulo_32(indices):
    indices = torch.tensor(indices)
    for batch_size in (1, 3, 32, 100):
        batches = _make_batches(indices, batch_size)
        seen = sorted(row for batch in batches for row in batch.rows.tolist())
        assert seen == list(range(len(indices)))  # every row exactly once
        for batch in batches:
            assert len(batch.indices) <= batch_size and batch.n_slots % ROW_ALIGN == 0
            assert batch.n_slots <= -(-batch_size // ROW_ALIGN) * ROW_ALIGN
            assert (batch.slots % ROW_ALIGN == torch.tensor(batch.indices) % ROW_ALIGN).all()
            assert len(set(batch.slots.tolist())) == len(batch.indices)
            assert batch.indices == sorted(batch.indices)


def test_sparse_and_repeated_indices_reproduce_the_full_run(narrow):
    x = binary(130, 10, seed=1)
    full = log_weights(narrow, x, 40, seed=5, progress=False)
    pick = torch.tensor([129, 3, 64, 3, 96, 0, 33])
    assert torch.equal(log_weights(narrow, x[pick], 40, seed=5, indices=pick, progress=False), full[pick])


@pytest.mark.parametrize("k,k_chunk,expected", [(1, 1, 1), (20, 7, 20), (31, 100, 31), (32, 1, 32), (1000, 256, 256),
                                                (1000, 1000, 1024), (1000, 13, 32), (5000, 5000, 5024)])
def test_call_columns(k, k_chunk, expected):
    assert call_columns(k_chunk, k) == expected


def test_an_error_in_a_worker_names_the_earliest_failing_batch():
    class FailsFrom(MLPVAE):
        def log_weights(self, x, noise):
            out = super().log_weights(x, noise)
            return torch.where(x[:, :1] > 1.5, torch.nan, out)  # datapoints whose first pixel is 2

    torch.manual_seed(0)
    model = FailsFrom(4, 2, (4,), likelihood="gaussian")
    x = torch.zeros(200, 4)
    x[[150, 199], 0] = 2.0
    with pytest.raises(InputError, match=r"dataset indices \[150\]"):
        log_weights(model, x, 40, threads=2, batch_size=32, progress=False)


def test_tf32_has_no_effect_on_the_cpu(narrow):
    x = binary(40, 10)
    assert torch.equal(log_weights(narrow, x, 50, tf32=True, device="cpu", progress=False),
                       log_weights(narrow, x, 50, device="cpu", progress=False))


@pytest.mark.parametrize("kwargs,message", [({"threads": 0}, "`threads`"), ({"compile": "yes"}, "`compile`"),
                                            ({"tf32": 1}, "`tf32`")])
def test_bad_performance_options_name_the_argument(narrow, kwargs, message):
    with pytest.raises(InputError, match=message):
        log_weights(narrow, binary(3, 10), 4, progress=False, **kwargs)


def test_compile_failure_falls_back_to_eager_with_one_warning(narrow, monkeypatch):
    def broken_compile(fn, *args, **kwargs):
        def compiled(*a, **k):
            raise RuntimeError("no C++ compiler found")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    x = binary(40, 10)
    eager = log_weights(narrow, x, 64, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = log_weights(narrow, x, 64, compile=True, batch_size=8, progress=False)
    messages = [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
    assert len(messages) == 1 and "no C++ compiler found" in messages[0]
    assert torch.equal(out, eager)


def test_a_model_error_under_compile_is_the_models_error(monkeypatch):
    class Broken(MLPVAE):
        def log_weights(self, x, noise):
            raise InputError("the model's own complaint")

    monkeypatch.setattr(torch, "compile", lambda fn, *a, **k: fn)
    with pytest.raises(InputError, match="the model's own complaint"):
        log_weights(Broken(4, 2, (4,), likelihood="gaussian"), torch.zeros(3, 4), 8, compile=True, progress=False)


@pytest.mark.slow
def test_compile_really_compiles_and_stays_close(narrow):
    x = binary(40, 10)
    eager = log_weights(narrow, x, 100, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = log_weights(narrow, x, 100, compile=True, progress=False)
    assert (compiled - eager).abs().max() < 1e-4


def test_glibc_thresholds_are_set_once_and_respect_the_environment(monkeypatch):
    monkeypatch.setattr(engine, "_malloc_tuned", False)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    engine._keep_freed_memory()  # the user's own tuning wins: nothing to do, and no error
    assert engine._malloc_tuned


def test_fast_cpu_kernels_match_the_plain_formulas():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(64, 300, dtype=torch.float64, generator=g) * 4
    assert torch.allclose(Tanh()(h), torch.tanh(h), rtol=0, atol=1e-15)
    assert (Tanh()(h.float()).double() - torch.tanh(h)).abs().max() < 2.5e-7
    logits = torch.randn(5, 7, 784, dtype=torch.float64, generator=g) * 20
    x = torch.bernoulli(torch.full((5, 784), 0.3, dtype=torch.float64), generator=g)
    # log sigmoid((2x - 1) l) = -log(1 + exp(-(2x - 1) l)); softplus itself cuts off at 20.
    plain = -torch.logaddexp(torch.zeros(()), -(2 * x[:, None] - 1) * logits).sum(-1)
    assert torch.allclose(bernoulli_log_likelihood(logits.clone(), x), plain, rtol=1e-13, atol=1e-10)
    assert torch.allclose(bernoulli_log_likelihood(logits.clone(), x, overwrite=True), plain, rtol=1e-13, atol=1e-10)
    got32 = bernoulli_log_likelihood(logits.float(), x.float()).double()
    assert ((got32 - plain).abs() / plain.abs()).max() < 1e-6
    with torch.enable_grad():  # autograd takes the out-of-place path and differentiates
        leaf = logits.clone().requires_grad_()
        bernoulli_log_likelihood(leaf, x, overwrite=True).sum().backward()
        assert torch.allclose(leaf.grad, x[:, None] - torch.sigmoid(logits))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("tf32", [False, True])
def test_gpu_path_matches_the_cpu(tf32):
    torch.manual_seed(0)
    model = IWAE.burda_one_layer()
    x = binary(70, 784)
    cpu = log_weights(model, x, 600, seed=1, device="cpu", progress=False)
    gpu = log_weights(model, x, 600, seed=1, device="cuda", tf32=tf32, progress=False)
    assert gpu.device.type == "cpu" and gpu.dtype == torch.float64
    tolerance = 5e-2 if tf32 else 2e-3  # float32 (or TF32) rounding of ~500-nat log-weights
    assert (gpu - cpu).abs().max() < tolerance
    again = log_weights(model, x, 600, seed=1, device="cuda", tf32=tf32, progress=False)
    assert torch.equal(gpu, again)  # deterministic for a fixed plan
    assert torch.backends.cuda.matmul.allow_tf32 is False or not tf32  # restored afterwards


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_path_with_data_on_the_gpu_and_small_chunks():
    torch.manual_seed(0)
    model = IWAE(64, [6, 3], [[24, 24], [12, 12]])
    x = binary(50, 64)
    ref = log_weights(model, x, 300, seed=2, device="cuda", progress=False)
    out = log_weights(model, x.cuda(), 300, seed=2, device="cuda", batch_size=7, k_chunk=40, progress=False)
    assert (out - ref).abs().max() < 1e-3


def test_default_device_falls_back_to_the_cpu_without_a_gpu(narrow):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert evalkit.sampling.engine.resolve_device(None).type == "cpu"
    assert log_weights(narrow, binary(3, 10), 4, progress=False).shape == (3, 4)


def test_parallel_noise_writer_of_the_gpu_path_draws_the_same_noise():
    """The GPU path draws each datapoint's blocks in a thread pool straight into the (pinned) call buffer."""
    from concurrent.futures import ThreadPoolExecutor

    from evalkit.noise import NoiseBlocks

    indices = [3, 70, 5, 1000, 9, 33]
    serial = NoiseBlocks(4, indices, (3,)).columns(200, 700)
    slots = torch.tensor([3, 6, 5, 8, 9, 1])
    out = torch.zeros(12, 500, 3, dtype=torch.float32)
    with ThreadPoolExecutor(3) as executor:
        NoiseBlocks(4, indices, (3,), executor=executor).write_columns(200, 700, out, slots)
    assert torch.equal(out[slots], serial.float())
    unused = torch.ones(12, dtype=torch.bool)
    unused[slots] = False
    assert (out[unused] == 0).all()
