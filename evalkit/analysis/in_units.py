"""Tables in nats per datapoint or in bits per dimension: the unit a result is shown in.

Results are computed and stored in nats per datapoint. Showing them in bits per dimension
(``units="bpd"``) is a linear change of every column, with ``D`` the data dimensions of the
model (:attr:`evalkit.sources.LogWeightSource.dims`) and :mod:`evalkit.units`' factor:

* log-likelihoods and their differences (estimates, references, biases, fit coefficients):
  ``x -> -x / (D ln 2)`` (the sign flips: bits are a code length);
* spreads (standard errors, RMSE): ``s -> s / (D ln 2)``;
* variances: ``v -> v / (D ln 2)^2``.

Each map is the one of :func:`evalkit.units.bits_per_dim` / :func:`~evalkit.units.se_bits_per_dim`,
so a bpd field equals ``-nats / (D ln 2)`` of its nats field exactly, in float64.
"""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
import pandas as pd

from ..errors import InputError
from ..units import LN2, bits_per_dim, se_bits_per_dim

UNITS = ("nats", "bpd")
"""The units a result can be shown in: nats per datapoint, bits per dimension."""

UNIT_LABELS = {"nats": "nats", "bpd": "bits/dim"}
"""How axes, tables and sentences name each unit."""


def check_units(units: str, dims: Optional[int]) -> str:
    """Return ``units`` after checking it is known and, for bits per dimension, that D is known."""
    if units not in UNITS:
        raise InputError(f"units must be one of {', '.join(UNITS)}, got {units!r}")
    if units == "bpd" and dims is None:
        raise InputError("bits per dimension need D, the number of data dimensions; pass dims= "
                         "(e.g. dims=784 for 28x28 images) or use units='nats'")
    return units


def resolve_dims(source_dims: Optional[int], dims: Optional[int]) -> Optional[int]:
    """D from the source (a model's ``data_dim``) or from ``dims=``; both given must agree."""
    if dims is None:
        return None if source_dims is None else int(source_dims)
    if isinstance(dims, bool) or not isinstance(dims, (int, np.integer)) or dims < 1:
        raise InputError(f"Expected argument `dims` to be a positive int (the data dimension D), got {dims!r}.")
    if source_dims is not None and int(source_dims) != int(dims):
        raise InputError(f"dims={dims} disagrees with the model's {source_dims} data dimensions; drop dims=")
    return int(dims)


def units_note(dims: Optional[int]) -> str:
    """The sentence stored as ``metadata["units"]``: what the fields are in and how they convert."""
    head = ("log-likelihood fields are in nats per datapoint; *_bpd fields are in bits per dimension, "
            "bpd = -nats / (D ln 2) and se_bpd = se_nats / (D ln 2)")
    if dims is None:
        return head + ", with D unknown here (pass dims= for bits per dimension), so they are null"
    return head + f", with D = {dims} (dims)"


def convert_frame(frame: pd.DataFrame, dims: int, *, values: Iterable[str] = (), spreads: Iterable[str] = (),
                  variances: Iterable[str] = ()) -> pd.DataFrame:
    """A copy of ``frame`` with the named columns in bits per dimension (absent columns are skipped).

    Parameters
    ----------
    frame : DataFrame
        Columns in nats per datapoint (or nats^2 for variances).
    dims : int
        D, the data dimensions.
    values, spreads, variances : iterable of str
        Log-likelihoods and their differences (``-x / (D ln 2)``), standard errors and RMSEs
        (``s / (D ln 2)``), variances (``v / (D ln 2)^2``).
    """
    out = frame.copy()
    for column in values:
        if column in out:
            out[column] = bits_per_dim(out[column].to_numpy(dtype=np.float64), dims)
    for column in spreads:
        if column in out:
            out[column] = se_bits_per_dim(out[column].to_numpy(dtype=np.float64), dims)
    for column in variances:
        if column in out:
            out[column] = out[column].to_numpy(dtype=np.float64) / (int(dims) * LN2) ** 2
    return out


def with_bpd_columns(frame: pd.DataFrame, dims: Optional[int], *, values: Iterable[str] = (),
                     spreads: Iterable[str] = (), variances: Iterable[str] = ()) -> pd.DataFrame:
    """A copy of ``frame`` with a ``name + "_bpd"`` twin after the columns for each named column.

    The twins are :func:`convert_frame`'s conversions (``-x / (D ln 2)`` for ``values``,
    ``s / (D ln 2)`` for ``spreads``, ``v / (D ln 2)^2`` for ``variances``); absent columns are
    skipped, and without D (``dims=None``) the copy has no twins at all.
    """
    out = frame.copy()
    if dims is None:
        return out
    converted = convert_frame(frame, dims, values=values, spreads=spreads, variances=variances)
    for column in (*values, *spreads, *variances):
        if column in frame:
            out[f"{column}_bpd"] = converted[column]
    return out


def bpd_fields(row: dict, dims: Optional[int], *, values: Iterable[str] = (), spreads: Iterable[str] = (),
               variances: Iterable[str] = ()) -> dict:
    """``{name + "_bpd": converted}`` for the named fields of one JSON row (None where D is unknown)."""
    out = {}
    for names, convert in ((values, bits_per_dim), (spreads, se_bits_per_dim),
                           (variances, lambda v, d: v / (int(d) * LN2) ** 2)):
        for name in names:
            if name in row:
                value = row[name]
                out[f"{name}_bpd"] = None if dims is None or value is None else float(convert(float(value), dims))
    return out


SUMMARY_COLUMNS = {"values": ("estimate",), "spreads": ("se_data", "se_mc")}
"""How :attr:`evalkit.EstimateResult.summary` columns convert."""

SWEEP_TABLE_COLUMNS = {"values": ("estimate", "bias", "gap_to_kmax"),
                       "spreads": ("estimate_se", "mc_se", "bias_se", "rmse", "rmse_se", "gap_to_kmax_se"),
                       "variances": ("variance", "variance_se")}
"""How :attr:`evalkit.SweepResult.table` columns convert."""

THEORY_COLUMNS = {"values": ("bias", "bias_2"), "variances": ("variance", "variance_2")}
FIT_COLUMNS = {"values": ("a", "b", "c", "a_minus_reference"), "spreads": ("a_se", "a_minus_reference_se")}
PER_DATAPOINT_COLUMNS = {"values": ("mean", "reference"), "variances": ("variance",)}
