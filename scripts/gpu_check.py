#!/usr/bin/env python
"""The GPU check of issue 29: every CUDA path of evalkit measured in one command, each step within its own budget.

On a GPU machine whose ``python3`` already holds a CUDA build of PyTorch (the device tool's
KINDS.md lists what is there), from the repository root::

    python3 scripts/gpu_check.py --out "$OUT/gpu_check.json"            # about 9 minutes at most
    python3 scripts/gpu_check.py --dry-run --out /tmp/gpu_check.json    # CPU, tiny sizes, under 2 minutes

It first installs evalkit with ``pip install --no-deps --no-build-isolation -e .`` (``--wheels
DIR`` installs carried wheels of missing dependencies first, offline), then runs each step in a
subprocess of its own with a time budget, so that one step that hangs or runs out of memory
costs its budget and the others still run:

* ``device``: torch's version and the device name as torch prints it;
* ``cuda_tests``: the test suite's CUDA tests;
* ``engine``: the engine on the IWAE paper's one-layer model (784-200-200-50), float32 and
  float64, TF32 off and on, samples per second and peak CUDA memory at K = 5000 and 50 000;
* ``oom_fallback``: a memory budget larger than the card, so that the engine meets CUDA's
  out-of-memory error and must shrink its calls (the bits must equal a normal run);
* ``mnist_estimate``: 10 000 MNIST-sized binary datapoints x K = 5000, ``evalkit.estimate`` end
  to end, and the reference-style loop (one datapoint at a time, the encoder run K times) on a
  slice of it, for the ratio per datapoint (targets: 5 s or less, 20x or more);
* ``jvi3``: JVI of order 3 on a CUDA ``[10 000, 5000]`` matrix;
* ``ais``: AIS (1000 steps x 16 chains) on 1000 digits with the bundled model on the GPU,
  against the CPU (on a subset, per datapoint).

Every figure, the device name, the command and the date go into the one results file ``--out``
(JSON); a step that fails or runs out of time is recorded as such with its last output lines.
``--dry-run`` runs every step on the CPU at tiny sizes (tests/test_gpu_check.py runs it, so the
script cannot rot).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: step -> (seconds on a GPU, seconds in a dry run); all within 9 minutes with the install.
BUDGETS = {
    "device": (30, 30),
    "cuda_tests": (60, 60),
    "engine": (100, 30),
    "oom_fallback": (45, 30),
    "mnist_estimate": (100, 30),
    "jvi3": (30, 30),
    "ais": (100, 40),
}
INSTALL_BUDGET_S = 60


def _sizes(dry: bool) -> dict:
    if dry:
        return dict(engine_n=16, engine_ks=(40, 100), mnist_n=64, mnist_k=50, reference_n=4, jvi_shape=(200, 100),
                    ais_n=8, ais_cpu_n=4, ais_steps=5, ais_chains=4)
    return dict(engine_n=2000, engine_ks=(5000, 50000), mnist_n=10000, mnist_k=5000, reference_n=20,
                jvi_shape=(10000, 5000), ais_n=1000, ais_cpu_n=32, ais_steps=1000, ais_chains=16)


# -- steps (each runs in its own process) -------------------------------------------------------


def _device(dry: bool):
    import torch

    return torch.device("cpu" if dry else "cuda")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device):
    _sync(device)
    start = time.perf_counter()
    value = fn()
    _sync(device)
    return value, time.perf_counter() - start


def step_device(dry: bool) -> dict:
    import torch

    out = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
           "cuda_version": torch.version.cuda, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(device_name=torch.cuda.get_device_name(0), memory_gib=round(props.total_memory / 2**30, 1),
                   multiprocessors=props.multi_processor_count)
    else:
        out["device_name"] = "cpu"
    return out


def step_cuda_tests(dry: bool) -> dict:
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                          "tests/test_engine_perf_options.py::test_gpu_path_matches_the_cpu",
                          "tests/test_engine_perf_options.py::test_gpu_path_with_data_on_the_gpu_and_small_chunks"],
                         cwd=REPO, capture_output=True, text=True)
    summary = [line for line in run.stdout.splitlines() if " passed" in line or " failed" in line or " skipped" in line]
    return {"returncode": run.returncode, "summary": summary[-1] if summary else run.stdout[-300:]}


def _mnist(n: int):
    import torch
    from evalkit.models import IWAE

    torch.manual_seed(0)
    model = IWAE.burda_one_layer()  # 784-200-200-50, random weights
    x = torch.bernoulli(torch.full((n, 784), 0.13), generator=torch.Generator().manual_seed(0))
    return model, x


def step_engine(dry: bool) -> dict:
    import torch
    from evalkit.sampling.engine import log_weights

    device, sizes = _device(dry), _sizes(dry)
    model, x = _mnist(sizes["engine_n"])
    rows = []
    for k in sizes["engine_ks"]:
        n = max(1, min(len(x), 5_000_000 // k)) if not dry else len(x)  # about 5e6 samples per row
        for dtype in (torch.float32, torch.float64):
            for tf32 in ((False, True) if dtype == torch.float32 and device.type == "cuda" else (False,)):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                log_weights(model, x[:min(n, 32)], k, device=device, dtype=dtype, tf32=tf32, progress=False)  # warm-up
                _, seconds = _timed(lambda: log_weights(model, x[:n], k, device=device, dtype=dtype, tf32=tf32,
                                                        progress=False), device)
                peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
                rows.append({"k": k, "n": n, "dtype": str(dtype).replace("torch.", ""), "tf32": tf32,
                             "seconds": round(seconds, 3), "samples_per_s": round(n * k / seconds),
                             "peak_cuda_mib": None if peak is None else round(peak, 1)})
    return {"model": "IWAE 1 layer (784-200-200-50)", "rows": rows}


def step_oom_fallback(dry: bool) -> dict:
    import torch
    from evalkit.sampling.engine import log_weights

    device = _device(dry)
    model, x = _mnist(256 if not dry else 16)
    k = 20000 if not dry else 64
    if device.type == "cuda":
        budget = 2 * torch.cuda.get_device_properties(device).total_memory  # more than the card holds
    else:
        budget = 2 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")  # more than the machine holds
    big, seconds = _timed(lambda: log_weights(model, x, k, device=device, memory_budget=int(budget), progress=False), device)
    normal = log_weights(model, x, k, device=device, progress=False)
    return {"budget_gib": round(budget / 2**30, 1), "seconds": round(seconds, 3), "bitwise_equal": bool(torch.equal(big, normal)),
            "finite": bool(torch.isfinite(big).all())}


def step_mnist_estimate(dry: bool) -> dict:
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    import evalkit
    from bench_reference import reference_iwae

    device, sizes = _device(dry), _sizes(dry)
    model, x = _mnist(sizes["mnist_n"])
    k = sizes["mnist_k"]
    evalkit.estimate(model, x[:64], k=k, estimators=("iwae",), device=device, progress=False)  # warm-up
    result, seconds = _timed(lambda: evalkit.estimate(model, x, k=k, estimators=("iwae", "jvi1"), device=device,
                                                      progress=False), device)
    slice_n = sizes["reference_n"]
    reference_model = model.to(device=device, dtype=torch.float64)
    _, ref_seconds = _timed(lambda: reference_iwae(reference_model, x[:slice_n].to(device, torch.float64), k), device)
    per_evalkit, per_reference = seconds / len(x), ref_seconds / slice_n
    iwae = result.summary.set_index("estimator").loc["iwae"]
    return {"n": len(x), "k": k, "estimate_seconds": round(seconds, 3), "iwae": float(iwae["estimate"]),
            "iwae_se_mc": float(iwae["se_mc"]), "reference_n": slice_n, "reference_seconds": round(ref_seconds, 3),
            "reference_seconds_for_n": round(per_reference * len(x), 1),
            "ratio_per_datapoint": round(per_reference / per_evalkit, 2)}


def step_jvi3(dry: bool) -> dict:
    import torch
    from evalkit.estimators import jvi

    device, sizes = _device(dry), _sizes(dry)
    log_w = torch.randn(*sizes["jvi_shape"], generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device)
    values, seconds = _timed(lambda: jvi(log_w, 3), device)
    return {"shape": list(sizes["jvi_shape"]), "seconds": round(seconds, 3), "finite": bool(torch.isfinite(values).all()),
            "mean": float(values.mean())}


def step_ais(dry: bool) -> dict:
    import evalkit
    from evalkit.sampling.ais import ais_run

    device, sizes = _device(dry), _sizes(dry)
    model = evalkit.load_model(REPO / "examples" / "digits_iwae.pt")
    x = evalkit.data.load_data("digits", split="all", binarize="bernoulli")[:sizes["ais_n"]]
    options = dict(chains=sizes["ais_chains"], steps=sizes["ais_steps"], progress=False)
    run, seconds = _timed(lambda: ais_run(model, x, device=device, **options), device)
    cpu_n = sizes["ais_cpu_n"]
    cpu_run, cpu_seconds = _timed(lambda: ais_run(model, x[:cpu_n], device="cpu", **options), _device(True))
    gpu_rows = run.log_weights[:cpu_n].mean().item()
    return {"n": len(x), "steps": sizes["ais_steps"], "chains": sizes["ais_chains"], "seconds": round(seconds, 3),
            "mean_log_w": float(run.log_weights.mean()), "cpu_n": cpu_n, "cpu_seconds": round(cpu_seconds, 3),
            "cpu_seconds_for_n": round(cpu_seconds / cpu_n * len(x), 1),
            "speedup_per_datapoint": round((cpu_seconds / cpu_n) / (seconds / len(x)), 2),
            "cpu_minus_device_mean_log_w_on_the_subset": float(cpu_run.log_weights.mean()) - gpu_rows}


STEPS = {name[len("step_"):]: fn for name, fn in globals().items() if name.startswith("step_")}


# -- the driver ---------------------------------------------------------------------------------


def _install(wheels: str | None) -> dict:
    commands = []
    if wheels:
        commands.append([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", wheels, "--no-deps",
                         *sorted(str(p) for p in Path(wheels).glob("*.whl"))])
    commands.append([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(REPO)])
    start = time.perf_counter()
    for command in commands:
        run = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_BUDGET_S)
        if run.returncode != 0:
            return {"status": "failed", "command": shlex.join(command), "output": run.stderr[-1500:]}
    return {"status": "ok", "seconds": round(time.perf_counter() - start, 1)}


def _run_step(name: str, dry: bool) -> dict:
    budget = BUDGETS[name][1 if dry else 0]
    command = [sys.executable, __file__, "--step", name] + (["--dry-run"] if dry else [])
    start = time.perf_counter()
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=budget, cwd=REPO)
    except subprocess.TimeoutExpired as expired:
        tail = (expired.stderr or b"")[-800:]
        return {"status": "timed out", "budget_s": budget,
                "output": tail.decode(errors="replace") if isinstance(tail, bytes) else tail}
    seconds = round(time.perf_counter() - start, 1)
    lines = run.stdout.strip().splitlines()
    if run.returncode != 0 or not lines:
        return {"status": "failed", "budget_s": budget, "wall_s": seconds, "output": run.stderr[-1500:]}
    return {"status": "ok", "budget_s": budget, "wall_s": seconds, **json.loads(lines[-1])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=False, help="the results file (JSON)")
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU at tiny sizes (under 2 minutes)")
    parser.add_argument("--wheels", help="a folder of wheels for dependencies missing on the GPU machine")
    parser.add_argument("--skip-install", action="store_true", help="evalkit is installed already")
    parser.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)  # one step, in a subprocess
    args = parser.parse_args()
    if args.step:
        print(json.dumps(STEPS[args.step](args.dry_run)))
        return 0
    if not args.out:
        parser.error("--out FILE is required")
    results = {"command": shlex.join([Path(sys.executable).name, *sys.argv]),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "dry_run": args.dry_run, "host": platform.node(), "steps": {}}
    install = {"status": "skipped"} if args.skip_install or args.dry_run else _install(args.wheels)
    results["install"] = install
    for name in STEPS:
        results["steps"][name] = _run_step(name, args.dry_run) if install["status"] != "failed" else {"status": "not run"}
        step = results["steps"][name]
        print(f"{name}: {step['status']} ({step.get('wall_s', '-')} s)", file=sys.stderr)
        Path(args.out).write_text(json.dumps(results, indent=1, default=str) + "\n")  # whatever happens next, kept
    results["device_name"] = results["steps"]["device"].get("device_name")
    Path(args.out).write_text(json.dumps(results, indent=1, default=str) + "\n")
    failed = [name for name, step in results["steps"].items() if step["status"] != "ok"]
    print(f"gpu_check: {len(STEPS) - len(failed)} of {len(STEPS)} steps ok" + (f"; not ok: {', '.join(failed)}" if failed else "")
          + f"; results in {args.out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
