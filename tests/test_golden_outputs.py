"""The bundled example's outputs match those pinned in tests/data/golden, on any CPU.

tests/data/golden was written by ``scripts/make_golden_outputs.py``; any real change of a number
for the same seed fails here. The comparison (tests/golden_compare.py) is exact for integers,
text and structure and admits only last-bit float64 differences (relative 1e-12 of the field's
scale), which the SIMD paths of different CPUs produce: pinned bits hold on one machine and
software stack (tests/test_determinism*.py check those bitwise), not across CPUs. ``.ci/run``
runs this file a second time with the wide vector units off to prove it.
"""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from golden_compare import NAMES, RTOL, compare_csv, compare_dirs, compare_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden"

pytestmark = pytest.mark.pinned


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    out = tmp_path_factory.mktemp("golden")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_golden_outputs.py"), str(out)],
                   cwd=ROOT, check=True, capture_output=True)
    return out


@pytest.mark.slow
def test_bundled_example_outputs_match_the_golden_files(fresh):
    assert sorted(p.name for p in GOLDEN.iterdir()) == sorted(NAMES)
    assert compare_dirs(GOLDEN, fresh) == []


def _nudged(text: str, step) -> str:
    """Every float64 of a JSON document moved by ``step(value)``."""
    def walk(value):
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return step(value) if isinstance(value, float) and math.isfinite(value) else value
    return json.dumps(walk(json.loads(text)))


def test_last_bit_differences_pass_and_a_real_change_fails():
    golden = (GOLDEN / "estimate.json").read_text()
    # A few ulps on every float: what another CPU's SIMD path gives.
    assert compare_json(golden, _nudged(golden, lambda v: math.nextafter(math.nextafter(v, math.inf), math.inf))) == []
    doc = json.loads(golden)
    doc["estimates"][1]["estimate"] += 1e-9  # iwae, about -21.85: 4.6e-11 relative
    problems = compare_json(golden, json.dumps(doc))
    assert len(problems) == 1 and "estimates[1]/estimate" in problems[0]
    doc = json.loads(golden)
    doc["per_example"]["iwae"][7] -= 1e-9  # one datapoint of 359
    assert len(compare_json(golden, json.dumps(doc))) == 1
    doc = json.loads(golden)
    doc["diagnostics"]["indices_khat_above_0.7"][0] += 1  # integers: exact
    assert compare_json(golden, json.dumps(doc))


def test_csv_columns_are_judged_on_their_own_scale():
    golden = "estimator,k,b,c\niwae,10,-2.5,5.0\njvi1,10,-0.5,-8.881784197001252e-16\n"
    noisy = "estimator,k,b,c\niwae,10,-2.5,5.0\njvi1,10,-0.5,1.7763568394002505e-15\n"  # rounding noise near 0
    assert compare_csv(golden, noisy) == []
    assert compare_csv(golden, golden.replace("-2.5", "-2.5000000001"))  # 4e-11 relative
    assert compare_csv(golden, golden.replace("iwae,10", "iwae,11"))  # integers: exact
    assert compare_csv(golden, golden.replace("jvi1", "jvi2"))  # text: exact
    assert RTOL == 1e-12


def test_every_golden_file_fails_when_one_number_moves(tmp_path):
    for name in NAMES:
        for other in NAMES:
            shutil.copy(GOLDEN / other, tmp_path / other)
        path = tmp_path / name
        text = path.read_text()
        if name.endswith(".json"):
            doc = json.loads(text)
            doc["estimates"][0]["estimate"] *= 1 + 1e-10
            path.write_text(json.dumps(doc))
        else:
            header, first, *rest = text.splitlines()
            cells = first.split(",")
            i = next(i for i, c in enumerate(cells) if "." in c and c.replace(".", "").lstrip("-").isdigit())
            cells[i] = repr(float(cells[i]) * (1 + 1e-10) + 1e-300)
            path.write_text("\n".join([header, ",".join(cells), *rest]) + "\n")
        assert compare_dirs(GOLDEN, tmp_path), name
