"""The seeded, memory-bounded log-weight engine.

:func:`log_weights` turns a model and a dataset into the ``[N, K]`` float64 matrix

    log w[n, i] = log p(x_n, z_ni) - log q(z_ni | x_n),   z_ni = reparameterised(eps_ni),

where ``eps_ni`` comes from datapoint ``n``'s own random stream (:mod:`evalkit.noise`).

Batching invariance, bit for bit (CPU). The noise of a datapoint depends only on
``(seed, dataset index)``. torch's CPU kernels do not give a row bitwise the same result
wherever it sits in a call: a matmul's row count changes the last bits unless it is a
multiple of 32 (float32 below 8 rows; float64 even 2999 versus 3000 rows), and for narrow
layers the row's position modulo 2 or 4 does too (MKL's kernels treat rows in pairs or
quads: measured for Linear(6, 6) or Linear(50, 4)), as does an element's position in a SIMD
vector for ``sigmoid``. So every model call is laid out the same way whatever the plan:

* datapoint ``n`` sits in a row ``slot`` with ``slot % 32 == n % 32`` (its dataset index);
  unused slots repeat a datapoint of the call and their outputs are dropped;
* sample columns are cut at multiples of 32 and every call is padded (with zero noise) to a
  multiple of 32 columns, so the decoder row of sample ``i`` of datapoint ``n`` sits at a
  position congruent to ``i`` modulo 32 (for ``k < 32`` one call holds all ``k`` columns and
  the position is congruent to ``(n % 32) * k + i``); every call has a multiple of 32 rows.

The result then does not depend on ``batch_size``, ``k_chunk``, the number of threads, the
order of the data or how it is sliced; the tests check this bit for bit in float32 and
float64. The padding costs at most 31 samples per datapoint (0.6 % at K = 5000). On CUDA, and
with ``compile=True``, results are deterministic for a fixed plan but may differ in the last
bits between plans.

Throughput. On the CPU the engine runs whole model calls on ``threads`` worker threads, each
with one intra-op thread: torch's own OpenMP threads meet at a barrier after every operation,
which on a machine shared with other work (load above the core count) made a run 2.5x slower
than one thread. On CUDA one thread drives the GPU while a thread pool draws the next call's
noise into pinned memory; inputs go up on a separate stream, so drawing noise, transfers and
compute overlap.

Where things live (one layer on top of the other, so that caching, sharding and retries can be
added around them):

* :mod:`evalkit.sampling.plan` -- :class:`ChunkPlan`, :func:`plan_chunks`,
  :func:`model_sample_cost`, :func:`call_columns`: how large one model call is;
* :mod:`evalkit.sampling.runner` -- the datapoints of each call and their slots, the runner that
  prepares, launches and finishes one call, and :func:`compute_log_weights`, which fills an output
  tensor for some datapoints given a prepared model and a plan;
* this module -- :func:`log_weights` (validation, device, model preparation, planning, progress),
  :func:`resolve_device`, :func:`prepared_model`; the names above are re-exported here.
"""
from __future__ import annotations

import copy
import os
import sys
import warnings
from contextlib import contextmanager, nullcontext
from typing import Iterator, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from ..data import as_data_tensor, check_data_for_model
from ..errors import InputError, ResourceError
from ..models.base import check_model
from ..noise import check_seed
from .memory import SampleCost, default_memory_budget, parse_memory_budget  # noqa: F401 (parse_memory_budget re-exported)
from .sizes import check_matrix_fits
from .plan import (CPU_CALL_BYTES, MAX_ROWS_PER_CALL, MEMORY_MARGIN, ROW_ALIGN, ChunkPlan,  # noqa: F401 (re-exported)
                   _plan_for_workers, call_columns, model_sample_cost, plan_chunks)
from .runner import (NOISE_THREADS, _CompiledCall, _make_batches, _pad_rows, compute_log_weights,  # noqa: F401
                     torch_compile_messages)


PROGRESS_DELAY_S = 2.0
"""With ``progress=None`` the bar appears only once a run has taken this long (and stderr is a TTY)."""


COMPUTE_DTYPES = (torch.float32, torch.float64)

