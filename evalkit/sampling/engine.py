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

Layers, so that caching, sharding and retries can be added around them:

* :func:`_make_batches` -- the datapoints of each call and their slots;
* :class:`_Runner` -- prepares, launches and finishes one call (one chunk of columns);
* :func:`compute_log_weights` -- fills an output tensor for some datapoints, given a prepared
  model and a :class:`ChunkPlan`;
* :func:`log_weights` -- validation, device, model preparation, planning, progress.
"""
from __future__ import annotations

import copy
import math
import os
import sys
import threading
import warnings
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from ..data import check_data_for_model, rows_text
from ..errors import EvalkitError, InputError, ResourceError
from .memory import (
    SampleCost,
    default_memory_budget,
    estimate_sample_cost,
    format_bytes,
    measure_sample_cost,
    parse_memory_budget,
)
from ..models.base import check_model
from ..noise import NOISE_BLOCK, NoiseBlocks, check_seed

ROW_ALIGN = 32
"""Slots and sample columns of every model call come in groups of this many (see module notes)."""

MAX_ROWS_PER_CALL = {"cpu": 8192, "cuda": 2**18}
"""Largest ``slots x padded k_chunk`` the planner chooses."""

CPU_CALL_BYTES = 64 * 2**20
"""On the CPU, calls are also capped at this much working memory (but at least 1024 rows):
larger calls fall out of cache. Measured on one AVX-512 core with a 32 MiB L3, us per sample
at 1024 / 2048 / 4096 / 8192 / 16384 rows: the bundled digits model 1.05 / 0.93 / 0.90 / 0.86
/ 0.91, IWAE 784-200-200-50 7.0 / 6.7 / 6.7 / 6.9 / 8.4, the two-layer IWAE 11.0 / 10.4 / 10.6
/ 10.8 / 13.7; this cap picks 8192, 3072 and 2048 rows for them."""

MEMORY_MARGIN = 1.25
"""Factor on measured working memory (allocator rounding, workspaces the probe cannot see)."""

PROGRESS_DELAY_S = 2.0
"""With ``progress=None`` the bar appears only once a run has taken this long (and stderr is a TTY)."""

NOISE_THREADS = 32
"""Most threads drawing noise for a GPU (numpy releases the GIL while it samples)."""

COMPUTE_DTYPES = (torch.float32, torch.float64)


@dataclass(frozen=True)
class ChunkPlan:
    """How a run is cut into model calls.

    Attributes
    ----------
    batch_size : int
        Datapoints per model call; the call has ``round_up(batch_size, 32)`` slots or fewer.
    k_chunk : int
        Samples per datapoint per model call, before the call's columns are padded (see
        :func:`call_columns`).
    memory_budget : int
        Bytes the plan was fitted to (per worker thread on the CPU).
    cost : SampleCost
        Working memory per datapoint and per sample, engine buffers and margin included.
    k : int, optional
        Samples per datapoint of the run (fixes the column padding); default ``k_chunk``.
    """

    batch_size: int
    k_chunk: int
    memory_budget: int
    cost: SampleCost
    k: Optional[int] = None

    @property
    def columns(self) -> int:
        """Sample columns of a model call, padding included."""
        return call_columns(self.k_chunk, self.k or self.k_chunk)

    @property
    def call_bytes(self) -> int:
        """Estimated working memory of one model call."""
        rows = _round_up(self.batch_size, ROW_ALIGN)
        return rows * (self.cost.bytes_per_datapoint + self.columns * self.cost.bytes_per_sample)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def call_columns(k_chunk: int, k: int) -> int:
    """Return the sample columns of a call for chunks of ``k_chunk`` of ``k`` samples, padding included.

    ``k`` itself when ``k < 32`` (one call covers every column); otherwise ``k_chunk`` (at
    most ``k``) rounded up to a multiple of 32.
    """
    return k if k < ROW_ALIGN else _round_up(min(k_chunk, k), ROW_ALIGN)


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


@dataclass
class _Batch:
    """The datapoints of one model call and where they sit in it.

    Attributes
    ----------
    rows : LongTensor, shape (B,)
        Rows of the data (and of the output) in this call, ascending dataset index.
    indices : list of int
        Their dataset indices (their random streams).
    slots : LongTensor, shape (B,)
        Their rows in the call; ``slots[b] % 32 == indices[b] % 32``.
    n_slots : int
        Rows of the call, a multiple of 32.
    """

    rows: torch.Tensor
    indices: List[int]
    slots: torch.Tensor
    n_slots: int

    def __post_init__(self) -> None:
        n = len(self.indices)
        self.index_tensor = torch.tensor(self.indices)
        # The common case (consecutive indices starting at a multiple of 32, in data order)
        # needs no gather or scatter: plain slices.
        self.slots_are_prefix = bool(torch.equal(self.slots, torch.arange(n)))
        first = int(self.rows[0])
        self.rows_are_range = bool(torch.equal(self.rows, torch.arange(first, first + n)))
        self.row_range = slice(first, first + n)
        # Every slot's data row: unused slots repeat the first datapoint.
        self.slot_rows = torch.full((self.n_slots,), first, dtype=torch.long)
        self.slot_rows[self.slots] = self.rows
        unused = torch.ones(self.n_slots, dtype=torch.bool)
        unused[self.slots] = False
        self.unused_slots = unused if n < self.n_slots else None


def _make_batches(indices: torch.Tensor, batch_size: int) -> List[_Batch]:
    """Cut the datapoints into calls of at most ``batch_size`` and lay each call out.

    Datapoints are taken in ascending dataset index (so any permutation of the same data
    makes the same calls); datapoint ``n`` goes to slot ``32 * r + n % 32``, where ``r``
    counts the call's earlier datapoints with the same residue. A call has
    ``32 * max(r + 1)`` slots, at most ``round_up(batch_size, 32)``.
    """
    order = torch.argsort(indices, stable=True)
    max_slots = _round_up(batch_size, ROW_ALIGN)
    batches: List[_Batch] = []
    rows: List[int] = []
    members: List[int] = []
    slots: List[int] = []
    counts = [0] * ROW_ALIGN

    def flush() -> None:
        batches.append(_Batch(torch.tensor(rows), list(members), torch.tensor(slots), ROW_ALIGN * max(counts)))

    for row, index in zip(order.tolist(), indices[order].tolist()):
        residue = index % ROW_ALIGN
        if rows and (len(rows) == batch_size or (counts[residue] + 1) * ROW_ALIGN > max_slots):
            flush()
            rows, members, slots, counts = [], [], [], [0] * ROW_ALIGN
        rows.append(row)
        members.append(index)
        slots.append(ROW_ALIGN * counts[residue] + residue)
        counts[residue] += 1
    if rows:
        flush()
    return batches


class _Runner:
    """Prepares, launches and finishes the model calls of one run.

    ``prepare`` builds a call's inputs on the host (pinned memory when computing on CUDA),
    ``launch`` runs the model (asynchronously on CUDA) and starts copying the result back,
    ``finish`` waits for it, writes the real rows and columns into ``out`` and checks them.
    """

    def __init__(self, model: torch.nn.Module, call: Callable, data: torch.Tensor, indices: torch.Tensor, k: int,
                 plan: ChunkPlan, *, seed: int, device: torch.device, dtype: torch.dtype, out: torch.Tensor,
                 noise_executor: Optional[Executor] = None) -> None:
        self.model, self.call, self.data, self.indices, self.k = model, call, data, indices, k
        self.seed, self.device, self.dtype, self.out = seed, device, dtype, out
        self.noise_shape = tuple(model.noise_shape)
        self.noise_executor = noise_executor
        self.cuda = device.type == "cuda"
        self.pin = self.cuda and data.device.type == "cpu"
        self.columns = call_columns(plan.k_chunk, k)
        self.batches = _make_batches(indices, plan.batch_size)
        # After a device out-of-memory error, calls are cut into pieces at most this wide / tall.
        self.max_width = self.max_slots = sys.maxsize
        self.oom_lock = threading.Lock()
        self.oom_reported = False
        if self.cuda:
            self.copy_stream = torch.cuda.Stream(device)

    def tasks(self, batch_number: int) -> List[tuple]:
        """The calls of one batch: ``(batch_number, k0, k1)``, columns cut at multiples of the call width."""
        return [(batch_number, k0, min(k0 + self.columns, self.k)) for k0 in range(0, self.k, self.columns)]

    def noise_blocks(self, batch: _Batch) -> NoiseBlocks:
        return NoiseBlocks(self.seed, batch.indices, self.noise_shape, executor=self.noise_executor)

    def prepare(self, task: tuple, noise_blocks: NoiseBlocks) -> tuple:
        batch_number, k0, k1 = task
        batch = self.batches[batch_number]
        width = call_columns(k1 - k0, self.k)
        x = self.data[batch.slot_rows]
        if self.pin:
            x = x.to(self.dtype).pin_memory()
        noise = torch.empty((batch.n_slots, width, *self.noise_shape), dtype=self.dtype, pin_memory=self.pin)
        # Padding (columns past k1, unused slots) gets zero noise; only it is written twice.
        noise[:, k1 - k0:].zero_()
        if batch.unused_slots is not None:
            noise[batch.unused_slots] = 0
        noise_blocks.write_columns(k0, k1, noise, None if batch.slots_are_prefix else batch.slots)
        return task, x, noise

    def launch(self, prepared: tuple) -> tuple:
        task, x, noise = prepared
        if self.cuda:
            # Inputs go up on their own stream, so the copy of call i + 1 overlaps call i.
            with torch.cuda.stream(self.copy_stream):
                x = x.to(self.device, self.dtype, non_blocking=True)
                noise = noise.to(self.device, non_blocking=True)
            compute_stream = torch.cuda.current_stream(self.device)
            compute_stream.wait_stream(self.copy_stream)
            x.record_stream(compute_stream)
            noise.record_stream(compute_stream)
        else:
            x = x.to(self.dtype)
        log_w = self.model_call(x, noise)
        if self.cuda:
            host = torch.empty(log_w.shape, dtype=torch.float64, pin_memory=True)
            host.copy_(log_w, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            return task, host, done
        return task, log_w, None

    def model_call(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Run one call; after a device out-of-memory error, run it again in halves.

        Columns are halved first (kept at multiples of 32, so every sample keeps its position
        modulo 32 and the bits do not change), then slots (in multiples of 32). Later calls
        start at the reduced size. The first reduction of a run is reported with one warning.
        """
        if noise.shape[1] > self.max_width or noise.shape[0] > self.max_slots:
            return self._pieces(x, noise)
        try:
            return self._checked_call(x, noise)
        except torch.OutOfMemoryError:
            pass  # retried below, outside the handler, so the failed call's memory is freed first
        if self.cuda:
            torch.cuda.empty_cache()
        self._shrink(noise.shape[0], noise.shape[1])
        return self._pieces(x, noise)

    def _shrink(self, n_slots: int, width: int) -> None:
        with self.oom_lock:
            before = (min(n_slots, self.max_slots), min(width, self.max_width))
            if width > ROW_ALIGN and width % ROW_ALIGN == 0:
                self.max_width = min(self.max_width, _round_up(-(-width // 2), ROW_ALIGN))
            elif n_slots > ROW_ALIGN:
                self.max_slots = min(self.max_slots, _round_up(-(-n_slots // 2), ROW_ALIGN))
            else:
                raise ResourceError(
                    f"out of {self.device.type} memory even for one call of {n_slots} datapoint slots x {width} samples, "
                    "the smallest evalkit makes; free device memory or run on another device (CLI: --device cpu)."
                )
            first, self.oom_reported = not self.oom_reported, True
            after = (min(n_slots, self.max_slots), min(width, self.max_width))
        if first:
            warnings.warn(
                f"out of {self.device.type} memory in a call of {before[0]} datapoint slots x {before[1]} samples; "
                f"continuing with calls of at most {after[0]} x {after[1]} (same results; a lower memory_budget "
                "starts there)",
                RuntimeWarning,
                stacklevel=2,
            )

    def _pieces(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        n_slots, width = noise.shape[0], noise.shape[1]
        rows_step, cols_step = min(n_slots, self.max_slots), min(width, self.max_width)
        rows = []
        for r0 in range(0, n_slots, rows_step):
            r1 = min(r0 + rows_step, n_slots)
            cols = [self.model_call(x[r0:r1], noise[r0:r1, c0:c0 + cols_step].contiguous())
                    for c0 in range(0, width, cols_step)]
            rows.append(torch.cat(cols, dim=1))
        return torch.cat(rows, dim=0)

    def _checked_call(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        n_slots, width = noise.shape[0], noise.shape[1]
        out = self.call(x, noise)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n_slots, width):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(
                f"{type(self.model).__name__}.log_weights(x, noise) returned {shape} for x of shape {tuple(x.shape)} "
                f"and noise of shape {tuple(noise.shape)}; it must return a tensor "
                f"[{n_slots}, {width}] (one log-weight per datapoint and sample)."
            )
        return out.to(torch.float64)

    def finish(self, launched: tuple) -> int:
        """Write a call's result into ``out``; return the number of log-weights written."""
        (batch_number, k0, k1), log_w, done = launched
        if done is not None:
            done.synchronize()
        batch = self.batches[batch_number]
        real = log_w[: len(batch.indices)] if batch.slots_are_prefix else log_w[batch.slots]
        real = real[:, : k1 - k0]
        if batch.rows_are_range:
            self.out[batch.row_range, k0:k1].copy_(real)
        else:
            self.out[batch.rows, k0:k1] = real
        error = _invalid_weights_error(real, batch.index_tensor)
        if error is not None:
            raise error
        return len(batch.indices) * (k1 - k0)


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
    threads: int = 1,
    call: Optional[Callable] = None,
    progress: Optional[tqdm] = None,
) -> torch.Tensor:
    """Fill ``out`` with the log-weights of some datapoints (a shard).

    Parameters
    ----------
    model : prepared model (on ``device``, in ``dtype``, eval mode)
    data : Tensor, shape (n, D)
    indices : LongTensor, shape (n,)
        Dataset index of each row: its random stream and its slot in a call.
    k : int
    plan : ChunkPlan
    out : Tensor, shape (n, k), float64, CPU
        Written in place and returned.
    threads : int, default 1
        CPU: worker threads, each running whole calls with one intra-op thread (1: the calling
        thread, with one intra-op thread; 0: the calling thread with torch's intra-op threads
        as they are). CUDA: threads drawing noise.
    call : callable, optional
        ``call(x, noise)`` instead of ``model.log_weights`` (a compiled version of it).
    progress : tqdm, optional

    Notes
    -----
    On CUDA the noise of the next call is drawn (in ``threads`` threads, into pinned memory)
    while the GPU works on the current one, and results come back one call later.
    """
    call = call or model.log_weights
    if device.type == "cuda":
        with ThreadPoolExecutor(min(max(threads, 1), NOISE_THREADS)) as executor:
            runner = _Runner(model, call, data, indices, k, plan, seed=seed, device=device, dtype=dtype, out=out,
                             noise_executor=executor)
            _run_pipelined(runner, progress)
        return out
    runner = _Runner(model, call, data, indices, k, plan, seed=seed, device=device, dtype=dtype, out=out)
    if threads > 1:
        _run_workers(runner, threads, progress)
    elif threads == 1:
        with _intra_op_threads(1):
            _run_pipelined(runner, progress)
    else:
        _run_pipelined(runner, progress)
    return out


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


@contextmanager
def _intra_op_threads(n_threads: int) -> Iterator[None]:
    """Set torch's intra-op threads of the calling thread for a while, then restore them."""
    previous = torch.get_num_threads()
    if previous == n_threads:
        yield
        return
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _run_pipelined(runner: _Runner, progress: Optional[tqdm]) -> None:
    """Run every call from this thread; the next call is prepared before the previous one is finished."""
    in_flight = None
    for batch_number in range(len(runner.batches)):
        noise_blocks = runner.noise_blocks(runner.batches[batch_number])
        for task in runner.tasks(batch_number):
            launched = runner.launch(runner.prepare(task, noise_blocks))
            # On CUDA the launch returned at once: finishing the previous call (and preparing
            # the next one) overlaps this call's GPU work.
            if in_flight is not None:
                written = runner.finish(in_flight)
                if progress is not None:
                    progress.update(written)
            in_flight = launched
    if in_flight is not None:
        written = runner.finish(in_flight)
        if progress is not None:
            progress.update(written)


def _run_workers(runner: _Runner, threads: int, progress: Optional[tqdm]) -> None:
    """Run the calls on ``threads`` worker threads, each with one intra-op thread.

    A work item is a batch with all its columns when there are enough batches to keep every
    worker busy; otherwise the calls of a batch that share a noise block (or a single call).
    An item's calls run in order, reusing its noise blocks. After an error no new item
    starts; the error of the earliest failed item is raised.
    """
    items: List[tuple] = []
    for b in range(len(runner.batches)):
        tasks = runner.tasks(b)
        if len(runner.batches) >= 2 * threads:
            items.append((b, tasks))
            continue
        span = max(NOISE_BLOCK, runner.columns)
        for first in range(0, runner.k, span):
            group = [task for task in tasks if first <= task[1] < first + span]
            if group:
                items.append((b, group))
    threads = min(threads, len(items))
    lock = threading.Lock()
    position = iter(enumerate(items))
    failures: List[tuple] = []
    stop = threading.Event()

    def work(item: tuple) -> None:
        batch_number, tasks = item
        noise_blocks = runner.noise_blocks(runner.batches[batch_number])
        for one in tasks:
            written = runner.finish(runner.launch(runner.prepare(one, noise_blocks)))
            if progress is not None:
                with lock:
                    progress.update(written)

    def worker() -> None:
        # Thread-local settings: one intra-op thread (also MKL's), no autograd.
        torch.set_num_threads(1)
        with torch.inference_mode():
            while not stop.is_set():
                with lock:
                    number, item = next(position, (None, None))
                if item is None:
                    return
                try:
                    work(item)
                except BaseException as error:  # re-raised in the calling thread
                    with lock:
                        failures.append((number, error))
                    stop.set()
                    return

    previous = torch.get_num_threads()
    pool = [threading.Thread(target=worker, name=f"evalkit-worker-{i}", daemon=True) for i in range(threads)]
    try:
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    finally:
        stop.set()
        for thread in pool:
            thread.join()
        # A worker's set_num_threads also changed the default for threads created later.
        torch.set_num_threads(previous)
    if failures:
        raise min(failures, key=lambda failure: failure[0])[1]


def model_sample_cost(model: torch.nn.Module, x_probe: torch.Tensor, dtype: torch.dtype) -> SampleCost:
    """Return the working memory of the model's calls, engine buffers and margin included.

    Uses ``model.bytes_per_sample(dtype)`` (and ``model.bytes_per_datapoint(dtype)`` if
    present) when the model defines it; otherwise measures two small probe calls on
    ``x_probe`` (:func:`evalkit.sampling.memory.measure_sample_cost`); when measuring sees nothing or
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

    A call on ``B`` datapoints has at most ``Bp = ceil(B / 32) * 32`` slots and ``c`` padded
    sample columns (:func:`call_columns`), and needs
    ``Bp * (cost.bytes_per_datapoint + c * cost.bytes_per_sample)`` bytes. With neither given,
    ``k_chunk`` is the largest that fits with 32 rows (capped at ``k`` and at
    MAX_ROWS_PER_CALL / 32, and rounded down to a multiple of NOISE_BLOCK, or else of 32,
    when below ``k``: consecutive calls reuse a noise block), then ``batch_size`` the largest multiple of 32 that fits (capped at
    MAX_ROWS_PER_CALL / c and at ``n_rows`` rounded up). A value given by the caller is kept
    and the other fitted around it; with both given, they are checked against an explicit
    budget only.

    Raises
    ------
    ResourceError
        When the budget cannot hold one call with the smallest choice; the message names the
        minimum budget.
    """
    per_datapoint, per_sample = cost.bytes_per_datapoint, cost.bytes_per_sample
    rows_cap = MAX_ROWS_PER_CALL[device.type]
    if device.type == "cpu":
        rows_cap = min(rows_cap, max(1024, CPU_CALL_BYTES // max(per_sample, 1)))
    align = min(k, ROW_ALIGN)

    def need(n_batch: int, n_samples: int) -> int:
        return _round_up(n_batch, ROW_ALIGN) * (per_datapoint + call_columns(n_samples, k) * per_sample)

    def too_small(what: str, minimum: int) -> ResourceError:
        return ResourceError(
            f"memory_budget of {format_bytes(memory_budget)} is below the {format_bytes(minimum)} that {what} needs; "
            f"raise memory_budget to at least {format_bytes(minimum)}"
            + (" or lower batch_size / k_chunk." if what != "one sample per datapoint" else ".")
        )

    def round_down(n_samples: int) -> int:
        # Below k, chunks end on noise blocks (no block is drawn twice) or at least on 32 columns.
        if n_samples >= k:
            return k
        for multiple in (NOISE_BLOCK, align):
            if n_samples >= multiple:
                return n_samples - n_samples % multiple
        return n_samples

    if batch_size is not None and k_chunk is not None:
        batch_size, k_chunk = min(batch_size, n_rows), min(k_chunk, k)
        if budget_is_explicit and need(batch_size, k_chunk) > memory_budget:
            raise too_small(f"batch_size={batch_size} with k_chunk={k_chunk}", need(batch_size, k_chunk))
    elif batch_size is not None:
        batch_size = min(batch_size, n_rows)
        rows = _round_up(batch_size, ROW_ALIGN)
        fit = (memory_budget // rows - per_datapoint) // per_sample
        if fit < align:
            raise too_small(f"batch_size={batch_size} with one sample per datapoint", need(batch_size, 1))
        k_chunk = round_down(max(1, min(k, fit, rows_cap // rows)))
    else:
        if k_chunk is None:
            fit = (memory_budget // ROW_ALIGN - per_datapoint) // per_sample
            if fit < align:
                raise too_small("one sample per datapoint", need(ROW_ALIGN, 1))
            k_chunk = round_down(min(k, fit, rows_cap // ROW_ALIGN))
        k_chunk = min(k_chunk, k)
        columns = call_columns(k_chunk, k)
        rows = min(memory_budget // (per_datapoint + columns * per_sample), max(rows_cap // columns, ROW_ALIGN))
        rows -= rows % ROW_ALIGN
        if rows < ROW_ALIGN:
            raise too_small(f"k_chunk={k_chunk}", need(ROW_ALIGN, k_chunk))
        batch_size = min(rows, _round_up(n_rows, ROW_ALIGN))
    return ChunkPlan(int(batch_size), int(k_chunk), int(memory_budget), cost, int(k))


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
    k = _positive_int(k, "k")
    seed = check_seed(seed)
    if batch_size is not None:
        batch_size = _positive_int(batch_size, "batch_size")
    if k_chunk is not None:
        k_chunk = _positive_int(k_chunk, "k_chunk")
    if threads is not None:
        threads = _positive_int(threads, "threads")
    if dtype not in COMPUTE_DTYPES:
        raise InputError(f"Expected argument `dtype` to be torch.float32 or torch.float64, got {dtype!r}.")
    for name, flag in (("compile", compile), ("tf32", tf32)):
        if not isinstance(flag, bool):
            raise InputError(f"Expected argument `{name}` to be True or False, got {flag!r}.")
    check_data_for_model(data, model)
    indices = _check_indices(indices, data.shape[0])
    device = resolve_device(device)
    budget_is_explicit = memory_budget is not None
    budget = parse_memory_budget(memory_budget) if budget_is_explicit else default_memory_budget(device)
    if threads is None:
        threads = torch.get_num_threads() if device.type == "cpu" else (os.cpu_count() or 1)
    if compile and device.type == "cpu":
        threads = 0  # compiled code runs in the calling thread, with torch's intra-op threads

    if device.type == "cpu":
        _keep_freed_memory()
    out = torch.empty(data.shape[0], k, dtype=torch.float64)
    with prepared_model(model, device, dtype) as run_model, torch.inference_mode(), _tf32(device, tf32), \
            (torch.cuda.device(device) if device.type == "cuda" else nullcontext()):
        x_probe = _pad_rows(data[:ROW_ALIGN].to(device=device, dtype=dtype), max(0, ROW_ALIGN - len(data)))
        cost = model_sample_cost(run_model, x_probe, dtype)
        plan, workers = _plan_for_workers(data.shape[0], k, cost, budget, device=device, batch_size=batch_size,
                                          k_chunk=k_chunk, budget_is_explicit=budget_is_explicit, threads=threads)
        call = _CompiledCall(run_model) if compile else run_model.log_weights
        with _progress_bar(progress, data.shape[0] * k) as bar:
            compute_log_weights(run_model, data, indices, k, plan, seed=seed, device=device, dtype=dtype,
                                out=out, threads=workers, call=call, progress=bar)
    return out


def _plan_for_workers(n_rows: int, k: int, cost: SampleCost, budget: int, *, device: torch.device,
                      batch_size: Optional[int], k_chunk: Optional[int], budget_is_explicit: bool,
                      threads: int) -> tuple[ChunkPlan, int]:
    """Plan calls for ``threads`` CPU workers sharing ``budget``; fewer workers if one call per worker does not fit.

    On CUDA the budget is the GPU's and ``threads`` draw noise only: the plan gets all of it.
    """
    if device.type != "cpu" or threads <= 1:
        return plan_chunks(n_rows, k, cost, budget, device=device, batch_size=batch_size, k_chunk=k_chunk,
                           budget_is_explicit=budget_is_explicit), threads
    for workers in range(threads, 0, -1):
        try:
            plan = plan_chunks(n_rows, k, cost, budget // workers, device=device, batch_size=batch_size,
                               k_chunk=k_chunk, budget_is_explicit=budget_is_explicit)
        except ResourceError:
            if workers == 1:
                raise
            continue
        return plan, workers
    raise AssertionError("unreachable")  # pragma: no cover


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


class _CompiledCall:
    """``model.log_weights`` through ``torch.compile``, falling back to eager mode if compiling fails.

    A failure of the compiled call is retried eagerly: if that works, compiling was the
    problem (no C++ compiler, an unsupported operation) and the run continues eagerly with
    one warning; if it fails too, the model's own error is raised.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.eager = model.log_weights
        try:
            self.compiled: Optional[Callable] = torch.compile(model.log_weights)
        except Exception as error:  # torch.compile itself refused (unsupported Python or platform)
            self._give_up(error)

    def _give_up(self, error: BaseException) -> None:
        warnings.warn(f"torch.compile failed ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                      "continuing without compile=True.", RuntimeWarning, stacklevel=4)
        self.compiled = None

    def __call__(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(x, noise)
            except EvalkitError:
                raise
            except Exception as error:
                result = self.eager(x, noise)
                self._give_up(error)
                return result
        return self.eager(x, noise)


__all__ = ["log_weights", "compute_log_weights", "plan_chunks", "model_sample_cost", "prepared_model",
           "resolve_device", "ChunkPlan", "ROW_ALIGN", "call_columns"]
