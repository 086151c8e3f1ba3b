"""Send SIGINT and SIGTERM to a running evalkit command at many moments and tabulate what happened.

Each delivery starts the command afresh from Python's :mod:`subprocess` (in the caller's session,
as a terminal's Ctrl-C or a scheduler's SIGTERM would reach it; a shell ``&`` would make the
child ignore SIGINT and hide the problem), sends one signal ``moment`` seconds after the start
and records the exit code, the lines on stderr, whether a traceback or a C++ abort appeared and
which files were left behind. ``tests/test_signals.py`` asserts on these rows; run this file to
print the table::

    python scripts/signal_table.py            # 20 moments per signal over the run, both entry points

Columns: moment (s after start), signal, entry point (``-m`` for ``python -m evalkit``,
``script`` for the console script's ``cli.main:main``), exit code, number of stderr lines and
the first of them (shortened).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence

ROOT = Path(__file__).resolve().parent.parent
MODEL = str(ROOT / "examples" / "digits_iwae.pt")
ESTIMATE = ["estimate", MODEL, "--data", "digits", "--binarize", "bernoulli", "-k", "3000",
            "--batch-size", "4", "-q"]
"""A multi-second estimate with the default thread count (2 workers) and small model calls; ``-q``
keeps the run's own warnings off stderr, leaving only what a signal prints."""

ENTRY_POINTS = {
    "-m": [sys.executable, "-m", "evalkit"],
    # What the ``evalkit`` console script runs (pip's generated wrapper does exactly this).
    "script": [sys.executable, "-c", "import sys; from cli.main import main; sys.exit(main())"],
}
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass
class Delivery:
    """What one signal delivered ``moment`` seconds after the start did."""

    moment: float
    signal: int
    entry: str
    returncode: int
    stderr: str
    left: List[str] = field(default_factory=list)

    @property
    def lines(self) -> List[str]:
        return self.stderr.splitlines()

    @property
    def clean(self) -> bool:
        """Exit 130/143, at most one line, no traceback or abort, nothing partial left."""
        return (self.returncode == EXIT_CODES[self.signal] and len(self.lines) <= 1
                and "Traceback" not in self.stderr and "terminate called" not in self.stderr
                and not self.left)

    def row(self) -> str:
        first = self.lines[0] if self.lines else ""
        first = first if len(first) <= 70 else first[:67] + "..."
        name = signal.Signals(self.signal).name
        return f"{self.moment:6.2f}  {name:7s}  {self.entry:6s}  {self.returncode:4d}  {len(self.lines):5d}  {first}"


HEADER = "moment  signal   entry   exit  lines  first line"


def environment() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def deliver(args: Sequence[str], sig: int, moment: float, cwd: Path, *, entry: str = "-m",
            second: float = None, outputs: Sequence[str] = ("out.json",)) -> Delivery:
    """Run ``evalkit ARGS`` in ``cwd``, send ``sig`` after ``moment`` seconds (and again
    ``second`` seconds later if given), wait for the exit and return what happened.

    ``left`` lists the named outputs that exist afterwards and every temporary file under ``cwd``
    (a run that finished before the signal is not an interrupted one: its outputs are expected).
    """
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([*ENTRY_POINTS[entry], *args], cwd=cwd, env=environment(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=False)
    try:
        proc.wait(timeout=moment)
    except subprocess.TimeoutExpired:
        proc.send_signal(sig)
        if second is not None:
            try:
                proc.wait(timeout=second)
            except subprocess.TimeoutExpired:
                proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    left = [p.name for p in cwd.rglob("*") if p.name.endswith(".tmp")]
    if proc.returncode != 0:
        left += [name for name in outputs if (cwd / name).exists()]
    return Delivery(moment, sig, entry, proc.returncode, err, sorted(left))


def table(deliveries: Sequence[Delivery]) -> str:
    return "\n".join([HEADER, *(d.row() for d in deliveries)])


def sweep_moments(sig: int, moments: Sequence[float], base: Path, *, entry: str = "-m",
                  parallel: int = 2, cache: bool = True) -> List[Delivery]:
    """One delivery of ``sig`` at each moment, ``parallel`` at a time, each in its own directory."""
    name = signal.Signals(sig).name

    def one(item):
        i, moment = item
        cwd = base / f"{name}-{entry.strip('-')}-{i}"
        extra = ["--cache", "cache"] if cache else []
        return deliver([*ESTIMATE, *extra, "-o", "out.json"], sig, moment, cwd, entry=entry)

    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(one, enumerate(moments)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moments", type=int, default=20, help="deliveries per signal and entry point")
    parser.add_argument("--until", type=float, default=8.0, help="last moment, seconds after the start")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--dir", default="signal-table-runs")
    options = parser.parse_args(argv)
    base = Path(options.dir).resolve()
    moments = [options.until * (i + 0.5) / options.moments for i in range(options.moments)]
    deliveries = []
    for entry in ENTRY_POINTS:
        for sig in (signal.SIGINT, signal.SIGTERM):
            deliveries += sweep_moments(sig, moments, base, entry=entry, parallel=options.parallel)
    print(table(deliveries))
    bad = [d for d in deliveries if not d.clean]
    print(f"{len(deliveries) - len(bad)} of {len(deliveries)} deliveries clean")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