def resolve_device(device: Union[None, str, torch.device]) -> torch.device:
    """Return the compute device: CUDA when available for ``None``; check that CUDA exists."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"Expected argument `device` to be None, 'cpu', 'cuda' or 'cuda:N', got {device!r}.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ResourceError("device='cuda' was requested but torch sees no CUDA GPU; pass device='cpu' (or None).")
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ResourceError(
                f"device='cuda:{index}' was requested but only {torch.cuda.device_count()} GPU(s) are visible; "
                "pick an index below that."
            )
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise InputError(f"Expected argument `device` to be None, 'cpu' or 'cuda[:N]', got {str(device)!r}.")
    return device


@contextmanager
def prepared_model(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> Iterator[torch.nn.Module]:
    """Yield ``model`` on ``device`` in ``dtype`` and eval mode, never modifying the caller's model.

    The model is deep-copied when any floating parameter or buffer has another device or
    dtype; otherwise it is switched to eval mode and its train/eval flags are restored after.
    """
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.device != device or (t.is_floating_point() and t.dtype != dtype) for t in tensors):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ScriptModule.to warns about .grad of non-leaf tensors
                converted = copy.deepcopy(model).to(device=device, dtype=dtype)
        except Exception as err:  # a user model that cannot be copied
            raise InputError(
                f"cannot copy the model to convert it to {device}/{dtype} ({err}); "
                f"convert it yourself with model.to(device='{device}', dtype={dtype})."
            ) from err
        yield converted.eval()
        return
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


GLIBC_MMAP_THRESHOLD = 32 * 2**20
"""Buffers below this size come from the heap (glibc's largest allowed value)."""

GLIBC_TRIM_THRESHOLD = 512 * 2**20
"""Freed memory kept for reuse before glibc returns it to the kernel."""

_malloc_tuned = False


def _keep_freed_memory() -> None:
    """Make glibc reuse freed multi-megabyte buffers instead of unmapping them (once per process).

    A model call's temporaries are a few megabytes each. By default glibc serves such sizes
    with fresh ``mmap`` calls (or trims them off the heap when freed), so every call
    page-faults its working memory in again: the IWAE 784-200-200-50 ran at 12 us per sample
    that way against 7.3 us with the thresholds raised, while a bare forward pass (fewer
    buffers alive at once) was unaffected. Freed memory then stays with the process for the
    next call; peak memory is unchanged. Skipped off glibc, and when the user set either
    threshold through glibc's environment variables.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return
    _malloc_tuned = True
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ \
            or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl's allocator has no such thresholds
        m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
        libc.mallopt(m_mmap_threshold, GLIBC_MMAP_THRESHOLD)
        libc.mallopt(m_trim_threshold, GLIBC_TRIM_THRESHOLD)
    except (OSError, AttributeError):
        pass


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"Expected argument `{name}` to be a positive int, got {value!r}.")
    return value


def _check_indices(indices: object, n_rows: int) -> torch.Tensor:
    if indices is None:
        return torch.arange(n_rows)
    indices = torch.as_tensor(indices)
    if indices.dim() != 1 or indices.shape[0] != n_rows or indices.is_floating_point() or indices.is_complex():
        raise InputError(
            f"Expected argument `indices` to be an integer tensor of shape ({n_rows},) (each row's index in the full "
            f"dataset), got dtype {indices.dtype} and shape {tuple(indices.shape)}."
        )
    indices = indices.long()
    if n_rows and int(indices.min()) < 0:
        raise InputError(f"Expected argument `indices` to be non-negative dataset indices, got minimum {int(indices.min())}.")
    return indices


def _progress_bar(progress: Optional[bool], total: int, *, desc: str = "log-weights", unit: str = "sample") -> tqdm:
    """A bar on stderr: shown when ``progress`` is True, or None and stderr is a terminal (after a delay)."""
    if progress not in (None, True, False):
        raise InputError(f"Expected argument `progress` to be None, True or False, got {progress!r}.")
    show = progress is True or (progress is None and sys.stderr.isatty())
    return tqdm(total=total, unit=unit, unit_scale=True, desc=desc, file=sys.stderr,
                disable=not show, delay=0 if progress else PROGRESS_DELAY_S, leave=False)


def log_weights(
    model: torch.nn.Module,
    data: torch.Tensor,
    k: int,
    *,
    seed: int = 0,
    indices: Optional[Union[torch.Tensor, Sequence[int]]] = None,
    batch_size: Optional[int] = None,
    k_chunk: Optional[int] = None,
    memory_budget: Optional[Union[int, str]] = None,
    device: Optional[Union[str, torch.device]] = None,
    dtype: torch.dtype = torch.float32,
    threads: Optional[int] = None,
    compile: bool = False,
    tf32: bool = False,
    progress: Optional[bool] = None,
) -> torch.Tensor:
    """Compute ``k`` importance log-weights for every datapoint.

    Parameters
    ----------
    model : torch.nn.Module
        Follows the protocol (``log_weights(x, noise)``, ``noise_shape``, ``data_dim``,
        ``requires_binary_data``; see docs/model-protocol.md). Never modified: it is copied
        when its device or dtype differs from the computation's. With ``threads > 1`` on the
        CPU, ``log_weights`` is called from several threads at once, so it must not write to
        the module (none of evalkit's models do; pass ``threads=1`` for one that does).
    data : Tensor or numpy array, shape (N, D)
        float64 stays float64; other values are computed from float32 (as :func:`evalkit.estimate`).
    k : int
        Importance samples per datapoint.
    seed : int, default 0
        Run seed, ``0 <= seed < 2**64``.
    indices : LongTensor, shape (N,), optional
        Each row's index in the full dataset (default ``arange(N)``). Row ``n``'s noise comes
        from the stream of ``(seed, indices[n])``, so
        ``log_weights(model, data[perm], k, indices=perm)`` equals ``full[perm]`` bit for bit,
        and slices, shards and resumed runs reproduce the full run.
    batch_size : int, optional
        Datapoints per model call; default from the memory budget. A memory knob only: the
        result does not depend on it (see the module notes).
    k_chunk : int, optional
        Samples per datapoint per model call; default from the memory budget and the
        cache-friendly call size (a multiple of 32 when below ``k``). Calls are padded to a
        multiple of 32 samples. The result does not depend on it.
    memory_budget : int or str, optional
        Working memory for the computation: bytes or a string like ``"512MB"``, ``"2GiB"``.
        Default: 70 % of free CUDA memory, or 50 % of available RAM on CPU. Excludes the
        model, the data and the returned matrix. On the CPU it is shared by the worker threads.
    device : str or torch.device, optional
        Default CUDA when available, else CPU.
    dtype : torch.float32 or torch.float64, default float32
        Compute dtype of the model and the noise. Log-density terms are combined and returned
        in float64 either way.
    threads : int, optional
        CPU: worker threads, each running whole model calls on one core (default
        ``torch.get_num_threads()``; 1 runs in the calling thread). CUDA: threads drawing
        noise (default the CPU count, at most 32). The result does not depend on it.
    compile : bool, default False
        Run ``model.log_weights`` through ``torch.compile`` (the first calls compile, which
        takes seconds to a minute; needs a C++ compiler on the CPU). If compiling fails, the
        run continues eagerly with a warning. Compiled kernels may round differently, so the
        bits may then depend on the plan; CPU runs call the model from the calling thread,
        which the compiled code parallelises with torch's intra-op threads.
    tf32 : bool, default False
        On CUDA, allow TensorFloat-32 matmuls (10-bit mantissa products, several times faster
        on Ampere and later GPUs; log-weights change by about 1e-3 relative). No effect on CPU.
    progress : bool, optional
        None: a tqdm bar on stderr when stderr is a terminal and the run takes over 2 s;
        True: always; False: never.

    Returns
    -------
    Tensor, shape (N, k), float64, CPU
        ``log p(x_n, z_ni) - log q(z_ni | x_n)``; ``-inf`` is allowed (a zero weight).

    Raises
    ------
    InputError
        Bad arguments, a model that breaks the protocol, or NaN / +inf log-weights (the
        message names the datapoints).
    DataError
        Data that do not fit the model (shape, non-finite values, non-binary data for a
        Bernoulli decoder).
    ResourceError
        ``device='cuda'`` without a GPU, or a memory budget below one model call.

    Notes
    -----
    Peak working memory is one model call per worker, ``[slots, k_chunk]`` samples; the
    ``[B, K, D]`` decoder outputs of a whole datapoint batch are never held at once. Cost:
    ``N * k`` decoder passes (plus column padding) and ``N * ceil(k / k_chunk)`` encoder passes.

    Examples
    --------
    >>> import evalkit, torch
    >>> model = evalkit.models.LinearGaussianModel.random(data_dim=5, latent_dim=2)
    >>> x = model.marginal().sample((10,))
    >>> log_w = evalkit.sampling.engine.log_weights(model, x, 100, dtype=torch.float64, progress=False)
    >>> torch.allclose(log_w, model.log_marginal(x)[:, None])  # exact posterior as proposal
    True
    """
    check_model(model)
    k, seed, batch_size, k_chunk, threads = _checked_sizes(k, seed, batch_size, k_chunk, threads)
    _check_dtype_and_flags(dtype, compile=compile, tf32=tf32)
    data = as_data_tensor(data)  # numpy arrays as estimate and sweep take them
    check_data_for_model(data, model)
    indices = _check_indices(indices, data.shape[0])
    device = resolve_device(device)
    budget_is_explicit = memory_budget is not None
    budget = parse_memory_budget(memory_budget) if budget_is_explicit else default_memory_budget(device)
    threads = _default_threads(threads, device, compile)

    if device.type == "cpu":
        _keep_freed_memory()
    check_matrix_fits(data.shape[0], k, what=f"the log-weights of {data.shape[0]} datapoints",
                      budget=budget if budget_is_explicit else None,
                      way_out=", or run on a machine with more memory")
    out = torch.empty(data.shape[0], k, dtype=torch.float64)
    with _run_settings(model, device, dtype, tf32) as run_model:
        x_probe = _pad_rows(data[:ROW_ALIGN].to(device=device, dtype=dtype), max(0, ROW_ALIGN - len(data)))
        cost = model_sample_cost(run_model, x_probe, dtype)
        plan, workers = _plan_for_workers(data.shape[0], k, cost, budget, device=device, batch_size=batch_size,
                                          k_chunk=k_chunk, budget_is_explicit=budget_is_explicit, threads=threads)
        call = _CompiledCall(run_model) if compile else run_model.log_weights
        with _progress_bar(progress, data.shape[0] * k) as bar, (torch_compile_messages() if compile else nullcontext()):
            compute_log_weights(run_model, data, indices, k, plan, seed=seed, device=device, dtype=dtype,
                                out=out, threads=workers, call=call, progress=bar)
    return out


def _checked_sizes(k: object, seed: object, batch_size: object, k_chunk: object, threads: object) -> tuple:
    """``(k, seed, batch_size, k_chunk, threads)`` checked: positive ints (the last three may be None) and a valid seed."""
    k = _positive_int(k, "k")
    seed = check_seed(seed)
    if batch_size is not None:
        batch_size = _positive_int(batch_size, "batch_size")
    if k_chunk is not None:
        k_chunk = _positive_int(k_chunk, "k_chunk")
    if threads is not None:
        threads = _positive_int(threads, "threads")
    return k, seed, batch_size, k_chunk, threads


def _check_dtype_and_flags(dtype: object, *, compile: object, tf32: object) -> None:
    """Refuse a compute dtype other than float32 / float64, and ``compile`` / ``tf32`` that are not booleans."""
    if dtype not in COMPUTE_DTYPES:
        raise InputError(f"Expected argument `dtype` to be torch.float32 or torch.float64, got {dtype!r}.")
    for name, flag in (("compile", compile), ("tf32", tf32)):
        if not isinstance(flag, bool):
            raise InputError(f"Expected argument `{name}` to be True or False, got {flag!r}.")


def _default_threads(threads: Optional[int], device: torch.device, compile: bool) -> int:
    """Worker threads on the CPU (noise threads on CUDA): as given, else the intra-op count (CPU) or CPU count (CUDA)."""
    if threads is None:
        threads = torch.get_num_threads() if device.type == "cpu" else (os.cpu_count() or 1)
    if compile and device.type == "cpu":
        threads = 0  # compiled code runs in the calling thread, with torch's intra-op threads
    return threads


@contextmanager
def _run_settings(model: torch.nn.Module, device: torch.device, dtype: torch.dtype,
                  tf32: bool) -> Iterator[torch.nn.Module]:
    """Yield the prepared model, under inference mode, the TF32 setting and (on CUDA) the device."""
    with prepared_model(model, device, dtype) as run_model, torch.inference_mode(), _tf32(device, tf32), \
            (torch.cuda.device(device) if device.type == "cuda" else nullcontext()):
        yield run_model


@contextmanager
def _tf32(device: torch.device, enabled: bool) -> Iterator[None]:
    """Allow TF32 matmuls and convolutions on CUDA for the duration of a run, then restore the settings."""
    if device.type != "cuda" or not enabled:
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn



__all__ = ["log_weights", "compute_log_weights", "plan_chunks", "model_sample_cost", "prepared_model",
           "resolve_device", "ChunkPlan", "ROW_ALIGN", "call_columns"]
