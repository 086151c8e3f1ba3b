"""Cost of the estimators at K = 5000 as a fraction of the model pass that made the log-weights.

For each model the script times, in one process and best of ``--repeats``: the engine's model
pass (``evalkit.log_weights``, N x K samples) and then, on the log-weights it returned, each
of ``jvi1`` ... ``jvi5``, ``dvi``, ``iwae`` and ``psis_khat`` (one warm-up call first: JVI
builds exact coefficient tables once per (K, order)). It prints seconds and the fraction
estimator / model pass. Both halves use torch's default threads.

Run from the repository root::

    python benchmarks/bench_estimator_cost.py              # K = 5000
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import load_average, models, print_run_header  # noqa: E402

import evalkit  # noqa: E402
from evalkit import estimators  # noqa: E402

NAMES = ("iwae", "dvi", "jvi1", "jvi2", "jvi3", "jvi4", "jvi5", "psis_khat")


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--n", type=int, default=64, help="datapoints of the MNIST-size models")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print_run_header(__file__, machine_note=f"; torch threads {torch.get_num_threads()}")
    print("| model | N x K | model pass s | " + " | ".join(NAMES) + " |")
    print("|" + "---|" * (3 + len(NAMES)))
    for name, model, x in models(args.n):
        if name.startswith("IWAE 2"):
            continue  # the same log-weight shape as the one-layer model: the estimators cost the same
        model_pass = best_of(lambda: evalkit.log_weights(model, x, args.k, seed=0, progress=False), args.repeats)
        log_w = evalkit.log_weights(model, x, args.k, seed=0, progress=False)
        cells = []
        for estimator in NAMES:
            fn = estimators.psis_khat if estimator == "psis_khat" else estimators.get(estimator)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # k-hat warnings about individual rows
                fn(log_w)
                seconds = best_of(lambda: fn(log_w), args.repeats)
            cells.append(f"{seconds:.3f} s ({100 * seconds / model_pass:.1f} %)")
        print(f"| {name} | {len(x)} x {args.k} | {model_pass:.2f} | " + " | ".join(cells) + " |")
        sys.stdout.flush()
    print(f"# {load_average()} (end)")


if __name__ == "__main__":
    main()
