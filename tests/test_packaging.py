"""What ``pip install`` puts in site-packages (issue 25): evalkit's packages under evalkit's names only.

The repository's ``cli/`` folder is installed as ``evalkit_cli``; a top-level ``cli`` package would
collide with any other distribution's ``cli``. Building a wheel here would be slow, so these read
pyproject.toml; the CHANGELOG's entry for this change records a real install's contents.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = CONFIG["tool"]["setuptools"]


def _package_folders(folder: Path, name: str):
    """Every package under ``folder`` (a folder with an ``__init__.py``), named as installed."""
    for init in sorted(folder.rglob("__init__.py")):
        if "__pycache__" not in init.parts:
            yield ".".join((name,) + init.parent.relative_to(folder).parts)


def test_no_top_level_cli_package_is_installed():
    packages = SETUPTOOLS["packages"]
    assert {p.split(".")[0] for p in packages} == {"evalkit", "evalkit_cli"}
    assert SETUPTOOLS["package-dir"] == {"evalkit": "evalkit", "evalkit_cli": "cli"}
    assert isinstance(packages, list)  # not packages.find, which installs folders under their own names


def test_every_package_folder_of_the_repository_is_installed():
    expected = {*_package_folders(ROOT / "evalkit", "evalkit"), *_package_folders(ROOT / "cli", "evalkit_cli")}
    assert sorted(SETUPTOOLS["packages"]) == sorted(expected)


def test_the_console_script_names_a_module_under_evalkits_name_that_defines_it():
    module, function = CONFIG["project"]["scripts"]["evalkit"].split(":")
    top, *rest = module.split(".")
    assert top in ("evalkit", "evalkit_cli")
    source = ROOT / SETUPTOOLS["package-dir"][top] / Path(*rest).with_suffix(".py")
    assert f"def {function}(" in source.read_text()


def test_python_m_evalkit_in_a_checkout_uses_the_cli_folder_beside_its_evalkit(tmp_path):
    """Run from a checkout (not installed, or next to another checkout's install), ``evalkit_cli`` is
    this checkout's ``cli/`` and nothing is imported as ``cli``."""
    code = ("import sys, evalkit.__main__, evalkit_cli; "
            "print(evalkit_cli.__file__); print(sorted(m for m in sys.modules if m.split('.')[0] == 'cli'))")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    where, others = proc.stdout.splitlines()
    assert Path(where) == ROOT / "cli" / "__init__.py" and others == "[]"
    version = subprocess.run([sys.executable, "-m", "evalkit", "--version"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert (version.returncode, version.stdout.strip(), version.stderr) == (0, f"evalkit, version {CONFIG['project']['version']}", "")
