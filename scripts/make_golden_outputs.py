"""Write the golden outputs of the bundled example (issue 12: the move must not change a bit).

Usage: python scripts/make_golden_outputs.py tests/data/golden

Run once with main before a refactor; tests/test_golden_outputs.py then checks that the same
estimate JSON (minus the elapsed time) and sweep tables come out byte for byte.
"""
import json, sys
from pathlib import Path
import evalkit
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
r = evalkit.estimate("examples/digits_iwae.pt", "digits", k=1000, binarize="bernoulli",
                     estimators=["elbo", "iwae", "jvi1", "jvi2", "jvi3", "dvi"], seed=0, progress=False)
d = json.loads(r.to_json(per_example=True)); d["metadata"].pop("elapsed_seconds"); d["metadata"].pop("provenance")  # date, command, machine: not pinned
(out / "estimate.json").write_text(json.dumps(d, indent=1, sort_keys=True) + "\n")
import warnings
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    s = evalkit.sweep("examples/digits_iwae.pt", data="digits", binarize="bernoulli", ks=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
                  estimators=["elbo", "iwae", "jvi1", "jvi2", "dvi"], seed=0, progress=False)
(out / "sweep.csv").write_text(s.to_csv())
(out / "sweep_fits.csv").write_text(s.fits.to_csv(index=False, float_format="%.17g"))
(out / "sweep_theory.csv").write_text(s.theory.to_csv(index=False, float_format="%.17g"))
(out / "sweep_weights.csv").write_text(s.weights.to_frame().to_csv(index=False, float_format="%.17g"))
