"""Send SIGINT and SIGTERM to a running evalkit command at many moments and tabulate what happened.

Each delivery starts the command afresh from Python's :mod:`subprocess` (in the caller's session,
as a terminal's Ctrl-C or a scheduler's SIGTERM would reach it; a shell ``&`` would make the
child ignore SIGINT and hide the problem), sends one signal ``moment`` seconds after the start
and records the exit code, the lines on stderr, whether a traceback or a C++ abort appeared and
which files were left behind. ``tests/test_signals.py`` asserts on these rows; run this file to
print the table::

    python scripts/signal_table.py            # 20 moments per signal over the run, both entry points

Columns: moment (seconds after the start, or ``+t``: seconds after the model calls started, as
the cache's manifest appeared), signal, entry point (``-m`` for ``python -m evalkit``,
``script`` for the console script's ``evalkit_cli.main:main``), exit code, number of stderr lines and
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
from typing import List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
MODEL = str(ROOT / "examples" / "digits_iwae.pt")
ESTIMATE = ["estimate", MODEL, "--data", "digits", "--binarize", "bernoulli", "-k", "3000",
            "--batch-size", "4", "-q"]
"""A multi-second estimate with the default thread count (2 workers) and small model calls; ``-q``
keeps the run's own warnings off stderr, leaving only what a signal prints."""

IMPORT_CLI_PACKAGE = (
    "import importlib.util; "
    f"spec = importlib.util.spec_from_file_location('evalkit_cli', {str(ROOT / 'cli' / '__init__.py')!r}, "
    f"submodule_search_locations=[{str(ROOT / 'cli')!r}]); "
    "sys.modules['evalkit_cli'] = importlib.util.module_from_spec(spec); spec.loader.exec_module(sys.modules['evalkit_cli'])")
ENTRY_POINTS = {
    "-m": [sys.executable, "-m", "evalkit"],
    # What the ``evalkit`` console script runs (pip's generated wrapper imports evalkit_cli.main, the
    # package first): here the checkout's cli/ folder is imported as that package, as installed.
    "script": [sys.executable, "-c", f"import sys; {IMPORT_CLI_PACKAGE}; from evalkit_cli.main import main; sys.exit(main())"],
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
    after: Optional[str] = None

    @property
    def lines(self) -> List[str]:
        return self.stderr.splitlines()

    @property
    def clean(self) -> bool:
        """Exit 130/143 (0: the run had finished), at most one line, no traceback or abort, nothing partial left."""
        return (self.returncode in (0, EXIT_CODES[self.signal]) and (len(self.lines) <= 1 or self.returncode == 0)
                and "Traceback" not in self.stderr and "terminate called" not in self.stderr
                and not self.left)

    def row(self) -> str:
        first = self.lines[0] if self.lines else ""
        first = first if len(first) <= 70 else first[:67] + "..."
        name = signal.Signals(self.signal).name
        moment = f"+{self.moment:5.2f}" if self.after else f"{self.moment:6.2f}"
        return f"{moment}  {name:7s}  {self.entry:6s}  {self.returncode:4d}  {len(self.lines):5d}  {first}"


HEADER = "moment  signal   entry   exit  lines  first line"


def environment() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def deliver(args: Sequence[str], sig: int, moment: float, cwd: Path, *, entry: str = "-m",
            after: str = None, outputs: Sequence[str] = ("out.json",)) -> Delivery:
    """Run ``evalkit ARGS`` in ``cwd``, send ``sig`` ``moment`` seconds after the start (or, with
    ``after``, after the file ``cwd/after`` appears: the cache's manifest marks the start of the
    model calls, whatever the imports took), wait for the exit and return what happened.

    ``left`` lists the named outputs that exist afterwards and every temporary file under ``cwd``
    (a run that finished before the signal is not an interrupted one: its outputs are expected).
    """
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([*ENTRY_POINTS[entry], *args], cwd=cwd, env=environment(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=False)
    if after is not None:
        while not (cwd / after).exists() and proc.poll() is None:
            time.sleep(0.005)
    try:
        proc.wait(timeout=moment)
    except subprocess.TimeoutExpired:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    left = [p.name for p in cwd.rglob("*") if p.name.endswith(".tmp")]
    if proc.returncode != 0:
        left += [name for name in outputs if (cwd / name).exists()]
    return Delivery(moment, sig, entry, proc.returncode, err, sorted(left), after)


def table(deliveries: Sequence[Delivery]) -> str:
    return "\n".join([HEADER, *(d.row() for d in deliveries)])


STARTED = "cache/manifest.json"
"""Written when the cached run starts its model calls."""

IMPORTS = [0.3 + 0.5 * i for i in range(8)]
"""Moments after the start: the imports, the model's loading (seconds; a loaded machine takes longer)."""
WORK = [0.5 * i for i in range(12)]
"""Moments after the model calls started: the calls on two workers, the statistics, the writing."""


def sweep_moments(sig: int, base: Path, *, entry: str = "-m", parallel: int = 2, every: int = 1) -> List[Delivery]:
    """One delivery of ``sig`` at each of :data:`IMPORTS` and :data:`WORK` (20 in all; with
    ``every``, each every-th), ``parallel`` at a time, each a cached estimate in its own
    directory ``base/SIGNAL-ENTRY-i``."""
    name = signal.Signals(sig).name
    plan = [(m, None) for m in IMPORTS[::every]] + [(m, STARTED) for m in WORK[::every]]

    def one(item):
        i, (moment, after) = item
        cwd = base / f"{name}-{entry.strip('-')}-{i}"
        delivery = deliver([*ESTIMATE, "--cache", "cache", "-o", "out.json"], sig, moment, cwd, entry=entry,
                           after=after)
        return delivery

    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(one, enumerate(plan)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--dir", default="signal-table-runs")
    options = parser.parse_args(argv)
    base = Path(options.dir).resolve()
    deliveries = []
    for entry in ENTRY_POINTS:
        for sig in (signal.SIGINT, signal.SIGTERM):
            deliveries += sweep_moments(sig, base, entry=entry, parallel=options.parallel)
    print(table(deliveries))
    bad = [d for d in deliveries if not d.clean]
    print(f"{len(deliveries) - len(bad)} of {len(deliveries)} deliveries clean")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
