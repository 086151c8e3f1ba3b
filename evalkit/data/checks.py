"""Checks that data fit a model: shape, finiteness, binary or integer values; one sentence per problem."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError


def rows_text(rows: torch.Tensor) -> str:
    """Return the first five entries of ``rows`` for a message, e.g. ``'[3, 9]'`` or ``'[1, 2, 3, 4, 5] and 7 more'``."""
    shown = rows[:5].tolist()
    more = f" and {len(rows) - len(shown)} more" if len(rows) > len(shown) else ""
    return f"{shown}{more}"


def as_data_tensor(data: object) -> object:
    """Return an in-memory dataset as a CPU tensor ``[N, D]``: numpy arrays and tensors are converted,
    anything else is returned as it is (for :func:`check_data_for_model` to refuse in one sentence).

    float64 stays float64 (rounding ``x`` to float32 would change log p(x) itself); other floats
    become float32 and integer or boolean values float32 (exact for the levels images use).
    """
    if isinstance(data, np.ndarray):
        array = np.asarray(data)
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64 if array.dtype == np.float64 else np.float32))
    if isinstance(data, torch.Tensor):
        tensor = data.detach().to("cpu")
        return tensor if tensor.is_floating_point() else tensor.to(torch.float32)
    return data


def check_data_for_model(data: torch.Tensor, model: torch.nn.Module) -> None:
    """Check that ``data`` can be evaluated by ``model``; raise :class:`DataError` if not.

    Parameters
    ----------
    data : Tensor, shape (N, D)
    model : model following the protocol (``data_dim``, ``requires_binary_data``)

    Raises
    ------
    DataError
        Empty data; not 2-D; ``D != model.data_dim``; NaN or infinite values (the rows are
        named); non-binary values for a model with ``requires_binary_data``; for a model with
        an int ``data_levels`` (a discrete decoder), values that are not integers in
        ``0..data_levels-1`` (:func:`check_discrete_data`).
    """
    if not isinstance(data, torch.Tensor):
        raise DataError(f"Expected the data as a torch.Tensor [N, D], got {type(data).__name__}; use evalkit.load_data.")
    if data.dim() != 2:
        raise DataError(f"Expected the data as a 2-D tensor [N, D], got shape {tuple(data.shape)}; flatten each datapoint.")
    if data.shape[0] == 0:
        raise DataError("the dataset is empty (N = 0); check the file and the split.")
    if data.shape[1] != model.data_dim:
        raise DataError(
            f"the data have {data.shape[1]} values per datapoint but the model expects data_dim={model.data_dim}; "
            "load the dataset the model was trained on."
        )
    if not data.is_floating_point():
        data = data.double()
    bad = (~torch.isfinite(data)).any(dim=1).nonzero().flatten()
    if len(bad):
        raise DataError(f"the data contain NaN or infinite values in rows {rows_text(bad)} ({len(bad)} rows); remove or fix them.")
    if getattr(model, "requires_binary_data", False):
        non_binary = ((data != 0) & (data != 1)).any(dim=1).nonzero().flatten()
        if len(non_binary):
            low, high = float(data.min()), float(data.max())
            hint = " (values above 1: scale them to [0, 1] first)" if high > 1 else ""
            raise DataError(
                f"the model has a Bernoulli decoder but rows {rows_text(non_binary)} ({len(non_binary)} rows) are not "
                f"binary (range [{low:g}, {high:g}]){hint}; load the data with binarize='bernoulli' "
                "(stochastic, fixed once by the seed) or binarize='threshold' (x > 0.5)."
            )
    levels = getattr(model, "data_levels", None)
    if isinstance(levels, int) and not getattr(model, "requires_binary_data", False):
        check_discrete_data(data, levels)


def check_discrete_data(data: torch.Tensor, levels: int) -> None:
    """Check that ``data`` holds integer levels ``0..levels-1``; raise :class:`DataError` naming the rows if not.

    Parameters
    ----------
    data : Tensor, shape (N, D)
        Any dtype; floats must be integer-valued.
    levels : int
        Number of values a pixel takes (the model's ``data_levels``).
    """
    values = data if data.is_floating_point() else data.to(torch.int64)
    if data.is_floating_point():
        fractional = (values != values.round()).any(dim=1).nonzero().flatten()
        if len(fractional):
            raise DataError(
                f"the model's decoder is discrete over {levels} integer levels but rows {rows_text(fractional)} "
                f"({len(fractional)} rows) hold non-integer values (range [{float(values.min()):g}, "
                f"{float(values.max()):g}]); pass the integer images 0..{levels - 1} (evalkit.data.load_images), "
                "not scaled floats."
            )
    outside = ((values < 0) | (values > levels - 1)).any(dim=1).nonzero().flatten()
    if len(outside):
        raise DataError(
            f"the model's decoder takes values 0..{levels - 1} but rows {rows_text(outside)} ({len(outside)} rows) "
            f"hold values in [{float(values.min()):g}, {float(values.max()):g}]; load data with {levels} levels "
            f"(8-bit images need levels=256)."
        )
