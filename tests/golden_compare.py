"""Structured comparison of golden output files (estimate JSON, sweep CSVs) across machines.

The same seed gives bitwise the same numbers on one machine and software stack; across CPUs
the SIMD paths of torch, MKL and numpy (AVX2 vs AVX-512 reductions, exp/log kernels) round
differently, so per-datapoint PSIS k-hat, ESS and estimates can differ in their last bits.
This module compares two output directories field by field:

* same file names, same JSON keys and list lengths, same CSV columns and row count;
* integers, booleans, text and missing values exactly;
* floats within ``|a - b| <= REL_TOL * max(|a|, |b|) + ABS_TOL`` (both NaN, or equal infinities,
  also match).

Why these tolerances. A float64 value carries a relative rounding error of 2**-53 ~ 1.1e-16 per
operation; reductions over K = 1000 samples and N = 359 datapoints, PSIS's Pareto fit and a
least-squares fit accumulate at most a few thousand such errors, about 1e-13 relative, so
``REL_TOL = 1e-12`` admits every SIMD path with a factor of ten to spare while still catching a
change of one estimate by 1e-9 (relative or absolute: the golden estimates are of order 1-100,
so 1e-9 absolute is at least 1e-11 relative). ``ABS_TOL = 1e-14`` matters only for values that
are themselves cancellation noise near zero (e.g. a fitted 1/K coefficient of -1.1e-13 for the
ELBO, whose true value is 0): there a relative tolerance means nothing, and 1e-14 is still five
orders of magnitude below the 1e-9 a real change would move a value by.

One exception: the extrapolation coefficients ``b`` and ``c`` of ``a + b/K + c/K^2`` in
``sweep_fits.csv`` are least-squares solutions whose rows of the pseudo-inverse have 1-norms 97
and 989 for the golden K grid (10, 20, ..., 1000; condition number 1.2e3), so a last-bit change of
the estimates (|y| ~ 22) moves them by up to ~1e3 x 22 x 1e-16 absolute; on an AVX-512 EPYC ``c``
moved by 3.6e-12 (3.3e-12 relative) even with numpy's and torch's wide paths off (OpenBLAS picks
its own kernels). Those two columns are compared with the absolute tolerance
``REL_TOL * FIT_AMPLIFICATION * |a|`` of their row (about 2e-8), the same relative precision
of the inputs carried through the fit. Likewise ``a_minus_reference`` is the difference of two
numbers of size |a| (~22) that cancel to ~1e-3, so its error is relative to |a|, not to itself
(it moved by 7.7e-15, 2.3e-12 of itself): it gets ``REL_TOL * |a|``.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import List

REL_TOL = 1e-12
"""Relative tolerance on float fields (see module notes)."""
ABS_TOL = 1e-14
"""Absolute floor for float fields near zero (see module notes)."""

FIT_AMPLIFICATION = 1e3
"""Bound on the pseudo-inverse row 1-norms of the fit ``a + b/K + c/K^2`` (see module notes)."""
_SCALED = {"sweep_fits.csv": {"b": FIT_AMPLIFICATION, "c": FIT_AMPLIFICATION, "a_minus_reference": 1.0}}
"""Columns compared with the absolute tolerance ``REL_TOL * factor * |a|`` of their row (module notes)."""

GOLDEN_NAMES = ["estimate.json", "sweep.csv", "sweep_fits.csv", "sweep_theory.csv", "sweep_weights.csv"]


def floats_match(a: float, b: float, rel: float = REL_TOL, abs_: float = ABS_TOL) -> bool:
    """True if ``|a - b| <= rel * max(|a|, |b|) + abs_``, or both are NaN, or equal infinities."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= rel * max(abs(a), abs(b)) + abs_


def _compare_json(a: object, b: object, path: str, out: List[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        if sorted(a) != sorted(b):
            out.append(f"{path}: keys differ: {sorted(set(a) ^ set(b))}")
        for key in sorted(set(a) & set(b)):
            _compare_json(a[key], b[key], f"{path}/{key}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: lengths {len(a)} and {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            _compare_json(x, y, f"{path}[{i}]", out)
    elif isinstance(a, float) and isinstance(b, float):
        if not floats_match(a, b):
            out.append(f"{path}: {a!r} and {b!r}")
    elif type(a) is not type(b) or a != b:
        out.append(f"{path}: {a!r} and {b!r}")


def _cell(text: str) -> object:
    """A CSV cell as int (exact), float (toleranced) or text (exact)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _compare_csv(a_text: str, b_text: str, name: str, out: List[str]) -> None:
    a_rows, b_rows = list(csv.reader(io.StringIO(a_text))), list(csv.reader(io.StringIO(b_text)))
    if not a_rows or not b_rows or a_rows[0] != b_rows[0]:
        out.append(f"{name}: header differs: {a_rows[:1]} and {b_rows[:1]}")
        return
    if len(a_rows) != len(b_rows):
        out.append(f"{name}: {len(a_rows) - 1} and {len(b_rows) - 1} rows")
    header, scaled = a_rows[0], _SCALED.get(name, {})
    for r, (ra, rb) in enumerate(zip(a_rows[1:], b_rows[1:]), start=1):
        if len(ra) != len(rb):
            out.append(f"{name} row {r}: {len(ra)} and {len(rb)} cells")
            continue
        for column, x, y in zip(header, ra, rb):
            x, y = _cell(x), _cell(y)
            if column in scaled and isinstance(x, float) and isinstance(y, float):
                scale = abs(float(ra[header.index("a")]))
                if not floats_match(x, y, rel=0.0, abs_=REL_TOL * scaled[column] * scale + ABS_TOL):
                    out.append(f"{name} row {r} {column}: {x!r} and {y!r}")
                continue
            _compare_json(x, y, f"{name} row {r} {column}", out)


IGNORED_METADATA = ("torch_version", "python_version", "elapsed_seconds", "provenance")
"""``metadata`` keys of the estimate JSON that name the software stack or the run, not its numbers:
another machine may have another Python or torch build and still owe the same numbers."""


def compare_texts(name: str, a_text: str, b_text: str) -> List[str]:
    """Differences between two versions of one golden file (JSON if ``name`` ends in .json, else CSV)."""
    out: List[str] = []
    if name.endswith(".json"):
        a, b = json.loads(a_text), json.loads(b_text)
        for doc in (a, b):
            for key in IGNORED_METADATA:
                doc.get("metadata", {}).pop(key, None)
        _compare_json(a, b, name, out)
    else:
        _compare_csv(a_text, b_text, name, out)
    return out


def compare_dirs(expected: Path, got: Path) -> List[str]:
    """Every difference beyond the tolerances between two golden directories; empty if they match."""
    expected, got = Path(expected), Path(got)
    names = sorted(p.name for p in expected.iterdir())
    out = [] if names == sorted(p.name for p in got.iterdir()) else [
        f"file names differ: {names} and {sorted(p.name for p in got.iterdir())}"]
    for name in names:
        if (got / name).exists():
            out += compare_texts(name, (expected / name).read_text(), (got / name).read_text())
    return out
