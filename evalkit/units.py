"""Units of log-likelihood: nats per datapoint and bits per dimension.

A log-likelihood ``log p(x)`` in nats per datapoint with ``D`` data dimensions (``H x W x C``
for images: the model's ``data_dim``) is, in bits per dimension,

.. math::

    \\mathrm{bpd} = -\\frac{\\log p(x)}{D \\ln 2},
    \\qquad \\log p(x) = -\\mathrm{bpd} \\cdot D \\ln 2 .

The sign flips (bpd is a code length: lower is better). A standard error is a spread, so it
converts with the factor's magnitude only: ``se_bpd = se_nats / (D ln 2)``. Both maps are
linear, so an estimate's mean and its standard error convert exactly; the conversion applies
to ``log P(v)`` of a discrete model (bits on the integer lattice). A density on rescaled data
(for example ``[0, 1]``) is only comparable after the change of units ``- D log L`` (see
:mod:`evalkit.models.discrete`).
"""
from __future__ import annotations

import math
from typing import TypeVar, Union

import numpy as np
import torch

from .errors import InputError

ArrayLike = TypeVar("ArrayLike", float, np.ndarray, torch.Tensor)

LN2 = math.log(2.0)


def _check_dims(dims: Union[int, np.integer]) -> int:
    if isinstance(dims, bool) or not isinstance(dims, (int, np.integer)) or dims < 1:
        raise InputError(f"Expected argument `dims` to be a positive int (the data dimension D), got {dims!r}.")
    return int(dims)


def _float64(value: ArrayLike) -> ArrayLike:
    """``value`` as float64 (a new tensor/array; the caller's is never modified)."""
    if isinstance(value, torch.Tensor):
        return value.to(torch.float64)
    if isinstance(value, np.ndarray):
        return np.asarray(value, dtype=np.float64)
    return float(value)


def bits_per_dim(nats: ArrayLike, dims: int) -> ArrayLike:
    """Convert log-likelihoods in nats per datapoint to bits per dimension.

    Parameters
    ----------
    nats : float, ndarray or Tensor
        ``log p(x)`` per datapoint (or an average of them), in nats.
    dims : int
        ``D``, the number of data dimensions of one datapoint.

    Returns
    -------
    Same type as ``nats`` (float64)
        ``-nats / (D ln 2)``.

    Examples
    --------
    >>> round(bits_per_dim(-64 * math.log(2.0), 64), 12)
    1.0
    """
    return -_float64(nats) / (_check_dims(dims) * LN2)


def nats_from_bits_per_dim(bpd: ArrayLike, dims: int) -> ArrayLike:
    """Convert bits per dimension back to ``log p(x)`` in nats per datapoint: ``-bpd * D ln 2``."""
    return -_float64(bpd) * (_check_dims(dims) * LN2)


def se_bits_per_dim(se_nats: ArrayLike, dims: int) -> ArrayLike:
    """Convert a standard error in nats to one in bits per dimension: ``se / (D ln 2)`` (no sign flip)."""
    return _float64(se_nats) / (_check_dims(dims) * LN2)


def se_nats_from_bits_per_dim(se_bpd: ArrayLike, dims: int) -> ArrayLike:
    """Convert a standard error in bits per dimension to nats: ``se_bpd * D ln 2``."""
    return _float64(se_bpd) * (_check_dims(dims) * LN2)


__all__ = ["LN2", "bits_per_dim", "nats_from_bits_per_dim", "se_bits_per_dim", "se_nats_from_bits_per_dim"]
