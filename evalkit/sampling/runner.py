"""Running a planned log-weight computation: the model calls, their layout, and the threads that drive them.

* ``_make_batches`` -- the datapoints of each call and their slots (``slot % 32 == index % 32``);
* ``_Runner`` -- prepares, launches and finishes one call (one chunk of columns), checking the
  result for NaN / +inf and shrinking calls that run out of memory;
* :func:`compute_log_weights` -- fills an output tensor for some datapoints, given a prepared
  model and a :class:`~evalkit.sampling.plan.ChunkPlan`: pipelined from the calling thread (and on
  CUDA with noise drawn by a thread pool), or on CPU worker threads;
* ``_CompiledCall`` -- ``model.log_weights`` through ``torch.compile``, falling back to eager mode.

Why every call is laid out this way (bitwise batching invariance): :mod:`evalkit.sampling.engine`.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import threading
import warnings
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional

import torch
from tqdm.auto import tqdm

from ..data import rows_text
from ..errors import EvalkitError, InputError, ResourceError
from ..noise import NOISE_BLOCK, NoiseBlocks
from .plan import ROW_ALIGN, ChunkPlan, _round_up, call_columns
from .workers import LockedProgress, intra_op_threads, run_in_workers

NOISE_THREADS = 32
"""Most threads drawing noise for a GPU (numpy releases the GIL while it samples)."""


class EngineWarning(RuntimeWarning):
    """The engine changed course and says so: out of device memory (smaller calls, same results),
    or torch.compile failed (eager model). A ``RuntimeWarning``, so existing filters apply."""

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
        Their rows in the call; ``slots[b] % align == indices[b] % align`` (:func:`_make_batches`).
    n_slots : int
        Rows of the call, a multiple of ``align`` (32 in the engine).
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


def _make_batches(indices: torch.Tensor, batch_size: int, align: int = ROW_ALIGN) -> List[_Batch]:
    """Cut the datapoints into calls of at most ``batch_size`` and lay each call out.

    Datapoints are taken in ascending dataset index (so any permutation of the same data
    makes the same calls); datapoint ``n`` goes to slot ``align * r + n % align``, where ``r``
    counts the call's earlier datapoints with the same residue. A call has
    ``align * max(r + 1)`` slots, at most ``round_up(batch_size, align)``. The engine uses
    ``align = 32``; AIS, whose slots hold several chain rows each, a divisor of 32 (see
    :mod:`evalkit.sampling.ais`).
    """
    order = torch.argsort(indices, stable=True)
    max_slots = _round_up(batch_size, align)
    batches: List[_Batch] = []
    rows: List[int] = []
    members: List[int] = []
    slots: List[int] = []
    counts = [0] * align

    def flush() -> None:
        batches.append(_Batch(torch.tensor(rows), list(members), torch.tensor(slots), align * max(counts)))

    for row, index in zip(order.tolist(), indices[order].tolist()):
        residue = index % align
        if rows and (len(rows) == batch_size or (counts[residue] + 1) * align > max_slots):
            flush()
            rows, members, slots, counts = [], [], [], [0] * align
        rows.append(row)
        members.append(index)
        slots.append(align * counts[residue] + residue)
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
                EngineWarning,
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
        if not out.is_floating_point():  # int64 has lost the fractions; complex is no log-density
            raise InputError(
                f"{type(self.model).__name__}.log_weights(x, noise) returned {out.dtype} values; log-weights must be "
                "real floating point (float32 or float64), so compute them in floating point: integers have lost "
                "their fractions and complex numbers are no log-densities."
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
        with intra_op_threads(1):
            _run_pipelined(runner, progress)
    else:
        _run_pipelined(runner, progress)
    return out


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


def _work_items(runner: _Runner, threads: int) -> List[tuple]:
    """``(batch_number, tasks)`` items for ``threads`` workers: whole batches, or the calls sharing a noise block."""
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
    return items


def _run_workers(runner: _Runner, threads: int, progress: Optional[tqdm]) -> None:
    """Run the calls on ``threads`` worker threads (:func:`.workers.run_in_workers`).

    A work item is a batch with all its columns when there are enough batches to keep every
    worker busy; otherwise the calls of a batch that share a noise block (or a single call).
    An item's calls run in order, reusing its noise blocks.
    """
    bar = LockedProgress(progress)

    def work(item: tuple) -> None:
        batch_number, tasks = item
        noise_blocks = runner.noise_blocks(runner.batches[batch_number])
        for one in tasks:
            bar.update(runner.finish(runner.launch(runner.prepare(one, noise_blocks))))

    run_in_workers(_work_items(runner, threads), work, threads)


class _TorchLogRecords(logging.Handler):
    """Collects the records of torch's own loggers instead of printing them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def torch_compile_messages() -> Iterator[None]:
    """Hold back what torch.compile logs (dynamo's recompile-limit notes run to eight lines each,
    printed on stderr by torch's own handlers, which ``--quiet`` cannot reach) and say it as one
    :class:`EngineWarning` at the end, which ``--quiet`` hides like any warning."""
    collector = _TorchLogRecords()
    loggers = [logger for name, logger in list(logging.Logger.manager.loggerDict.items())
               if name.split(".")[0] == "torch" and isinstance(logger, logging.Logger) and logger.handlers]
    saved = [(logger, logger.handlers[:]) for logger in loggers]
    for logger in loggers:
        logger.handlers = [collector]
    try:
        yield
    finally:
        for logger, handlers in saved:
            logger.handlers = handlers
        if collector.records:
            first = collector.records[0].getMessage().strip().splitlines()[0]
            warnings.warn(f"torch.compile logged {len(collector.records)} warning(s) while compiling the model, the "
                          f"first: {first!r}; where it gave up, calls ran eagerly (TORCH_LOGS=recompiles "
                          "says why)", EngineWarning, stacklevel=4)


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
                      "continuing without compile=True.", EngineWarning, stacklevel=4)
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


