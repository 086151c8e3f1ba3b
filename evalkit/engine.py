"""The seeded, memory-bounded log-weight engine.

:func:`log_weights` turns a model and a dataset into the ``[N, K]`` float64 matrix

    log w[n, i] = log p(x_n, z_ni) - log q(z_ni | x_n),   z_ni = reparameterised(eps_ni),

where ``eps_ni`` comes from datapoint ``n``'s own random stream (:mod:`evalkit.noise`).

Batching invariance, bit for bit (CPU). The noise of a datapoint depends only on
``(seed, dataset index)``, and every model call sees a row count that is a multiple of
:data:`ROW_ALIGN` (the batch is padded by repeating its last row; padded outputs are dropped).
torch's CPU matmuls give each row bitwise the same result whatever the row count and the row's
position once the row count is a multiple of 32, while small or unaligned row counts change the
last bits (float32 below 8 rows; float64 even 2999 versus 3000 rows). So the result does not
depend on ``batch_size``, ``k_chunk``, the order of the data or how it is sliced; the tests
check this bit for bit in float32 and float64. On CUDA, results are deterministic for a fixed
plan but may differ in the last bits between plans.

Layers, so that caching, sharding and retries can be added around them:

* :func:`_model_call` -- one padded model call on ``[B, k_chunk]``;
* :func:`_chunks` -- the (rows, columns) work items of a plan;
* :func:`compute_log_weights` -- fills an output tensor for a contiguous range of datapoints
  (a shard), given a prepared model and a :class:`ChunkPlan`;
* :func:`log_weights` -- validation, device, model preparation, planning, progress.
"""
from __future__ import annotations

import copy
import math
import os
import sys
import warnings
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from .data import check_data_for_model, rows_text
from .errors import InputError, ResourceError
from .memory import (
    SampleCost,
    default_memory_budget,
    estimate_sample_cost,
    format_bytes,
    measure_sample_cost,
    parse_memory_budget,
)
from .models.base import check_model
from .noise import NOISE_BLOCK, NoiseBlocks, check_seed

ROW_ALIGN = 32
"""Every model call gets a multiple of this many datapoint rows (see module notes)."""

MAX_ROWS_PER_CALL = {"cpu": 8192, "cuda": 2**18}
"""Largest ``batch x k_chunk`` the planner chooses: on CPU larger calls fall out of cache
(measured, IWAE 784-200-200-50: 6.2 us/sample at 8192 rows, 9-13 us/sample at 16k-64k rows)."""

MEMORY_MARGIN = 1.25
"""Factor on measured working memory (allocator rounding, workspaces the probe cannot see)."""

PROGRESS_DELAY_S = 2.0
"""With ``progress=None`` the bar appears only once a run has taken this long (and stderr is a TTY)."""

COMPUTE_DTYPES = (torch.float32, torch.float64)


@dataclass(frozen=True)
class ChunkPlan:
    """How a run is cut into model calls.

    Attributes
    ----------
    batch_size : int
        Datapoints per model call (the call itself is padded to a multiple of ROW_ALIGN rows).
    k_chunk : int
        Samples per datapoint per model call.
    memory_budget : int
        Bytes the plan was fitted to.
    cost : SampleCost
        Working memory per datapoint and per sample, engine buffers and margin included.
    """

    batch_size: int
    k_chunk: int
    memory_budget: int
    cost: SampleCost

    @property
    def call_bytes(self) -> int:
        """Estimated working memory of one model call."""
        rows = _round_up(self.batch_size, ROW_ALIGN)
        return rows * (self.cost.bytes_per_datapoint + self.k_chunk * self.cost.bytes_per_sample)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


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


def _pad_rows(tensor: torch.Tensor, n_pad: int) -> torch.Tensor:
    """Append ``n_pad`` copies of the last row (dimension 0)."""
    if n_pad == 0:
        return tensor
    return torch.cat([tensor, tensor[-1:].expand(n_pad, *tensor.shape[1:])])


