"""SIGINT and SIGTERM at any moment of a real run end cleanly (issue 23): exit 130 / 143, at most one
line, no traceback, no C++ abort, no partial output, no temporary file; the cache resumes bitwise.

Each delivery is a fresh process started from :mod:`subprocess` in the caller's session (as a
terminal's Ctrl-C or a scheduler's SIGTERM reaches it), with the default two worker threads,
through ``python -m evalkit`` and through the console script's ``evalkit_cli.main:main``; the moments
are spread from the imports to the end of the computation. ``scripts/signal_table.py`` runs the
deliveries; ``pytest -s`` prints the table.
"""
from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("signal_table", ROOT / "scripts" / "signal_table.py")
st = importlib.util.module_from_spec(_spec)
sys.modules["signal_table"] = st  # dataclasses look the module up
_spec.loader.exec_module(st)

def _check(deliveries):
    print("\n" + st.table(deliveries))
    for d in deliveries:
        assert d.clean, d.row() + "\n" + d.stderr + f"\nleft: {d.left}"


def _uncached(tmp_path) -> dict:
    d = tmp_path / "uncached"
    d.mkdir()
    subprocess.run([*st.ENTRY_POINTS["-m"], *st.ESTIMATE, "-o", "out.json", "-q"], cwd=d, env=st.environment(),
                   check=True, capture_output=True, timeout=300)
    return _numbers(d / "out.json")


def _numbers(path: Path) -> dict:
    summary = json.loads(path.read_text())
    summary.pop("metadata")  # timings
    return summary


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["-m", "script"])
def test_sigint_and_sigterm_at_twenty_moments_end_cleanly_and_the_cache_resumes_bitwise(entry, tmp_path):
    every = 1 if entry == "-m" else 3  # 20 moments per signal through -m, 7 through the console script
    deliveries = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        deliveries += st.sweep_moments(sig, tmp_path, entry=entry, parallel=2, every=every)
    _check(deliveries)
    interrupted = [d for d in deliveries if d.returncode != 0]
    assert len(interrupted) >= 0.75 * len(deliveries), st.table(deliveries)  # the run outlasts most moments
    assert sum("datapoints done" in d.stderr for d in interrupted) >= len(deliveries) / 4  # in the model calls
    # A cache an interrupt left behind (mid-computation) resumes to the uncached numbers, bitwise.
    later = [d for d in interrupted if "datapoints done" in d.stderr]
    assert later, "no delivery reached the model calls"
    last = deliveries.index(later[-1]) % (len(deliveries) // 2)
    cwd = tmp_path / f"{signal.Signals(later[-1].signal).name}-{entry.strip('-')}-{last}"
    subprocess.run([*st.ENTRY_POINTS[entry], *st.ESTIMATE, "--cache", "cache", "-o", "out.json", "-q"], cwd=cwd,
                   env=st.environment(), check=True, capture_output=True, timeout=300)
    assert _numbers(cwd / "out.json") == _uncached(tmp_path)


def _wait_for(proc, path: Path, timeout=120):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)


def test_a_second_sigint_while_the_first_unwinds_still_ends_cleanly(tmp_path):
    proc = subprocess.Popen([*st.ENTRY_POINTS["-m"], *st.ESTIMATE, "--cache", "cache", "-o", "out.json"],
                            cwd=tmp_path, env=st.environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    _wait_for(proc, tmp_path / "cache" / "manifest.json")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out.json").exists()
    assert [p for p in tmp_path.rglob("*.tmp")] == []


MODEL = st.MODEL
COMMANDS = {
    "sweep": ["sweep", MODEL, "--data", "digits", "--binarize", "bernoulli", "--ks", "1,10,100,1000",
              "--figures", "png", "--out", "out.json"],
    "report": ["report", MODEL, "--data", "digits", "--binarize", "bernoulli", "--ks", "1,10,100,1000",
               "--out", "out.json"],
    "bdmc": ["bdmc", MODEL, "--steps", "100,1000", "--n", "64", "--out", "out.json"],
    "ais": ["estimate", MODEL, "--data", "digits", "--binarize", "bernoulli", "--method", "ais", "--chains", "16",
            "--steps", "500", "-o", "out.json"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_sweep_report_bdmc_and_ais_end_cleanly_on_either_signal(name, tmp_path):
    sig = signal.SIGINT if name in ("sweep", "bdmc") else signal.SIGTERM
    if name in ("sweep", "report"):  # fast: signalled 0.3 s into the model calls (the cache's manifest)
        deliveries = [st.deliver([*COMMANDS[name], "--cache", "cache", "-q"], sig, 0.3, tmp_path / name,
                                 after=st.STARTED)]
    else:  # AIS chains: past the imports, into the annealing
        deliveries = [st.deliver([*COMMANDS[name], "-q"], sig, 9.0, tmp_path / name)]
    _check(deliveries)
    assert any(d.returncode != 0 for d in deliveries), st.table(deliveries)
