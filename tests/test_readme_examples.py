"""Every ```python block of the README runs, twice in a row, from a copy of the repository's
examples (as a new user would paste it), and the first README command prints no stray warnings."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONWARNINGS"] = "default"  # every warning shows: the blocks must run unwarned (WeightWarning aside)
    return env


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_readme_python_block_runs_twice(number, tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    script = tmp_path / f"block{number}.py"
    script.write_text(BLOCKS[number])
    for attempt in (1, 2):
        proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=_env(), capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"run {attempt} of README block {number} failed:\n{proc.stderr[-3000:]}"
        stray = [line for line in proc.stderr.splitlines()
                 if "Warning" in line and "WeightWarning" not in line]
        assert not stray, f"run {attempt} of README block {number} warned:\n" + "\n".join(stray)


def test_readme_outputs_go_to_ignored_folders():
    ignored = (ROOT / ".gitignore").read_text().split()
    for folder in re.findall(r"\"((?:runs|reports/mine)[^\"]*)\"", "\n".join(BLOCKS)):
        top = folder.split("/")[0] + "/"
        assert top in ignored or folder.rstrip("/") + "/" in ignored or "reports/mine/" in ignored


@pytest.mark.slow
def test_first_readme_command_prints_no_stray_warning(tmp_path):
    # The first command's evalkit call, as the README shows it; its stderr may hold the weight
    # warning evalkit means to give (the example has heavy-tailed datapoints), and nothing else.
    command = re.search(r"```bash\nbash scripts/setup_env\.sh && \.venv/bin/(evalkit estimate [^\n]+)\n", README)
    assert command, "the README's first command runs `.venv/bin/evalkit estimate ...`"
    args = command.group(1).split()[1:]
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    proc = subprocess.run([sys.executable, "-m", "evalkit", *args], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    warning_lines = [line for line in proc.stderr.splitlines() if "warning" in line.lower()]
    assert all(line.startswith("warning: PSIS k-hat > 0.5 at ") for line in warning_lines), warning_lines
    assert len(warning_lines) <= 1
    assert proc.stdout.startswith("log p(x) estimates: digits (test split)")
