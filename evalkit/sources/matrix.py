"""A log-weight matrix that is already here: from any other tool, a file, or a gathered run."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np
import torch

from ..atomic import check_input_file
from ..errors import DataError, InputError
from .base import Block, LogWeightSource, row_blocks, zero_weight_rows, zero_weight_rows_error


class MatrixSource(LogWeightSource):
    """An in-memory ``[N, K]`` matrix; blocks are views of it.

    Parameters
    ----------
    log_w : Tensor, shape (N, K), float64, CPU, contiguous
        Validated log-weights (see :func:`check_log_weights`).
    data_label : str
        How tables name the rows.
    index : array of int, optional
        Dataset indices of the rows (default ``0 .. N-1``).
    model_label, seed : optional
        Where the matrix came from, when evalkit computed it.
    dims : int, optional
        D, the data dimensions of one datapoint, when known (for bits per dimension).
    """

    def __init__(self, log_w: torch.Tensor, *, data_label: str = "log-weight matrix",
                 index: Optional[np.ndarray] = None, model_label: Optional[str] = None,
                 seed: Optional[int] = None, shared_columns: bool = False,
                 dims: Optional[int] = None) -> None:
        self.log_w = log_w
        self.n, self.k = log_w.shape
        self.index = np.arange(self.n) if index is None else np.asarray(index, dtype=np.int64)
        self.data_label, self.model_label, self.seed = data_label, model_label, seed
        self.shared_columns = shared_columns
        self.dims = dims

    def blocks(self, rows: int) -> Iterator[Block]:
        return row_blocks(self.log_w, rows)


def as_log_weight_tensor(log_w: Any) -> torch.Tensor:
    """``log_w`` as a tensor without changing its dtype (a list of floats becomes float64, as numpy reads it)."""
    if isinstance(log_w, torch.Tensor):
        return log_w
    try:
        return torch.from_numpy(np.ascontiguousarray(np.asarray(log_w)))
    except (TypeError, ValueError) as exc:
        raise InputError(f"log-weights could not be read as a numeric [N, K] array ({exc}); pass a numpy array or "
                         "a torch tensor") from None


def check_real_floating(log_w: torch.Tensor, *, what: str = "log-weights") -> None:
    """Refuse log-weights whose dtype is not real floating point (integers, complex, bool) with one sentence.

    Integer log-weights have already lost their fractions (``-8.72`` stored as ``-8``), and a
    complex number is no log-density; converting either to float64 would give a wrong number
    without a word, so neither is converted.
    """
    if not log_w.is_floating_point():
        raise InputError(
            f"{what} must be real floating point numbers (float32 or float64), got dtype {log_w.dtype}; "
            "integer log-weights have lost their fractions and complex ones are no log-densities, so compute them "
            "in floating point."
        )


def check_log_weights(log_w: Any) -> torch.Tensor:
    """Validate a ``[N, K]`` log-weight matrix and return it as a float64 CPU tensor.

    Raises :class:`InputError` for a wrong shape, a dtype that is not real floating point
    (:func:`check_real_floating`), NaN or ``+inf`` entries, or a row whose weights are all zero
    (``-inf``: :func:`~evalkit.sources.base.zero_weight_rows_error`). The caller's array is never modified.
    """
    tensor = as_log_weight_tensor(log_w)
    if tensor.ndim != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise InputError(
            f"log-weights must be a non-empty [N, K] matrix (one row per datapoint), got shape {tuple(tensor.shape)}"
        )
    check_real_floating(tensor)
    tensor = tensor.detach().to("cpu", torch.float64)
    if torch.isnan(tensor).any():
        rows = torch.nonzero(torch.isnan(tensor).any(dim=1)).flatten()[:5].tolist()
        raise InputError(f"log-weights contain NaN (rows {rows}); fix the tool that produced them")
    if torch.isposinf(tensor).any():
        raise InputError("log-weights contain +inf; every weight must be finite (log-weights < +inf)")
    dead = zero_weight_rows(tensor)
    if len(dead):
        raise zero_weight_rows_error(dead.numpy(), tensor.shape[0], model_made=False)
    return tensor


def load_log_weights(path: Union[str, os.PathLike]) -> torch.Tensor:
    """Load a ``[N, K]`` log-weight matrix from ``.npy``, ``.npz``, ``.pt`` or ``.csv``.

    ``.npz`` and ``.pt`` may hold one array or a dict with key ``"log_weights"``. ``.pt`` files
    are read with ``torch.load(weights_only=True)`` (no arbitrary pickles).
    """
    value = load_array(path, what="log-weights")
    return check_log_weights(value)


def load_array(path: Union[str, os.PathLike], *, what: str, key: str = "log_weights") -> Any:
    """Read one array from ``.npy``, ``.npz``, ``.pt``, ``.csv`` or ``.txt``; ``what`` names it in errors.

    ``.npz`` / ``.pt`` files may hold several arrays; then the one named ``key`` is taken.
    """
    path = Path(path)
    check_input_file(path, f"{what} file", DataError)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                names = list(archive.keys())
                if key in names:
                    return archive[key]
                if len(names) == 1:
                    return archive[names[0]]
                raise DataError(f"{str(path)!r} holds arrays {names}; name the {what} array {key!r}")
        if suffix == ".pt":
            value = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(value, dict):
                if key not in value:
                    raise DataError(f"{str(path)!r} holds a dict without key {key!r}; save the {what} tensor itself")
                value = value[key]
            return value
        if suffix in (".csv", ".txt"):
            return np.loadtxt(path, delimiter="," if suffix == ".csv" else None, dtype=np.float64, ndmin=1)
    except DataError:
        raise
    except Exception as exc:  # unreadable or corrupt file: one sentence, not a traceback
        raise DataError(f"cannot read {what} from {str(path)!r} ({type(exc).__name__}: {exc}); check the file") from None
    raise DataError(f"{what} file {str(path)!r} must end in .npy, .npz, .pt, .csv or .txt")
