"""Issue 29: scripts/gpu_check.py runs every step on the CPU at tiny sizes (--dry-run), so the one
command prepared for a lent GPU machine cannot rot between the sessions that get one."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_dry_run_passes_every_step_and_writes_one_results_file(tmp_path):
    out = tmp_path / "gpu_check.json"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    results = json.loads(out.read_text())
    assert run.returncode == 0, (run.stderr, json.dumps(results, indent=1)[:3000])
    assert results["dry_run"] is True and results["device_name"] == "cpu" and "--dry-run" in results["command"]
    steps = results["steps"]
    assert list(steps) == ["device", "cuda_tests", "engine", "oom_fallback", "mnist_estimate", "jvi3", "ais"]
    assert all(step["status"] == "ok" for step in steps.values())
    assert steps["oom_fallback"]["bitwise_equal"] is True
    assert steps["mnist_estimate"]["ratio_per_datapoint"] > 0 and steps["jvi3"]["finite"]
    assert {row["dtype"] for row in steps["engine"]["rows"]} == {"float32", "float64"}
