"""No raw library warnings reach the user (issue 16).

* evalkit's own code paths, on awkward log-weight matrices (one column, two columns, constant rows,
  rows with one finite weight, a single row, heavy tails), issue only evalkit's warnings: no numpy
  RuntimeWarning ("divide by zero encountered in log"), no matplotlib UserWarning.
* the CLI, run as a user runs it with every warning enabled (``python -W always``), prints no
  Python warning format (``...Warning:``, a file path, a source line), and no library warning.
* a library warning that does get through (e.g. raised by the user's model) is one line,
  ``warning: <library>: <first line of the message>``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

import evalkit
from evalkit_cli.common import _show_warning

ROOT = Path(__file__).resolve().parent.parent


def _matrices():
    rng = np.random.default_rng(0)
    one_finite = rng.normal(size=(10, 30))
    one_finite[1, :29] = -np.inf
    one_finite[2, ::2] = -np.inf
    return {
        "one column": rng.normal(size=(20, 1)),
        "two columns": rng.normal(size=(20, 2)),
        "tiny": rng.normal(size=(3, 4)),
        "one finite weight": one_finite,
        "constant": np.zeros((5, 8)),
        "one row": rng.normal(size=(1, 50)),
        "heavy tails": rng.standard_cauchy(size=(15, 200)) * 30,
    }


@pytest.mark.parametrize("name", list(_matrices()))
def test_library_code_paths_issue_only_evalkit_warnings(name):
    log_w = _matrices()[name]
    import matplotlib.pyplot as plt

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        k = log_w.shape[1]
        estimators = ["elbo", "iwae"] + (["jvi1", "dvi"] if k > 1 else [])
        result = evalkit.estimate(torch.tensor(log_w), k=k, estimators=estimators)
        result.format("table")
        result.per_example.to_csv()
        swept = evalkit.sweep(torch.tensor(log_w), progress=False)
        swept.format("table")
        figures = swept.figures()
        for figure in figures.values():
            figure.canvas.draw()
            plt.close(figure)
    foreign = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught
               if not w.category.__module__.startswith("evalkit")]
    assert foreign == []


def _cli(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run([sys.executable, "-W", "always", "-m", "evalkit", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _assert_clean(stderr: str) -> None:
    for line in stderr.splitlines():
        assert "Warning:" not in line, line  # Python's format: "path.py:12: RuntimeWarning: ..."
        assert ".py:" not in line and str(ROOT) not in line and "site-packages" not in line, line
        assert not line.startswith(("warning: numpy:", "warning: torch:", "warning: matplotlib:")), line


@pytest.mark.slow
def test_cli_commands_print_no_library_warning(tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "one.npy", rng.normal(size=(20, 1)))
    np.save(tmp_path / "two.npy", rng.normal(size=(20, 2)))  # the bias plot used to crash here
    np.save(tmp_path / "tiny.npy", rng.normal(size=(3, 4)))
    runs = [
        ["estimate", str(ROOT / "examples" / "digits_iwae.pt"), "--data", "digits", "--binarize", "bernoulli",
         "-k", "30", "-o", "est.json", "--per-example", "rows.csv"],
        ["sweep", "--log-weights", "one.npy", "--out", "one"],
        ["sweep", "--log-weights", "two.npy", "--out", "two"],
        ["report", "--log-weights", "tiny.npy", "--out", "report"],
    ]
    for args in runs:
        proc = _cli(args, tmp_path)
        assert proc.returncode == 0, proc.stderr
        _assert_clean(proc.stderr)
    assert (tmp_path / "two" / "bias.png").exists() and (tmp_path / "report" / "report.md").exists()


def test_a_library_warning_is_one_short_line(capsys):
    numpy_file = str(Path(np.__file__).parent / "_core" / "fromnumeric.py")
    _show_warning(RuntimeWarning("divide by zero encountered in log"), RuntimeWarning,
                  str(ROOT / "evalkit" / "estimators" / "bounds.py"), 10)
    _show_warning(UserWarning("No artists with labels found to put in legend.  Note that ..."), UserWarning,
                  str(Path(matplotlib.__file__).parent / "legend.py"), 1)
    _show_warning(matplotlib.MatplotlibDeprecationWarning("old\nmore detail"), matplotlib.MatplotlibDeprecationWarning,
                  numpy_file, 1)
    _show_warning(UserWarning("a C++ warning"), UserWarning, str(ROOT / "evalkit" / "sampling" / "engine.py"), 3)
    _show_warning(evalkit.errors.WeightWarning("k-hat > 0.7 ...; do this"), evalkit.errors.WeightWarning,
                  "user_script.py", 1)
    assert capsys.readouterr().err.splitlines() == [
        "warning: numpy: divide by zero encountered in log",
        "warning: matplotlib: No artists with labels found to put in legend.  Note that ...",
        "warning: matplotlib: old",
        "warning: torch: a C++ warning",
        "warning: k-hat > 0.7 ...; do this",
    ]


def test_a_warning_from_the_users_model_names_numpy_or_the_model(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "my_model.py").write_text("")
    _show_warning(RuntimeWarning("invalid value encountered in divide"), RuntimeWarning,
                  str(tmp_path / "my_model.py"), 5)
    _show_warning(UserWarning("my own\nsecond line"), UserWarning, str(tmp_path / "my_model.py"), 6)
    assert capsys.readouterr().err.splitlines() == [
        "warning: numpy: invalid value encountered in divide",
        "warning: my_model: my own",
    ]
