"""Sizes that cannot fit, refused before allocation with one sentence instead of an allocator traceback.

The engine writes an ``[rows, K]`` float64 matrix of log-weights (a block of the data, a cache
shard, or the whole ``[N, K]`` matrix a ``--cache`` run assembles). Its size, ``rows * K * 8``
bytes, is known before anything runs; if it exceeds what the machine has free (or an explicit
memory budget larger than that, which the user may give to count swap), allocation would fail
with a raw ``RuntimeError`` from ``torch.empty`` -- or, worse, succeed and swap for an hour.
:func:`check_matrix_fits` refuses it first and says which ``K`` would fit.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import ResourceError
from .memory import available_memory, format_bytes

__all__ = ["check_matrix_fits"]

FLOAT64_BYTES = 8


def check_matrix_fits(rows: int, k: int, *, what: str, budget: Optional[int] = None, way_out: str = "") -> int:
    """Raise :class:`ResourceError` unless an ``[rows, k]`` float64 matrix fits in memory; return its bytes.

    Parameters
    ----------
    rows, k : int
        Shape of the matrix, ``rows`` datapoints by ``k`` samples.
    what : str
        What the matrix is, for the message ("the log-weights of a block of 32 datapoints").
    budget : int, optional
        An explicit memory budget in bytes; the limit is ``max(budget, free memory)``.
    way_out : str
        Extra advice appended to "lower k (at most about K' fits)".

    Notes
    -----
    The limit is the machine's available memory (``MemAvailable`` on Linux); a single
    datapoint's K columns, ``8 K`` bytes, must fit as well, or no choice of rows helps.
    """
    rows, k = int(rows), int(k)
    need = rows * k * FLOAT64_BYTES
    free = available_memory(torch.device("cpu"))
    limit = max(free, budget or 0)
    if need <= limit:
        return need
    fits_k = max(1, limit // (max(rows, 1) * FLOAT64_BYTES))
    shown_budget = f"the {format_bytes(budget)} memory budget and " if budget is not None else ""
    single = "" if k * FLOAT64_BYTES <= limit else f" (one datapoint's k columns alone need {format_bytes(k * FLOAT64_BYTES)})"
    raise ResourceError(
        f"{what} at k={k} need {format_bytes(need)} ([{rows}, {k}] float64){single}, more than "
        f"{shown_budget}the {format_bytes(free)} of free memory on this machine allow; lower k (about {fits_k} fits)"
        f"{way_out}."
    )
