"""Per-pixel work of a model call in pieces that stay in cache.

A Bernoulli likelihood makes several elementwise passes over the ``[B, k, D]`` logits. Once
those logits outgrow the cache, each pass streams them from memory: on one AVX-512 core with a
32 MiB L3 the likelihood of 784 pixels cost 0.82-0.89 us per sample for 256-2048 rows and
1.54-1.74 us for 4096-8192 rows (the seven-pass version of ``bernoulli_log_likelihood``, on
fresh logits). The engine's calls are sized for the matmuls (thousands of rows), so the
decoder's last layer and the likelihood run here on pieces of at most :data:`PIECE_BYTES` of
logits.

Pieces are a fixed function of the call's shape and keep every row's position modulo 32
within its matmul, as the engine's own call layout does, so results do not depend on how the
engine batched the data (tested with the engine's batching-invariance tests).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

PIECE_BYTES = 2 * 2**20
"""Largest per-sample output (e.g. logits) of one piece; two cores' pieces and their temporaries share the L3."""

ROW_ALIGN = 32
"""A piece starts at a row that is a multiple of this within the call (rows are datapoint-major)."""


def piece_bounds(n_slots: int, k: int, max_rows: int) -> list[tuple[int, int, int, int]]:
    """Return ``(b0, b1, c0, c1)`` rectangles of slots x sample columns that tile ``[n_slots, k]``.

    Each rectangle has at most ``max(max_rows, ROW_ALIGN)`` rows (``(b1 - b0) * (c1 - c0)``)
    where possible, is contiguous in a datapoint-major ``[n_slots, k, ...]`` tensor (whole
    rows of slots, or columns of one slot), and starts at a flattened row ``b0 * k + c0`` that
    is a multiple of 32 whenever ``k`` is.
    """
    max_rows = max(int(max_rows), ROW_ALIGN)
    if k > max_rows:
        width = max_rows - max_rows % ROW_ALIGN
        return [(b, b + 1, c0, min(c0 + width, k)) for b in range(n_slots) for c0 in range(0, k, width)]
    slots = max(1, max_rows // k)
    if k % ROW_ALIGN:
        # Rows b * k of an unaligned k keep their position modulo 32 k only in groups of 32 slots.
        slots = max(ROW_ALIGN, slots - slots % ROW_ALIGN)
    return [(b0, min(b0 + slots, n_slots), 0, k) for b0 in range(0, n_slots, slots)]


def map_row_pieces(fn: Callable[[Tensor, Tensor], Tensor], samples: Tensor, per_datapoint: Tensor,
                   out_features: int) -> Tensor:
    """Return ``fn(samples, per_datapoint)`` computed piece by piece.

    Parameters
    ----------
    fn : callable
        ``fn(samples[b0:b1, c0:c1], per_datapoint[b0:b1]) -> Tensor[b1 - b0, c1 - c0]``; row-wise
        (each output row depends only on its own inputs).
    samples : Tensor, shape (B, k, d)
        Per-sample input of the call, datapoint-major.
    per_datapoint : Tensor, shape (B, ...)
        Per-datapoint input (e.g. the data).
    out_features : int
        Features per sample of the largest intermediate ``fn`` makes (e.g. the logits' D),
        which sizes the pieces to :data:`PIECE_BYTES`.

    Returns
    -------
    Tensor, shape (B, k), the dtype ``fn`` returns
    """
    n_slots, k = samples.shape[0], samples.shape[1]
    max_rows = PIECE_BYTES // max(1, out_features * samples.element_size())
    bounds = piece_bounds(n_slots, k, max_rows)
    if len(bounds) == 1:
        return fn(samples, per_datapoint)
    out = None
    for b0, b1, c0, c1 in bounds:
        piece = fn(samples[b0:b1, c0:c1], per_datapoint[b0:b1])
        if out is None:
            out = torch.empty((n_slots, k), dtype=piece.dtype, device=piece.device)
        out[b0:b1, c0:c1] = piece
    return out


__all__ = ["PIECE_BYTES", "map_row_pieces", "piece_bounds"]
