"""Text conventions shared by every table evalkit prints or writes.

One implementation each: the format dispatcher of the results' ``format`` methods, ``value ± SE``
rounded to the SE, short numbers, and JSON-safe values (NaN and infinities become ``null``).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import pandas as pd

from ..errors import InputError
from ..sources.base import LogWeightSource
from ..sources.provenance import PROVENANCE_KEYS

DEFAULT_QUANTITY = LogWeightSource.quantity_label
"""What estimates estimate unless the source says otherwise: ``"log p(x)"``."""


def quantity_metadata(source: LogWeightSource) -> Dict[str, str]:
    """``{"quantity": label}`` for a source whose estimates are not of log p(x) (e.g. a Bayesian
    network's predictive, ``"log p(y | x)"``), else ``{}``: metadata of log p(x) results is unchanged; and
    ``{"prior": ...}`` naming the weight prior of a Bayesian network's evidence (which depends on it)."""
    label = source.quantity_label
    prior = getattr(source, "prior_label", None)  # a Bayesian network's evidence: the prior it is under
    return ({} if label == DEFAULT_QUANTITY else {"quantity": label}) | ({"prior": prior} if prior else {})


def provenance_metadata(source: LogWeightSource) -> Dict[str, Optional[str]]:
    """``{"checkpoint_sha256": ..., "data_sha256": ...}``: the sha256 of the input files (None where an
    input is not a file, e.g. a log-weight matrix, an in-memory model or ``"digits"``); the same keys
    in every result's metadata."""
    return {key: source.provenance.get(key) for key in PROVENANCE_KEYS}


def quantity_of(metadata: Dict[str, Any]) -> str:
    """The quantity a result's metadata says its estimates are of (:data:`DEFAULT_QUANTITY` if none)."""
    return metadata.get("quantity", DEFAULT_QUANTITY)


def render(fmt: str, writers: Dict[str, Callable[[], str]]) -> str:
    """Call the writer of format ``fmt`` (the results' ``format`` methods share this and its error)."""
    if fmt not in writers:
        raise InputError(f"unknown format {fmt!r}; use one of {', '.join(writers)}")
    return writers[fmt]()


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` as a Markdown table, with ``|`` in headers and cells escaped as ``\\|`` so that a
    label such as ``log p(y | x)`` or ``|bias| slope`` stays in its own column."""
    def escape(value: Any) -> Any:
        return value.replace("|", r"\|") if isinstance(value, str) else value

    escaped = frame.rename(columns=escape)
    for column in escaped.columns:
        if not pd.api.types.is_numeric_dtype(escaped[column]):
            escaped[column] = escaped[column].map(escape)
    return escaped.to_markdown(index=False)


def num(value: float) -> str:
    """Four significant digits, or ``n/a`` for a missing or non-finite value."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.4g}"


def pm(value: float, se: float) -> str:
    """``value ± se`` with the value rounded to two significant digits of the SE."""
    if value is None or not math.isfinite(value):
        return "n/a"
    value = value + 0.0  # -0.0 (a reference minus itself) prints as 0
    if se is None or not math.isfinite(se):
        return f"{value:.6g}"
    if se == 0:
        return f"{value:.6g} ± 0"
    decimals = int(min(max(1 - math.floor(math.log10(se)), 0), 12))
    return f"{value:.{decimals}f} ± {se:.{decimals}f}"


def sig2(value: float) -> str:
    """Two significant digits, trailing zeros kept (``0.0020``, ``0.0015``), or ``n/a``."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:#.2g}".rstrip(".")


def slope_text(value: float, se: float, note: str = "") -> str:
    """A fitted slope with its SE, or with the reason it has none (``-1.02 (no SE: 2 points)``)."""
    if value is None or not math.isfinite(value):
        return f"n/a ({note})" if note else "n/a"
    if se is None or not math.isfinite(se):
        if not note:
            return f"{value:.2f} (no SE)"
        return f"{value:.2f} (no SE: {note.replace(': no SE', '')})"
    return pm(value, se)


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars and arrays as Python ones and non-finite floats as None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def records(frame: pd.DataFrame) -> List[Dict[str, Any]]:
    """The rows of ``frame`` as JSON-safe dicts."""
    return [jsonable(row) for row in frame.to_dict(orient="records")]


def footnoted(frame: pd.DataFrame, *, start: int = 1) -> tuple:
    """``(frame, notes)``: every ``note`` cell of ``frame`` replaced by numbered markers ``[1]``.

    Each distinct note (cells may join several with ``"; "``) gets one number, counting from
    ``start``; the notes are returned in that order, to be listed under the table.
    """
    if "note" not in frame.columns:
        return frame, []
    notes: List[str] = []
    markers = []
    for cell in frame["note"].fillna(""):
        parts = [part.strip() for part in str(cell).split("; ") if part.strip()]
        for part in parts:
            if part not in notes:
                notes.append(part)
        markers.append(" ".join(f"[{start + notes.index(part)}]" for part in parts))
    out = frame.copy()
    out["note"] = markers
    return out, notes
