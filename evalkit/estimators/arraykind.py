"""Array kinds in and out: numpy in gives numpy out, torch in gives torch out on the same device.

Every estimator in :mod:`evalkit.estimators` accepts log-weights of shape ``(..., K)`` as a
``torch.Tensor`` (any floating dtype, CPU or CUDA), a ``numpy.ndarray`` or anything
``numpy.asarray`` understands. :func:`as_rows` validates them once and returns a float64 CPU
tensor of shape ``(N, K)`` (``N`` the product of the leading dimensions) together with a
:class:`Kind` that :meth:`Kind.restore` uses to give a result of shape ``(...)`` back in the
caller's kind.

The arithmetic runs on the CPU in float64 numpy even for torch and CUDA input: the
reductions here are a small fraction of the cost of drawing the log-weights, one code path is
one thing to test, and single-threaded numpy over cache-sized row chunks is faster on a
shared CPU than torch's thread pool. The rows may share memory with the input; no function
in evalkit writes into them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Tuple

import numpy as np
import torch

from ..errors import InputError

__all__ = ["Kind", "as_rows", "format_positions"]

_MAX_POSITIONS_SHOWN = 5


@dataclass(frozen=True)
class Kind:
    """How to hand a result back: the caller's array kind, device and leading shape."""

    is_torch: bool
    device: Any
    batch_shape: Tuple[int, ...]

    def restore(self, values: np.ndarray) -> Any:
        """Reshape ``values`` (shape ``(N,)``, float64) to ``batch_shape`` in the caller's kind.

        A 1-D input (one datapoint) gives a 0-d tensor for torch and a numpy float64 scalar for
        numpy, as :func:`scipy.special.logsumexp` does.
        """
        out = np.array(values, dtype=np.float64).reshape(self.batch_shape)
        if self.is_torch:
            return torch.from_numpy(out).to(self.device)
        return out[()] if out.ndim == 0 else out


def format_positions(bad: np.ndarray, batch_shape: Tuple[int, ...]) -> str:
    """Name the first few flagged rows of a ``(N,)`` boolean mask as index tuples of ``batch_shape``."""
    flat = np.flatnonzero(bad).tolist()
    if not batch_shape:
        return "the only row"
    if len(batch_shape) == 1:  # rows of a matrix: plain numbers ("rows 55, 81"), not Python tuples
        shown = [str(int(f)) for f in flat[:_MAX_POSITIONS_SHOWN]]
    else:
        shown = [str(tuple(int(i) for i in np.unravel_index(f, batch_shape))) for f in flat[:_MAX_POSITIONS_SHOWN]]
    more = f" and {len(flat) - _MAX_POSITIONS_SHOWN} more" if len(flat) > _MAX_POSITIONS_SHOWN else ""
    return "rows " + ", ".join(shown) + more


def as_rows(log_w: Any, *, name: str = "log_w") -> Tuple[np.ndarray, Kind]:
    """Validate log-weights and return them as a float64 numpy array of shape ``(N, K)``.

    Parameters
    ----------
    log_w : Tensor or array_like, shape (..., K)
        Log importance weights; the last axis holds the K samples of one datapoint.
    name : str
        Argument name used in error messages.

    Returns
    -------
    rows : ndarray, shape (N, K), float64, C-contiguous
        An array the caller may read but must not write (it may share memory with the input).
    kind : Kind

    Raises
    ------
    InputError
        Not a real floating/integer array, no last axis, ``K = 0``, or any NaN or ``+inf``
        entry (the message names the rows). ``-inf`` is legal: a zero weight.
    """
    if isinstance(log_w, torch.Tensor):
        is_torch, device = True, log_w.device
        t = log_w.detach()
        if t.is_complex() or t.dtype == torch.bool:
            raise InputError(f"{name} must hold real numbers, got dtype {t.dtype}; pass float log-weights")
        shape = tuple(t.shape)
        if t.ndim:
            t = t.to(device="cpu", dtype=torch.float64).reshape(-1, shape[-1])
        arr = t.numpy()
    else:
        is_torch, device = False, None
        try:
            arr = np.asarray(log_w)
        except Exception as exc:  # pragma: no cover - numpy's own message is kept
            raise InputError(f"{name} could not be read as an array ({exc}); pass a numpy array or torch tensor") from exc
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise InputError(f"{name} must hold real numbers, got dtype {arr.dtype}; pass float log-weights")
        shape = arr.shape
    if len(shape) == 0:
        raise InputError(f"{name} must have a last axis of K samples (shape (..., K)), got a scalar; wrap it as [x]")
    batch_shape = tuple(shape[:-1])
    k = shape[-1]
    if k == 0:
        raise InputError(f"{name} has K = 0 samples on its last axis (shape {tuple(shape)}); pass at least one log-weight per row")
    rows = np.ascontiguousarray(arr.reshape(-1, k), dtype=np.float64)
    kind = Kind(is_torch=is_torch, device=device, batch_shape=batch_shape)
    # One whole-array maximum first (NaN and +inf both make it non-finite): the per-row masks,
    # slow for many short rows, only when it is.
    if rows.size and not np.isfinite(rows.max()):
        nan_rows = np.isnan(rows).any(axis=1)
        if nan_rows.any():
            raise InputError(
                f"{name} contains NaN in {format_positions(nan_rows, batch_shape)}; "
                f"remove those rows or replace NaN by -inf if it means a zero weight"
            )
        pinf_rows = np.isposinf(rows).any(axis=1)
        if pinf_rows.any():
            raise InputError(
                f"{name} contains +inf in {format_positions(pinf_rows, batch_shape)}; an infinite importance "
                f"weight makes every estimate infinite or undefined, so fix the model or proposal that produced it"
            )
    return rows, kind
