"""A log-weight matrix that is already here: from any other tool, a file, or a gathered run."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np
import torch

from ..errors import DataError, InputError
from .base import Block, LogWeightSource, row_blocks


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


def check_log_weights(log_w: Any) -> torch.Tensor:
    """Validate a ``[N, K]`` log-weight matrix and return it as a float64 CPU tensor.

    Raises :class:`InputError` for a wrong shape, NaN or ``+inf`` entries, or a row whose
    weights are all zero (``-inf``). The caller's array is never modified.
    """
    tensor = torch.as_tensor(log_w) if not isinstance(log_w, np.ndarray) else torch.from_numpy(np.asarray(log_w))
    if tensor.ndim != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise InputError(
            f"log-weights must be a non-empty [N, K] matrix (one row per datapoint), got shape {tuple(tensor.shape)}"
        )
    if not (tensor.is_floating_point()):
        raise InputError(f"log-weights must be floating point, got dtype {tensor.dtype}; convert with .astype(float)")
    tensor = tensor.detach().to("cpu", torch.float64)
    if torch.isnan(tensor).any():
        rows = torch.nonzero(torch.isnan(tensor).any(dim=1)).flatten()[:5].tolist()
        raise InputError(f"log-weights contain NaN (rows {rows}); fix the tool that produced them")
    if torch.isposinf(tensor).any():
        raise InputError("log-weights contain +inf; every weight must be finite (log-weights < +inf)")
    dead = torch.isneginf(tensor).all(dim=1)
    if dead.any():
        rows = torch.nonzero(dead).flatten()[:5].tolist()
        raise InputError(f"every log-weight of rows {rows} is -inf (zero weight); drop those datapoints")
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
    if not path.is_file():
        raise DataError(f"{what} file {str(path)!r} does not exist; check the path")
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
