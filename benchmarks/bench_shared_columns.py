"""Benchmark the Monte Carlo SE of a dataset mean whose rows share their K samples (a benchmark, not a test).

A Bayesian network's predictive matrix ``[N_test, K]`` uses the same K weight samples in every
row, so ``evalkit.estimate`` computes the grouped jackknife over the K columns (G = 100 groups).
Baseline: the jackknife by estimator calls (:func:`leave_group_out_sums`, one IWAE/ELBO call on
``[N, K - K/G]`` per group, as a reference implementation would); evalkit: the O(N K) forms
(running ``logaddexp`` of group log-sum-exps for IWAE, group sums for the ELBO). Both in the same
run, on the same matrix; prints seconds and the ratio, and checks the two agree.

Usage::

    python benchmarks/bench_shared_columns.py                 # [359, 1000] and [2000, 5000]
    python benchmarks/bench_shared_columns.py --rows 359 --k 1000 --repeat 5
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_engine import print_run_header  # noqa: E402
from evalkit import estimators as E  # noqa: E402
from evalkit.estimators.shared_columns import (jackknife_groups, leave_group_out_elbo_sums,  # noqa: E402
                                               leave_group_out_iwae_sums, leave_group_out_sums)


def _best(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run(rows: int, k: int, repeat: int) -> None:
    rng = np.random.default_rng(0)
    # Predictive log-likelihoods of a confident classifier: near 0 with a spread over the samples.
    log_w = -np.abs(rng.normal(0.1, 0.3, size=(rows, 1)) + rng.normal(0.0, 0.2, size=(rows, k)))
    groups = jackknife_groups(k)
    for name, fast in (("iwae", leave_group_out_iwae_sums), ("elbo", leave_group_out_elbo_sums)):
        fn = E.get(name).fn
        slow_s = _best(lambda: leave_group_out_sums(log_w, fn, groups), repeat)
        fast_s = _best(lambda: fast(log_w, groups), repeat)
        agree = np.allclose(fast(log_w, groups), leave_group_out_sums(log_w, fn, groups), rtol=1e-12, atol=0)
        print(f"[{rows}, {k}] {name:4s} G = {groups}: estimator calls {slow_s:8.4f} s   O(NK) {fast_s:8.4f} s   "
              f"ratio {slow_s / fast_s:6.1f}x   agree to 1e-12: {agree}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="*", default=[359, 2000])
    parser.add_argument("--k", type=int, nargs="*", default=[1000, 5000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print_run_header(__file__)
    for rows, k in zip(args.rows, args.k):
        run(rows, k, args.repeat)


if __name__ == "__main__":
    main()
