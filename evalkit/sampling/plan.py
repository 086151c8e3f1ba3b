"""Planning a log-weight run: how many datapoints and samples go into one model call.

* :class:`ChunkPlan` -- ``batch_size`` x ``k_chunk`` per call, the budget and cost it was fitted to;
* :func:`call_columns` -- a call's sample columns, padded to a multiple of :data:`ROW_ALIGN`;
* :func:`model_sample_cost` -- working memory per datapoint and per sample (model, engine buffers, margin);
* :func:`plan_chunks` -- the largest call that fits a memory budget, or a :class:`ResourceError`
  naming the minimum budget; ``_plan_for_workers`` shares a CPU budget between worker threads.

Why calls are laid out in groups of 32 rows and columns: :mod:`evalkit.sampling.engine`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import ResourceError
from ..noise import NOISE_BLOCK
from .memory import SampleCost, estimate_sample_cost, format_bytes, measure_sample_cost

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
    fit = _Fit(cost.bytes_per_datapoint, cost.bytes_per_sample, k, memory_budget, _rows_cap(device, cost))
    if batch_size is not None and k_chunk is not None:
        batch_size, k_chunk = min(batch_size, n_rows), min(k_chunk, k)
        if budget_is_explicit and fit.need(batch_size, k_chunk) > memory_budget:
            raise fit.too_small(f"batch_size={batch_size} with k_chunk={k_chunk}", fit.need(batch_size, k_chunk))
    elif batch_size is not None:
        batch_size = min(batch_size, n_rows)
        k_chunk = fit.k_chunk_for(batch_size)
    else:
        if k_chunk is None:
            k_chunk = fit.default_k_chunk()
        k_chunk = min(k_chunk, k)
        batch_size = min(fit.rows_for(k_chunk), _round_up(n_rows, ROW_ALIGN))
    return ChunkPlan(int(batch_size), int(k_chunk), int(memory_budget), cost, int(k))



def _rows_cap(device: torch.device, cost: SampleCost) -> int:
    """Most ``slots x padded k_chunk`` rows of one call on ``device`` (on the CPU also capped by cache size)."""
    rows_cap = MAX_ROWS_PER_CALL[device.type]
    if device.type == "cpu":
        rows_cap = min(rows_cap, max(1024, CPU_CALL_BYTES // max(cost.bytes_per_sample, 1)))
    return rows_cap


@dataclass(frozen=True)
class _Fit:
    """What :func:`plan_chunks` weighs: bytes per datapoint and per sample, ``k``, the budget, the row cap."""

    per_datapoint: int
    per_sample: int
    k: int
    memory_budget: int
    rows_cap: int

    @property
    def align(self) -> int:
        return min(self.k, ROW_ALIGN)

    def need(self, n_batch: int, n_samples: int) -> int:
        """Bytes of one call on ``n_batch`` datapoints with ``n_samples`` samples each."""
        return _round_up(n_batch, ROW_ALIGN) * (self.per_datapoint + call_columns(n_samples, self.k) * self.per_sample)

    def too_small(self, what: str, minimum: int) -> ResourceError:
        return ResourceError(
            f"memory_budget of {format_bytes(self.memory_budget)} is below the {format_bytes(minimum)} that {what} needs; "
            f"raise memory_budget to at least {format_bytes(minimum)}"
            + (" or lower batch_size / k_chunk." if what != "one sample per datapoint" else ".")
        )

    def round_down(self, n_samples: int) -> int:
        # Below k, chunks end on noise blocks (no block is drawn twice) or at least on 32 columns.
        if n_samples >= self.k:
            return self.k
        for multiple in (NOISE_BLOCK, self.align):
            if n_samples >= multiple:
                return n_samples - n_samples % multiple
        return n_samples

    def default_k_chunk(self) -> int:
        """The largest ``k_chunk`` that fits with 32 rows (neither batch_size nor k_chunk given)."""
        fit = (self.memory_budget // ROW_ALIGN - self.per_datapoint) // self.per_sample
        if fit < self.align:
            raise self.too_small("one sample per datapoint", self.need(ROW_ALIGN, 1))
        return self.round_down(min(self.k, fit, self.rows_cap // ROW_ALIGN))

    def k_chunk_for(self, batch_size: int) -> int:
        """The largest ``k_chunk`` that fits with ``batch_size`` datapoints."""
        rows = _round_up(batch_size, ROW_ALIGN)
        fit = (self.memory_budget // rows - self.per_datapoint) // self.per_sample
        if fit < self.align:
            raise self.too_small(f"batch_size={batch_size} with one sample per datapoint", self.need(batch_size, 1))
        return self.round_down(max(1, min(self.k, fit, self.rows_cap // rows)))

    def rows_for(self, k_chunk: int) -> int:
        """The most slots (a multiple of 32) a call with ``k_chunk`` samples per datapoint may have."""
        columns = call_columns(k_chunk, self.k)
        rows = min(self.memory_budget // (self.per_datapoint + columns * self.per_sample),
                   max(self.rows_cap // columns, ROW_ALIGN))
        rows -= rows % ROW_ALIGN
        if rows < ROW_ALIGN:
            raise self.too_small(f"k_chunk={k_chunk}", self.need(ROW_ALIGN, k_chunk))
        return rows


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

