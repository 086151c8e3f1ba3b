"""Turn what a user hands the API (a model or a checkpoint path; a tensor, an array, a file or a
dataset name) into a model and a validated ``[N, D]`` data tensor.

These are the only places where the public API accepts "either a thing or where to find it",
so that :func:`evalkit.analysis.estimate`, :func:`evalkit.analysis.sweep` and the CLI agree on the rules.
"""
from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np
import torch

from ..errors import DataError

ModelLike = Union[torch.nn.Module, str, os.PathLike]
DataLike = Union[torch.Tensor, np.ndarray, str, os.PathLike]


def resolve_model(
    model: ModelLike,
    *,
    factory: Optional[str] = None,
    prefix: Optional[str] = None,
    allow_pickle: bool = False,
) -> torch.nn.Module:
    """Return ``model`` itself, or load it from a checkpoint path with :func:`evalkit.load_model`."""
    if isinstance(model, torch.nn.Module) or hasattr(model, "log_weights"):
        return model
    from ..models.checkpoints import load_model

    return load_model(model, factory=factory, prefix=prefix, allow_pickle=allow_pickle)


def resolve_data(
    data: DataLike,
    *,
    model: Optional[torch.nn.Module] = None,
    split: str = "test",
    binarize: str = "none",
    seed: int = 0,
) -> torch.Tensor:
    """Return the data as a ``[N, D]`` float tensor, checked against ``model`` when given.

    Parameters
    ----------
    data : Tensor, ndarray, str or path
        In-memory data (one datapoint per row; images are flattened), a built-in dataset name
        (``"digits"``) or a ``.npy``/``.npz``/``.pt``/``.csv`` file.
    model : Module, optional
        When given, the data dimension and (for Bernoulli decoders) binariness are checked.
    split, binarize, seed
        As in :func:`evalkit.data.load_data`; ``binarize`` also applies to in-memory data.
    """
    from .. import data as data_module

    if isinstance(data, (str, os.PathLike)):
        tensor = data_module.load_data(data, split=split, binarize=binarize, seed=seed)
    else:
        if isinstance(data, np.ndarray):
            array = np.asarray(data)
            tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64 if array.dtype == np.float64 else np.float32))
        elif isinstance(data, torch.Tensor):
            # Keep float64 data float64: rounding x to float32 would change log p(x) itself.
            tensor = data.detach().to("cpu")
            if not tensor.is_floating_point():
                tensor = tensor.to(torch.float32)
        else:
            raise DataError(
                f"data must be a tensor, a numpy array, a file path or a dataset name, got {type(data).__name__}"
            )
        if tensor.ndim == 1:
            raise DataError(
                f"data has shape {tuple(tensor.shape)}; pass one datapoint per row, e.g. data.reshape(1, -1) for one datapoint"
            )
        if tensor.ndim == 0 or tensor.shape[0] == 0:
            raise DataError(f"data has shape {tuple(tensor.shape)}: no datapoints; pass at least one row")
        tensor = tensor.reshape(tensor.shape[0], -1)
        if binarize != "none":
            tensor = data_module.binarize(tensor, binarize, seed=seed)
    if model is not None:
        data_module.check_data_for_model(tensor, model)
    return tensor
