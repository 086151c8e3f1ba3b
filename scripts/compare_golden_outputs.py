#!/usr/bin/env python
# Usage: python scripts/compare_golden_outputs.py OLD_DIR NEW_DIR (run before replacing tests/data/golden)
"""Compare two golden directories with tests/golden_compare.py's tolerances (the ones the test uses).

Floats agree to relative 1e-12 (last-bit SIMD differences between CPUs pass), integers, text,
keys, columns and rows exactly. Prints every difference and exits 1 if there is any.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from golden_compare import compare_dirs  # noqa: E402

problems = compare_dirs(Path(sys.argv[1]), Path(sys.argv[2]))
print("\n".join(problems) if problems else "golden outputs agree within the tolerances of tests/golden_compare.py")
sys.exit(1 if problems else 0)