def _model_call(model: torch.nn.Module, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Return ``model.log_weights`` for one chunk, padded to a multiple of ROW_ALIGN rows.

    Parameters
    ----------
    x : Tensor, shape (B, D), compute dtype, on the device
    noise : Tensor, shape (B, k_chunk, *noise_shape), compute dtype, on the device

    Returns
    -------
    Tensor, shape (B, k_chunk), float64, on the device
    """
    n_rows, n_samples = noise.shape[0], noise.shape[1]
    n_pad = _round_up(n_rows, ROW_ALIGN) - n_rows
    out = model.log_weights(_pad_rows(x, n_pad), _pad_rows(noise, n_pad))
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n_rows + n_pad, n_samples):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(
            f"{type(model).__name__}.log_weights(x, noise) returned {shape} for x of shape {(n_rows + n_pad, x.shape[1])} "
            f"and noise of shape {(n_rows + n_pad, *noise.shape[1:])}; it must return a tensor "
            f"[{n_rows + n_pad}, {n_samples}] (one log-weight per datapoint and sample)."
        )
    return out[:n_rows].to(torch.float64)


def _chunks(n_rows: int, batch_size: int, k: int, k_chunk: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(row_start, row_stop, k0, k1)`` work items, columns fastest."""
    for row_start in range(0, n_rows, batch_size):
        for k0 in range(0, k, k_chunk):
            yield row_start, min(row_start + batch_size, n_rows), k0, min(k0 + k_chunk, k)


def _invalid_weights_error(log_w: torch.Tensor, indices: torch.Tensor) -> Optional[InputError]:
    """Return an error naming the datapoints with NaN or +inf log-weights, or None."""
    for label, mask in (("NaN", torch.isnan(log_w)), ("+inf", torch.isposinf(log_w))):
        rows = mask.any(dim=1).nonzero().flatten()
        if len(rows):
            return InputError(
                f"the model returned {label} log-weights for datapoints with dataset indices {rows_text(indices[rows])} "
                f"({len(rows)} datapoints in the batch that failed)"
                + ("; an importance weight cannot be infinite, " if label == "+inf" else "; ")
                + "check the model's parameters and these datapoints (e.g. a scale that underflows to 0)."
            )
    return None


def compute_log_weights(
    model: torch.nn.Module,
    data: torch.Tensor,
    indices: torch.Tensor,
    k: int,
    plan: ChunkPlan,
    *,
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
    out: torch.Tensor,
    executor: Optional[Executor] = None,
    progress: Optional[tqdm] = None,
) -> torch.Tensor:
    """Fill ``out`` with the log-weights of a contiguous range of datapoints (a shard).

    Parameters
    ----------
    model : prepared model (on ``device``, in ``dtype``, eval mode)
    data : Tensor, shape (n, D)
    indices : LongTensor, shape (n,)
        Dataset index of each row: its random stream.
    k : int
    plan : ChunkPlan
    out : Tensor, shape (n, k), float64, CPU
        Written in place and returned.

    Notes
    -----
    The noise of the next chunk is drawn on the CPU before the current chunk's result is
    copied back, so on CUDA noise generation overlaps the GPU's work.
    """
    noise_shape = tuple(model.noise_shape)
    index_list = indices.tolist()

    def prepared_chunks():
        noise_blocks, x = None, None
        for row_start, row_stop, k0, k1 in _chunks(len(data), plan.batch_size, k, plan.k_chunk):
            if k0 == 0:
                noise_blocks = NoiseBlocks(seed, index_list[row_start:row_stop], noise_shape, executor=executor)
                x = data[row_start:row_stop].to(device=device, dtype=dtype)
            noise = noise_blocks.columns(k0, k1).to(dtype)
            yield row_start, row_stop, k0, k1, x, noise

    chunks = prepared_chunks()
    item = next(chunks, None)
    while item is not None:
        row_start, row_stop, k0, k1, x, noise = item
        log_w = _model_call(model, x, noise.to(device))
        item = next(chunks, None)
        block = out[row_start:row_stop, k0:k1]
        block.copy_(log_w)
        error = _invalid_weights_error(block, indices[row_start:row_stop])
        if error is not None:
            raise error
        if progress is not None:
            progress.update((row_stop - row_start) * (k1 - k0))
    return out


def model_sample_cost(model: torch.nn.Module, x_probe: torch.Tensor, dtype: torch.dtype) -> SampleCost:
    """Return the working memory of the model's calls, engine buffers and margin included.

    Uses ``model.bytes_per_sample(dtype)`` (and ``model.bytes_per_datapoint(dtype)`` if
    present) when the model defines it; otherwise measures two small probe calls on
    ``x_probe`` (:func:`evalkit.memory.measure_sample_cost`); when measuring sees nothing or
    fails, estimates from the parameter shapes (a model error then surfaces in the real run).
    Engine buffers per sample: noise in float64 and in the compute dtype (twice, for the chunk
    being computed and the next one) and the float64 result copy; per datapoint: the cached
    noise block and the data row.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    noise_numel = math.prod(model.noise_shape)
    if callable(getattr(model, "bytes_per_sample", None)):
        per_datapoint = getattr(model, "bytes_per_datapoint", None)
        cost = SampleCost(
            int(per_datapoint(dtype)) if callable(per_datapoint) else 0, int(model.bytes_per_sample(dtype)), "model"
        )
    else:
        n_rows = x_probe.shape[0]

        def probe(n_samples: int) -> torch.Tensor:
            noise = torch.zeros(n_rows, n_samples, *model.noise_shape, dtype=dtype, device=x_probe.device)
            return model.log_weights(x_probe, noise)

        try:
            cost = measure_sample_cost(probe, n_rows, x_probe.device)
        except Exception:  # the run itself reports model errors, with the real noise
            cost = None
        cost = cost or estimate_sample_cost(model, dtype)
    per_sample = MEMORY_MARGIN * cost.bytes_per_sample + 2 * noise_numel * (8 + 2 * itemsize) + 16
    per_datapoint = MEMORY_MARGIN * cost.bytes_per_datapoint + NOISE_BLOCK * noise_numel * 8 + x_probe.shape[1] * itemsize
    return SampleCost(int(per_datapoint), int(per_sample), cost.source)


def plan_chunks(
    n_rows: int,
    k: int,
    cost: SampleCost,
    memory_budget: int,
    *,
    device: torch.device,
    batch_size: Optional[int] = None,
    k_chunk: Optional[int] = None,
    budget_is_explicit: bool = False,
) -> ChunkPlan:
    """Choose ``batch_size`` and ``k_chunk`` so that one model call fits ``memory_budget``.

    A call on ``B`` datapoints pads to ``Bp = ceil(B / 32) * 32`` rows and needs
    ``Bp * (cost.bytes_per_datapoint + k_chunk * cost.bytes_per_sample)`` bytes. With neither
    given, ``k_chunk`` is the largest that fits with 32 rows (capped at ``k`` and at
    MAX_ROWS_PER_CALL / 32, and rounded down to a multiple of NOISE_BLOCK when below ``k``),
    then ``batch_size`` the largest multiple of 32 that fits (capped at MAX_ROWS_PER_CALL /
    k_chunk and at ``n_rows`` rounded up). A value given by the caller is kept and the other
    fitted around it; with both given, they are checked against an explicit budget only.

    Raises
    ------
    ResourceError
        When the budget cannot hold one call with the smallest choice; the message names the
        minimum budget.
    """
    per_datapoint, per_sample = cost.bytes_per_datapoint, cost.bytes_per_sample
    rows_cap = MAX_ROWS_PER_CALL[device.type]

    def need(n_batch: int, n_samples: int) -> int:
        return _round_up(n_batch, ROW_ALIGN) * (per_datapoint + n_samples * per_sample)

    def too_small(what: str, minimum: int) -> ResourceError:
        return ResourceError(
            f"memory_budget of {format_bytes(memory_budget)} is below the {format_bytes(minimum)} that {what} needs; "
            f"raise memory_budget to at least {format_bytes(minimum)}"
            + (" or lower batch_size / k_chunk." if what != "one sample per datapoint" else ".")
        )

    if batch_size is not None and k_chunk is not None:
        batch_size, k_chunk = min(batch_size, n_rows), min(k_chunk, k)
        if budget_is_explicit and need(batch_size, k_chunk) > memory_budget:
            raise too_small(f"batch_size={batch_size} with k_chunk={k_chunk}", need(batch_size, k_chunk))
    elif batch_size is not None:
        batch_size = min(batch_size, n_rows)
        rows = _round_up(batch_size, ROW_ALIGN)
        fit = (memory_budget // rows - per_datapoint) // per_sample
        if fit < 1:
            raise too_small(f"batch_size={batch_size} with one sample per datapoint", need(batch_size, 1))
        k_chunk = max(1, min(k, fit, rows_cap // rows))
        if NOISE_BLOCK <= k_chunk < k:
            k_chunk -= k_chunk % NOISE_BLOCK
    else:
        if k_chunk is None:
            fit = (memory_budget // ROW_ALIGN - per_datapoint) // per_sample
            if fit < 1:
                raise too_small("one sample per datapoint", need(ROW_ALIGN, 1))
            k_chunk = min(k, fit, rows_cap // ROW_ALIGN)
            if NOISE_BLOCK <= k_chunk < k:
                k_chunk -= k_chunk % NOISE_BLOCK
        k_chunk = min(k_chunk, k)
        rows = min(memory_budget // (per_datapoint + k_chunk * per_sample), max(rows_cap // k_chunk, ROW_ALIGN))
        rows -= rows % ROW_ALIGN
        if rows < ROW_ALIGN:
            raise too_small(f"k_chunk={k_chunk}", need(ROW_ALIGN, k_chunk))
        batch_size = min(rows, _round_up(n_rows, ROW_ALIGN))
    return ChunkPlan(int(batch_size), int(k_chunk), int(memory_budget), cost)


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


def _progress_bar(progress: Optional[bool], total: int) -> tqdm:
    if progress not in (None, True, False):
        raise InputError(f"Expected argument `progress` to be None, True or False, got {progress!r}.")
    show = progress is True or (progress is None and sys.stderr.isatty())
    return tqdm(total=total, unit="sample", unit_scale=True, desc="log-weights", file=sys.stderr,
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
    progress: Optional[bool] = None,
) -> torch.Tensor:
    """Compute ``k`` importance log-weights for every datapoint.

    Parameters
    ----------
    model : torch.nn.Module
        Follows the protocol (``log_weights(x, noise)``, ``noise_shape``, ``data_dim``,
        ``requires_binary_data``; see docs/model-protocol.md). Never modified: it is copied
        when its device or dtype differs from the computation's.
    data : Tensor, shape (N, D)
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
        result does not depend on it (each call is padded to a multiple of 32 rows).
    k_chunk : int, optional
        Samples per datapoint per model call; default from the memory budget (a multiple of
        256 when below ``k``, which avoids redrawing noise blocks). Result does not depend on it.
    memory_budget : int or str, optional
        Working memory for the computation: bytes or a string like ``"512MB"``, ``"2GiB"``.
        Default: 70 % of free CUDA memory, or 50 % of available RAM on CPU. Excludes the
        model, the data and the returned matrix.
    device : str or torch.device, optional
        Default CUDA when available, else CPU.
    dtype : torch.float32 or torch.float64, default float32
        Compute dtype of the model and the noise. Log-density terms are combined and returned
        in float64 either way.
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
    Peak working memory is one model call, ``[B, k_chunk]`` samples; the ``[B, K, D]``
    decoder outputs of a whole datapoint batch are never held at once. Cost: ``N * k``
    decoder passes and ``N * ceil(k / k_chunk)`` encoder passes.

    Examples
    --------
    >>> import evalkit, torch
    >>> model = evalkit.models.LinearGaussianModel.random(data_dim=5, latent_dim=2)
    >>> x = model.marginal().sample((10,))
    >>> log_w = evalkit.engine.log_weights(model, x, 100, dtype=torch.float64, progress=False)
    >>> torch.allclose(log_w, model.log_marginal(x)[:, None])  # exact posterior as proposal
    True
    """
    check_model(model)
    k = _positive_int(k, "k")
    seed = check_seed(seed)
    if batch_size is not None:
        batch_size = _positive_int(batch_size, "batch_size")
    if k_chunk is not None:
        k_chunk = _positive_int(k_chunk, "k_chunk")
    if dtype not in COMPUTE_DTYPES:
        raise InputError(f"Expected argument `dtype` to be torch.float32 or torch.float64, got {dtype!r}.")
    check_data_for_model(data, model)
    indices = _check_indices(indices, data.shape[0])
    device = resolve_device(device)
    budget_is_explicit = memory_budget is not None
    budget = parse_memory_budget(memory_budget) if budget_is_explicit else default_memory_budget(device)

    out = torch.empty(data.shape[0], k, dtype=torch.float64)
    with prepared_model(model, device, dtype) as run_model, torch.inference_mode():
        x_probe = _pad_rows(data[:ROW_ALIGN].to(device=device, dtype=dtype), max(0, ROW_ALIGN - len(data)))
        cost = model_sample_cost(run_model, x_probe, dtype)
        plan = plan_chunks(data.shape[0], k, cost, budget, device=device, batch_size=batch_size,
                           k_chunk=k_chunk, budget_is_explicit=budget_is_explicit)
        n_threads = min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(n_threads) if n_threads > 1 else _no_executor() as executor, \
                _progress_bar(progress, data.shape[0] * k) as bar:
            compute_log_weights(run_model, data, indices, k, plan, seed=seed, device=device, dtype=dtype,
                                out=out, executor=executor, progress=bar)
    return out


@contextmanager
def _no_executor() -> Iterator[None]:
    yield None


__all__ = ["log_weights", "compute_log_weights", "plan_chunks", "model_sample_cost", "prepared_model",
           "resolve_device", "ChunkPlan", "ROW_ALIGN"]
