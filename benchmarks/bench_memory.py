"""Peak memory of a run at K = 5000 and K = 50 000: the engine's working memory does not grow with K.

Each measurement runs in a fresh Python process (peak RSS is a high-water mark): it imports
evalkit, builds the model and data, makes one small warm-up call (K = 64, so libraries and
allocator pools are in place), then runs once at the K being measured. Reported per K:

* peak RSS of the process (``ru_maxrss``) and its growth over the warm-up;
* the size of the ``[N, K]`` float64 matrix the call returns (the engine's result, or the
  log-weights kept on an ``EstimateResult``; 0 when none is returned), which necessarily grows
  with K, and the peak RSS without it;
* on CUDA, ``torch.cuda.max_memory_allocated`` of the run.

Four workloads: ``engine`` (``evalkit.log_weights`` on the IWAE paper's one-layer model,
N = 32); ``estimate``, the call a user makes (``evalkit.analysis.estimate`` with its defaults on the
bundled digits example, all 359 test images, the default estimators: it streams over blocks of
datapoints, so no ``[N, K]`` matrix is held); ``estimate-keep``, the same with
``keep_log_weights=True``, which computes and returns the whole matrix (the statistics still run
over row blocks of it); ``sweep``, the default sweep a user runs (``evalkit.analysis.sweep`` on the same
data, iwae, jvi1 and jvi2 on the 1-2-5 ladder up to K_max = K), which streams over blocks of
datapoints as well.

Run from the repository root::

    python benchmarks/bench_memory.py
    python benchmarks/bench_memory.py --device cuda
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import load_average, print_run_header  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    sys.path.insert(0, {repo!r})
    import torch
    import evalkit
    from evalkit.models import IWAE

    workload, k, device = {workload!r}, {k}, {device!r}
    def rss():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if workload == "engine":
        torch.manual_seed(0)
        model = IWAE.burda_one_layer()
        x = torch.bernoulli(torch.full((32, 784), 0.13), generator=torch.Generator().manual_seed(0))
        run = lambda kk: evalkit.log_weights(model, x, kk, seed=0, device=device, progress=False)
    elif workload == "sweep":
        # The default sweep (iwae, jvi1, jvi2 on the 1-2-5 ladder up to K_max = k), as `evalkit sweep` runs it.
        import warnings
        warnings.simplefilter("ignore")
        model = evalkit.load_model({repo!r} + "/examples/digits_iwae.pt")
        x = evalkit.data.load_data("digits", split="test", binarize="bernoulli", seed=0)
        run = lambda kk: evalkit.sweep(model, ks=evalkit.analysis.diagnostics.ladder(kk), data=x, seed=0, device=device,
                                       progress=False)
    else:
        model = evalkit.load_model({repo!r} + "/examples/digits_iwae.pt")
        x = evalkit.data.load_data("digits", split="test", binarize="bernoulli", seed=0)
        keep = workload == "estimate-keep"
        run = lambda kk: evalkit.estimate(model, x, k=kk, seed=0, device=device, progress=False, keep_log_weights=keep)
    run(64)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = rss()
    start = time.perf_counter()
    result = run(k)
    seconds = time.perf_counter() - start
    cuda_peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    matrix = result if workload == "engine" else result.log_weights  # None unless the call returns it
    out = 0 if matrix is None else matrix.numel() * matrix.element_size()
    print(json.dumps({{"before": before, "peak": rss(), "out": out, "n": len(x), "seconds": seconds,
                      "cuda_peak": cuda_peak}}))
    """
)


def measure(workload: str, k: int, device: str) -> dict:
    script = CHILD.format(repo=str(REPO), workload=workload, k=k, device=device)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    workloads = ["engine", "estimate", "estimate-keep", "sweep"]
    parser.add_argument("--workloads", nargs="+", default=workloads, choices=workloads)
    args = parser.parse_args()
    print_run_header(__file__)
    print("| workload | N x K | peak RSS MiB | growth over warm-up MiB | [N, K] result MiB | peak RSS - result MiB "
          "| CUDA peak MiB | seconds |")
    print("|" + "---|" * 8)
    for workload in args.workloads:
        peaks = {}
        for k in args.ks:
            r = measure(workload, k, args.device)
            peaks[k] = r
            cuda = mib(r["cuda_peak"]) if r["cuda_peak"] is not None else "-"
            print(f"| {workload} | {r['n']} x {k} | {mib(r['peak'])} | {mib(r['peak'] - r['before'])} | {mib(r['out'])} "
                  f"| {mib(r['peak'] - r['out'])} | {cuda} | {r['seconds']:.1f} |")
            sys.stdout.flush()
        low, high = peaks[min(args.ks)], peaks[max(args.ks)]
        print(f"# {workload}: peak RSS at K = {max(args.ks)} is {high['peak'] / low['peak']:.3f}x that at K = {min(args.ks)}"
              f"; without the result matrix {(high['peak'] - high['out']) / (low['peak'] - low['out']):.3f}x")
    print(f"# {load_average()} (end)")


if __name__ == "__main__":
    main()
