#!/usr/bin/env python
# Usage: python scripts/compare_golden_outputs.py OLD_DIR NEW_DIR (run before replacing tests/data/golden)
"""Every field of the old golden estimate.json is bitwise unchanged in the new one; CSVs byte-identical."""
import json, sys, math
from pathlib import Path
old_dir, new_dir = Path(sys.argv[1]), Path(sys.argv[2])
old = json.loads((old_dir / "estimate.json").read_text()); new = json.loads((new_dir / "estimate.json").read_text())
added = []
def walk(a, b, path):
    if isinstance(a, dict):
        assert isinstance(b, dict), path
        for key in b:
            if key not in a: added.append(f"{path}/{key}")
        for key in a: walk(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)): walk(x, y, f"{path}[{i}]")
    else:
        assert type(a) is type(b) and (a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))), (path, a, b)
        if isinstance(a, float): assert a.hex() == b.hex(), path
walk(old, new, "")
print("all old fields bitwise equal; added:", added)
for name in ["sweep.csv", "sweep_fits.csv", "sweep_theory.csv", "sweep_weights.csv"]:
    assert (old_dir / name).read_bytes() == (new_dir / name).read_bytes(), name
print("CSVs byte-identical")
