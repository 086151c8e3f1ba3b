"""The bundled example's outputs are byte-identical to those committed before the package move.

tests/data/golden was written by ``scripts/make_golden_outputs.py`` with main at 548496f (before
the subpackage layout, issue 12); any change of a number for the same seed fails here.
"""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden"


@pytest.mark.slow
def test_bundled_example_outputs_are_byte_identical(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_golden_outputs.py"), str(tmp_path)],
                   cwd=ROOT, check=True, capture_output=True)
    names = sorted(p.name for p in GOLDEN.iterdir())
    assert names == ["estimate.json", "sweep.csv", "sweep_fits.csv", "sweep_theory.csv", "sweep_weights.csv"]
    for name in names:
        assert (tmp_path / name).read_bytes() == (GOLDEN / name).read_bytes(), name
