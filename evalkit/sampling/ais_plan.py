"""How AIS lays out and sizes its model calls: slots of chain rows, datapoints per call, worker threads.

The layout rule (why ``slot_align``) is in :mod:`evalkit.sampling.ais`'s notes.

May import torch and :mod:`evalkit.sampling` below AIS (engine, plan, memory).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .engine import _positive_int
from .memory import default_memory_budget
from .plan import MAX_ROWS_PER_CALL, ROW_ALIGN


def slot_align(rows: int) -> int:
    """Slots per layout group for ``rows`` chain rows per slot: ``32 / gcd(rows, 32)`` (16 for 18 rows; module notes)."""
    return ROW_ALIGN // math.gcd(rows, ROW_ALIGN)


def plan_batch_size(model, rows: int, n_data: int, dtype: torch.dtype, device: torch.device,
                     batch_size: Optional[int], threads: int) -> int:
    """Datapoints per call: ``batch_size``, or what fits ``MAX_ROWS_PER_CALL`` chain rows and the memory budget.

    A chain row holds the autograd graph of one ``log_joint`` evaluation (taken as four times
    the model's ``bytes_per_sample`` when it states one, else 64 KiB) and a few latent-sized
    tensors. With several worker threads the data is split into one call per worker or more
    (each worker holds one call's memory; the budget is shared), but not below
    :func:`slot_align` datapoints per call: a call is padded to a multiple of that many slots,
    so smaller ones would compute padding in parallel instead of datapoints.
    """
    if batch_size is not None:
        return batch_size
    per_sample = getattr(model, "bytes_per_sample", None)
    per_row = 4 * per_sample(dtype) if callable(per_sample) else 64 * 2**10
    fit_rows = min(MAX_ROWS_PER_CALL[device.type] // 2, default_memory_budget(device) // (per_row * threads))
    align = slot_align(rows)
    fit = min(max(1, fit_rows // rows), max(align, -(-n_data // threads)))
    if fit >= align:
        fit -= fit % align
    return min(fit, max(n_data, 1))


def worker_threads(threads: Optional[int], device: torch.device) -> int:
    """Worker threads: ``threads``, else torch's intra-op thread count on the CPU and 1 on a GPU."""
    if threads is not None:
        return _positive_int(threads, "threads")
    return torch.get_num_threads() if device.type == "cpu" else 1


__all__ = ["plan_batch_size", "slot_align", "worker_threads"]
