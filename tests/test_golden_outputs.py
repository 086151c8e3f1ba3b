"""The bundled example's outputs equal the committed golden files, to the last bits.

tests/data/golden was written by ``scripts/make_golden_outputs.py`` with main at 548496f (before
the subpackage layout, issue 12). On one machine and software stack the same seed gives the
same bits (tests/test_determinism*.py check that bitwise); across CPUs the SIMD paths of torch,
MKL, OpenBLAS and numpy round differently, so the golden files are compared field by field with
the tolerances of tests/golden_compare.py (float64: relative 1e-12 plus an absolute 1e-14 floor;
integers, text and structure exactly). The last two tests show that this comparison still
catches a real change (one estimate moved by 1e-9) and admits last-bit noise.
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from golden_compare import GOLDEN_NAMES, compare_dirs, compare_texts

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden"


@pytest.mark.pinned
@pytest.mark.slow
def test_bundled_example_outputs_match_the_golden_files(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_golden_outputs.py"), str(tmp_path)],
                   cwd=ROOT, check=True, capture_output=True)
    assert sorted(p.name for p in GOLDEN.iterdir()) == GOLDEN_NAMES
    assert compare_dirs(GOLDEN, tmp_path) == []


def _estimate():
    return json.loads((GOLDEN / "estimate.json").read_text())


def _dump(d):
    return json.dumps(d, indent=1, sort_keys=True) + "\n"


def _map_floats(value, f):
    if isinstance(value, dict):
        return {key: _map_floats(v, f) for key, v in value.items()}
    if isinstance(value, list):
        return [_map_floats(v, f) for v in value]
    return f(value) if isinstance(value, float) else value


def _next_float(x):
    return math.nextafter(x, math.inf) if math.isfinite(x) else x


def _csv_next_floats(text):
    import csv, io
    rows = list(csv.reader(io.StringIO(text)))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(rows[0])
    for row in rows[1:]:
        cells = []
        for cell in row:
            try:
                int(cell)
                cells.append(cell)
            except ValueError:
                try:
                    cells.append(repr(_next_float(float(cell))))
                except ValueError:
                    cells.append(cell)
        writer.writerow(cells)
    return out.getvalue()


def test_last_bit_noise_on_every_float_passes():
    moved = _map_floats(_estimate(), _next_float)
    assert _dump(moved) != (GOLDEN / "estimate.json").read_text()
    assert compare_texts("estimate.json", (GOLDEN / "estimate.json").read_text(), _dump(moved)) == []
    for name in GOLDEN_NAMES[1:]:
        text = (GOLDEN / name).read_text()
        noisy = _csv_next_floats(text)
        assert noisy != text
        assert compare_texts(name, text, noisy) == [], name


@pytest.mark.parametrize("how", ["absolute", "relative"])
def test_one_estimate_moved_by_1e_9_fails(how):
    golden = _estimate()
    for target in ("summary", "per_example"):
        d = _estimate()
        if target == "summary":  # the IWAE estimate, -21.85
            row = d["estimates"][1]
            row["estimate"] = row["estimate"] + 1e-9 if how == "absolute" else row["estimate"] * (1 + 1e-9)
        else:  # one datapoint's PSIS k-hat (about 0.1-1)
            values = d["per_example"]["psis_khat"]
            values[3] = values[3] + 1e-9 if how == "absolute" else values[3] * (1 + 1e-9)
        problems = compare_texts("estimate.json", _dump(golden), _dump(d))
        assert len(problems) == 1, (target, problems)


def test_a_sweep_cell_moved_by_1e_9_fails_and_ints_and_text_are_exact():
    text = (GOLDEN / "sweep.csv").read_text()
    lines = text.splitlines(keepends=True)
    cells = lines[5].split(",")
    cells[3] = repr(float(cells[3]) + 1e-9)  # the estimate column
    assert len(compare_texts("sweep.csv", text, "".join(lines[:5] + [",".join(cells)] + lines[6:]))) == 1
    cells = lines[5].split(",")
    cells[2] = str(int(cells[2]) + 1)  # groups: an integer
    assert len(compare_texts("sweep.csv", text, "".join(lines[:5] + [",".join(cells)] + lines[6:]))) == 1
    assert compare_texts("sweep.csv", text, text.replace("pool:jvi2@K=1000", "pool:jvi1@K=1000", 1)) != []
    assert compare_texts("sweep.csv", text, "".join(lines[:-1])) != []  # a row missing
    d = _estimate()
    d["metadata"]["extra"] = 1
    assert compare_texts("estimate.json", _dump(_estimate()), _dump(d)) != []  # a key added


NARROW = {"ATEN_CPU_CAPABILITY": "avx2", "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"}


def test_ci_runs_the_pinned_tests_again_with_the_wide_vector_units_off():
    run = (ROOT / ".ci" / "run").read_text()
    narrowed = " ".join(f'{key}={value!r}'.replace("'", '"') if " " in value else f"{key}={value}"
                        for key, value in NARROW.items())
    assert narrowed in run and "-m pinned" in run.split(narrowed, 1)[1].splitlines()[1]
    assert narrowed in (ROOT / "README.md").read_text()


def test_the_narrowed_vector_units_are_accepted_silently():
    # numpy refuses to import if NPY_DISABLE_CPU_FEATURES names a feature it does not know of;
    # torch warns on an unknown ATEN_CPU_CAPABILITY. Neither may say anything here.
    import os

    code = ("import numpy, torch; from numpy._core._multiarray_umath import __cpu_features__ as f; "
            "assert not any(f[name] for name in ('X86_V4', 'AVX512_ICL', 'AVX512_SPR')); "
            "assert torch.backends.cpu.get_cpu_capability() in ('AVX2', 'DEFAULT'), torch.backends.cpu.get_cpu_capability()")
    result = subprocess.run([sys.executable, "-W", "error", "-c", code], env={**os.environ, **NARROW},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stderr


def test_the_software_stack_is_not_pinned_but_the_numbers_are():
    text = (GOLDEN / "estimate.json").read_text()
    doc = json.loads(text)
    doc["metadata"]["python_version"], doc["metadata"]["torch_version"] = "3.13.1", "2.14.0+cpu"
    assert compare_texts("estimate.json", text, json.dumps(doc)) == []
    doc["metadata"]["k"] += 1
    assert compare_texts("estimate.json", text, json.dumps(doc))
