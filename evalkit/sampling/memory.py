"""Memory budgets: parsing, free-memory probing and measuring a model's working memory.

The engine sizes its batches from a budget in bytes. The budget covers the working memory of
the computation (activations, noise, per-chunk log-weights); it does not cover the model's
parameters, the input data or the returned ``[N, K]`` log-weight matrix.
"""
from __future__ import annotations

import math
import os
import re
import weakref
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..errors import InputError

CPU_BUDGET_FRACTION = 0.5
"""Default CPU budget: this fraction of the RAM the kernel reports as available."""

CUDA_BUDGET_FRACTION = 0.7
"""Default CUDA budget: this fraction of the device memory that is free."""

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
}


def parse_memory_budget(budget: Union[int, str]) -> int:
    """Return a memory budget in bytes.

    Parameters
    ----------
    budget : int or str
        Bytes as an int, or a string such as ``"512MB"``, ``"2GiB"``, ``"1.5 GB"``. Decimal
        units (kB, MB, GB, TB) are powers of 1000, binary units (KiB, MiB, GiB, TiB, and the
        bare K, M, G, T) powers of 1024; case is ignored.

    Returns
    -------
    int
        The budget in bytes, at least 1.

    Examples
    --------
    >>> parse_memory_budget("2GiB")
    2147483648
    >>> parse_memory_budget("512MB")
    512000000
    """
    if isinstance(budget, bool):
        raise InputError(f"Expected argument `memory_budget` to be bytes or a string like '2GiB', got {budget!r}.")
    if isinstance(budget, int):
        value = budget
    elif isinstance(budget, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", budget)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise InputError(
                f"Expected argument `memory_budget` to be bytes or a string like '512MB' or '2GiB', got {budget!r}."
            )
        value = int(float(match.group(1)) * _UNITS[unit])
    else:
        raise InputError(f"Expected argument `memory_budget` to be bytes or a string like '2GiB', got {budget!r}.")
    if value < 1:
        raise InputError(f"Expected argument `memory_budget` to be positive, got {budget!r}.")
    return value


def format_bytes(n_bytes: float) -> str:
    """Return a byte count as a short human-readable string (binary units), e.g. ``'1.5 MiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n_bytes) < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.1f} TiB"  # pragma: no cover


def available_memory(device: torch.device) -> int:
    """Return the memory available for computation on ``device`` in bytes.

    CUDA: the free memory reported by ``torch.cuda.mem_get_info``. CPU: ``MemAvailable`` from
    ``/proc/meminfo`` (Linux), else free physical pages from ``os.sysconf``, else 4 GiB.
    """
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def default_memory_budget(device: torch.device) -> int:
    """Return the default budget: a fraction of the memory available on ``device``."""
    fraction = CUDA_BUDGET_FRACTION if device.type == "cuda" else CPU_BUDGET_FRACTION
    return max(1, int(fraction * available_memory(device)))


class _PeakLiveBytes(TorchDispatchMode):
    """Track the peak bytes of tensor storages created by torch ops and still alive.

    Every op's outputs are counted once per storage (views share their base's storage) and
    uncounted when the storage is freed, on any device. Memory that torch allocates without
    returning it as a tensor (matmul workspaces) is not seen.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._seen: "weakref.WeakSet[torch.UntypedStorage]" = weakref.WeakSet()

    def _release(self, n_bytes: int) -> None:
        self.current -= n_bytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                storage = leaf.untyped_storage()
                if storage in self._seen:
                    continue
                self._seen.add(storage)
                n_bytes = storage.nbytes()
                self.current += n_bytes
                self.peak = max(self.peak, self.current)
                weakref.finalize(storage, self._release, n_bytes)
        return out


def peak_live_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Return the peak bytes of torch tensors that ``fn()`` allocates and holds at once.

    CUDA: the caching allocator's peak above the memory allocated before the call (this
    resets the device's peak-memory statistics). CPU: tracked per tensor storage by a
    ``TorchDispatchMode`` (its first use in a process imports parts of torch, about 1 s).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        del result
        return max(0, torch.cuda.max_memory_allocated(device) - baseline)
    with _PeakLiveBytes() as tracker:
        result = fn()
        del result
    return tracker.peak


@dataclass(frozen=True)
class SampleCost:
    """Working memory of one model call, split into what grows per datapoint and per sample.

    A call on ``B`` datapoints and ``k`` samples each needs about
    ``B * (bytes_per_datapoint + k * bytes_per_sample)`` bytes.
    """

    bytes_per_datapoint: int
    bytes_per_sample: int
    source: str  # "model", "measured" or "estimated"


def estimate_sample_cost(model: torch.nn.Module, dtype: torch.dtype) -> SampleCost:
    """Return a conservative working-memory estimate from parameter shapes alone.

    Assumes every sample holds four copies of every layer's output (the leading dimension of
    each parameter with two or more dimensions), of the data and of the noise.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    widths = sum(p.shape[0] for p in model.parameters() if p.dim() >= 2)
    noise = math.prod(getattr(model, "noise_shape", ()))
    data = int(getattr(model, "data_dim", 0))
    per_sample = 4 * itemsize * (widths + data + noise) + 16
    per_datapoint = 4 * itemsize * (widths + data)
    return SampleCost(per_datapoint, per_sample, "estimated")


def measure_sample_cost(
    call: Callable[[int], object], n_rows: int, device: torch.device, *, k_small: int = 8, k_large: int = 16
) -> Optional[SampleCost]:
    """Measure a model call's working memory from two small probe calls.

    Parameters
    ----------
    call : callable
        ``call(k)`` runs the model on ``n_rows`` datapoints and ``k`` samples each.
    n_rows : int
        Number of datapoints in each probe call.
    device : torch.device
        Where ``call`` computes.
    k_small, k_large : int
        Samples per datapoint of the two probes.

    Returns
    -------
    SampleCost or None
        ``peak(k) = n_rows * (a + k * b)`` solved for ``a`` and ``b`` (clipped at 0), or None
        when nothing was seen (a model that computes outside torch).

    Notes
    -----
    See :func:`peak_live_bytes`. On CPU, allocations torch makes without returning a tensor
    (BLAS workspaces) are not counted, so the caller should leave a margin.
    """
    peak_small = peak_live_bytes(lambda: call(k_small), device)
    peak_large = peak_live_bytes(lambda: call(k_large), device)
    if peak_large <= 0:
        return None
    per_sample = max(peak_large - peak_small, 0) / (n_rows * (k_large - k_small))
    # Guard against a probe whose per-datapoint part hides the growth (allocator rounding):
    # charge every sample at least half of the large probe's average.
    per_sample = max(per_sample, peak_large / (n_rows * k_large) / 2)
    per_datapoint = max(peak_small / n_rows - k_small * per_sample, 0.0)
    return SampleCost(int(math.ceil(per_datapoint)), int(math.ceil(per_sample)), "measured")
