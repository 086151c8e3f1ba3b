"""Benchmark the estimator core on a [rows, K] float64 log-weight matrix (a benchmark, not a test).

Prints wall-clock and process CPU seconds per call (best of ``--repeat`` after one warm-up call
that builds the cached exact coefficient tables) for jvi orders 1, 2, 3, 5 and the cheap
estimators, on log-weights ``sigma * N(0, 1) - 90`` (log-normal weights; sigma = 1 is benign,
sigma = 2.5 has k-hat around 0.7 and sends many rows through the heavy-weight route).

Usage::

    python benchmarks/bench_estimators.py                   # [1000, 5000], sigma 1 and 2.5
    python benchmarks/bench_estimators.py --rows 200 --k 5000 --sigma 1.0 --repeat 3
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evalkit import estimators as E  # noqa: E402


def _time(fn, repeat: int):
    fn()  # warm-up: exact coefficient tables are built once per (K, order, ...) and cached
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best_wall, best_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--sigma", type=float, nargs="+", default=[1.0, 2.5])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}, numpy {np.__version__}")
    if hasattr(os, "getloadavg"):
        print(f"load average at start: {os.getloadavg()[0]:.2f}")
    print(f"log-weights: [{args.rows}, {args.k}] float64 = sigma * N(0,1) - 90; best of {args.repeat}")
    print(f"{'sigma':>6} {'estimator':>10} {'wall s':>8} {'cpu s':>8} {'max err est':>12}")
    rng = np.random.default_rng(args.seed)
    for sigma in args.sigma:
        lw = sigma * rng.normal(size=(args.rows, args.k)) - 90.0
        cases = [
            ("iwae", lambda: E.iwae(lw)),
            ("dvi", lambda: E.dvi(lw)),
            ("ess", lambda: E.ess(lw)),
            ("psis_khat", lambda: E.psis_khat(lw)),
        ] + [(f"jvi{m}", (lambda m=m: E.jvi(lw, m))) for m in (1, 2, 3, 5)]
        for name, fn in cases:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                wall, cpu = _time(fn, args.repeat)
            err = ""
            if name.startswith("jvi"):
                value, bound = E.jvi_with_error(lw, int(name[3:]))
                err = f"{float(np.max(bound / np.maximum(1.0, np.abs(value)))):.1e}"
            print(f"{sigma:>6.2f} {name:>10} {wall:>8.3f} {cpu:>8.3f} {err:>12}")
    if hasattr(os, "getloadavg"):
        print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
