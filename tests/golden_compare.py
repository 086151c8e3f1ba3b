"""Compare golden outputs across machines: exact where bits are promised, to the last bits where they are not.

evalkit's numbers are bitwise reproducible on one machine and software stack (batch size,
chunking, threads, processes, row subsets: tests/test_determinism*.py check that bitwise). Across
CPUs the SIMD paths of torch, MKL and numpy (AVX2 against AVX-512, say) round some sums and
transcendental functions differently, so a pinned float64 can differ in its last bits. The rule
here:

* integers, strings, booleans, nulls, keys, column names, row counts: exactly equal;
* a float64 ``b`` against the golden ``a``: ``|a - b| <= RTOL * scale`` with ``scale`` the largest
  magnitude of the same field (a JSON scalar: ``max(|a|, |b|)``; a JSON list or a CSV column: its
  largest finite magnitude, so that values that are rounding noise around 0 in a column of
  O(1) numbers, e.g. a fit's c = -8.9e-16, are judged on the column's scale);
  NaN only against NaN, +-inf only against the same infinity.

``RTOL = 1e-12`` is about 4500 ulps: a last-bit difference, even carried through a few
hundred float64 operations, stays far inside it, while any real change does not (moving one
estimate of about -21.85 by 1e-9 is 4.6e-11 relative, 46 times the tolerance; the test shows
that it fails).

Fields that describe the machine or the moment, not the numbers, are skipped: ``IGNORED_METADATA``.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, List

RTOL = 1e-12
"""Relative tolerance of a float64 against the scale of its field (see the module notes)."""

IGNORED_METADATA = ("torch_version", "python_version", "elapsed_seconds", "provenance")
"""``metadata`` keys of the estimate JSON that name the software stack or the run, not its numbers."""

NAMES = ("estimate.json", "sweep.csv", "sweep_fits.csv", "sweep_theory.csv", "sweep_weights.csv")


def compare_dirs(golden: Path, new: Path) -> List[str]:
    """Every difference between the golden outputs in ``golden`` and those in ``new`` (empty: equal)."""
    problems: List[str] = []
    for name in NAMES:
        a, b = (Path(golden) / name).read_text(), (Path(new) / name).read_text()
        problems += compare_json(a, b, name) if name.endswith(".json") else compare_csv(a, b, name)
    return problems


def compare_json(golden_text: str, new_text: str, name: str = "json") -> List[str]:
    a, b = json.loads(golden_text), json.loads(new_text)
    for doc in (a, b):
        for key in IGNORED_METADATA:
            doc.get("metadata", {}).pop(key, None)
    problems: List[str] = []
    _walk(a, b, name, problems)
    return problems


def _walk(a: Any, b: Any, path: str, problems: List[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        if sorted(a) != sorted(b):
            problems.append(f"{path}: keys differ: {sorted(set(a) ^ set(b))}")
        for key in sorted(set(a) & set(b)):
            _walk(a[key], b[key], f"{path}/{key}", problems)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            problems.append(f"{path}: {len(a)} items against {len(b)}")
            return
        scale = _scale([x for x in a + b if _is_float(x)])
        for i, (x, y) in enumerate(zip(a, b)):
            if _is_float(x) or _is_float(y):
                _close(x, y, scale, f"{path}[{i}]", problems)
            else:
                _walk(x, y, f"{path}[{i}]", problems)
    elif _is_float(a) or _is_float(b):
        _close(a, b, _scale([a, b]), path, problems)
    elif type(a) is not type(b) or a != b:
        problems.append(f"{path}: {a!r} against {b!r}")


def compare_csv(golden_text: str, new_text: str, name: str = "csv") -> List[str]:
    a, b = list(csv.reader(io.StringIO(golden_text))), list(csv.reader(io.StringIO(new_text)))
    if not a or not b or a[0] != b[0]:
        return [f"{name}: header {a[:1]} against {b[:1]}"]
    if len(a) != len(b):
        return [f"{name}: {len(a) - 1} rows against {len(b) - 1}"]
    problems: List[str] = []
    for column, header in enumerate(a[0]):
        cells = [(ra[column], rb[column]) for ra, rb in zip(a[1:], b[1:])]
        floats = [float(x) for pair in cells for x in pair if _float_cell(x)]
        scale = _scale(floats)
        for row, (x, y) in enumerate(cells, start=2):
            where = f"{name}:{row}:{header}"
            if _float_cell(x) and _float_cell(y):
                _close(float(x), float(y), scale, where, problems)
            elif x != y:
                problems.append(f"{where}: {x!r} against {y!r}")
    return problems


def _float_cell(text: str) -> bool:
    """A float cell (an integer cell such as k or groups is compared as text, exactly)."""
    try:
        int(text)
        return False
    except ValueError:
        pass
    try:
        float(text)
        return True
    except ValueError:
        return False


def _is_float(value: Any) -> bool:
    return isinstance(value, float)


def _scale(values: List[float]) -> float:
    finite = [abs(v) for v in values if isinstance(v, float) and math.isfinite(v)]
    return max(finite, default=0.0)


def _close(a: Any, b: Any, scale: float, where: str, problems: List[str]) -> None:
    if not (_is_float(a) and _is_float(b)):
        problems.append(f"{where}: {a!r} against {b!r} (a float against another type)")
    elif math.isnan(a) or math.isnan(b) or math.isinf(a) or math.isinf(b):
        if not (a == b or (math.isnan(a) and math.isnan(b))):
            problems.append(f"{where}: {a!r} against {b!r}")
    elif abs(a - b) > RTOL * scale:
        problems.append(f"{where}: {a!r} against {b!r} (|difference| {abs(a - b):.3g} > {RTOL:g} x {scale:.3g})")
