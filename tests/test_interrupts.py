"""Ctrl-C (SIGINT) and SIGTERM during estimate, sweep and report (issue 16), in real processes.

Each test starts the command with a small --cache shard size, sends the signal once the first
shard file appears, and checks: one line on stderr naming the progress and the way to continue,
exit 130 (SIGINT) or 143 (SIGTERM), no traceback, no output file or report directory, no
temporary file; then the same command re-run resumes from the cache and its results are bitwise
those of an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL = str(ROOT / "examples" / "digits_iwae.pt")
COMMON = ["--data", "digits", "--binarize", "bernoulli", "--threads", "1", "-q"]
N_DIGITS = 359
MESSAGE = re.compile(r"interrupted; (\d+) of (\d+) datapoints done and kept in the cache '([^']+)'; "
                     r"re-run the same command to continue")


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _run(args, cwd):
    proc = subprocess.run([sys.executable, "-m", "evalkit", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def _interrupt_after_first_shard(args, cwd: Path, cache: Path, sig: int) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-m", "evalkit", *args], cwd=cwd, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(cache.glob("shard-*.npy")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no shard appeared"
        time.sleep(0.01)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _check_interrupted(proc, sig, cache_name, cache: Path):
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    match = MESSAGE.fullmatch(lines[0])
    assert match, lines[0]
    done, total = int(match.group(1)), int(match.group(2))
    # The signal may land between a shard's rename and the count's update: the count never
    # exceeds what the cache holds, and the cache never holds everything.
    stored = sum(int(p.stem.split("-")[2]) - int(p.stem.split("-")[1]) for p in cache.glob("shard-*.npy"))
    assert total == N_DIGITS and 0 <= done <= stored < total, (lines[0], stored)
    assert match.group(3) == cache_name
    return done


def _no_temporaries(directory: Path):
    return [p.name for p in directory.rglob("*") if p.name.endswith(".tmp")]


def _numbers(source) -> dict:
    """The JSON summary without its metadata (which records timings); floats compared exactly."""
    text = source.read_text() if isinstance(source, Path) else source.decode()
    summary = json.loads(text)
    summary.pop("metadata")
    return summary


def _estimate_args(cache, *extra):
    return ["estimate", MODEL, *COMMON, "-k", "1000", "--format", "json", "--cache", cache,
            "--cache-shard-size", "8", *extra]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One uninterrupted run (the same command, its own directory): the summary and the log-weights."""
    d = tmp_path_factory.mktemp("whole")
    _run(_estimate_args("cache", "-o", "out.json", "--save-log-weights", "lw.npy"), d)
    return (d / "out.json").read_bytes(), np.load(d / "lw.npy")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_estimate_interrupted_then_resumed_is_bitwise_an_uninterrupted_run(sig, tmp_path, uninterrupted):
    args = _estimate_args("cache", "-o", "out.json", "--save-log-weights", "lw.npy")
    proc = _interrupt_after_first_shard(args, tmp_path, tmp_path / "cache", sig)
    _check_interrupted(proc, sig, "cache", tmp_path / "cache")
    assert not (tmp_path / "out.json").exists() and not (tmp_path / "lw.npy").exists()
    assert _no_temporaries(tmp_path) == []
    assert (tmp_path / "cache" / "manifest.json").exists()
    _run(args, tmp_path)
    assert _numbers(tmp_path / "out.json") == _numbers(uninterrupted[0])
    np.testing.assert_array_equal(np.load(tmp_path / "lw.npy"), uninterrupted[1])
    assert np.load(tmp_path / "lw.npy").tobytes() == uninterrupted[1].tobytes()


def test_estimate_without_cache_says_how_to_make_the_next_run_resumable(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "evalkit", "estimate", MODEL, *COMMON, "-k", "60000",
                             "-o", "out.txt"], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(12)  # past the imports (slow on a shared machine) into the model calls
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert re.fullmatch(r"interrupted; \d+ of 359 datapoints done; re-run the same command with --cache DIR to "
                        r"continue\n", err), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_sweep_and_report_interrupted_leave_no_directory_and_resume_bitwise(tmp_path):
    ks = ["--ks", "1,10,100,1000"]
    _run(["sweep", MODEL, *COMMON, *ks, "--figures", "png", "--out", "whole"], tmp_path)
    sweep_args = ["sweep", MODEL, *COMMON, *ks, "--figures", "png", "--out", "swept", "--cache", "c1",
                  "--cache-shard-size", "8"]
    proc = _interrupt_after_first_shard(sweep_args, tmp_path, tmp_path / "c1", signal.SIGTERM)
    _check_interrupted(proc, signal.SIGTERM, "c1", tmp_path / "c1")
    assert not (tmp_path / "swept").exists() and _no_temporaries(tmp_path) == []
    _run(sweep_args, tmp_path)
    assert (tmp_path / "swept" / "sweep.csv").read_bytes() == (tmp_path / "whole" / "sweep.csv").read_bytes()

    report_args = ["report", MODEL, *COMMON, *ks, "--out", "rep", "--cache", "c2", "--cache-shard-size", "8"]
    proc = _interrupt_after_first_shard(report_args, tmp_path, tmp_path / "c2", signal.SIGINT)
    _check_interrupted(proc, signal.SIGINT, "c2", tmp_path / "c2")
    assert not (tmp_path / "rep").exists() and _no_temporaries(tmp_path) == []
    _run(report_args, tmp_path)
    assert (tmp_path / "rep" / "sweep.csv").read_bytes() == (tmp_path / "whole" / "sweep.csv").read_bytes()
    assert (tmp_path / "rep" / "report.html").exists()
