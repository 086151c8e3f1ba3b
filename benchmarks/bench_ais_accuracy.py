"""Seconds to a log p(x) accurate to a stated tolerance: evalkit's AIS, the reference AIS, and IWAE-K.

Speed per step (``bench_ais.py``) is not what a user needs; time to an accurate number is. On
two models, against a truth:

* **digits** -- the bundled ``examples/digits_iwae.pt`` on the first ``--n`` (64) held-out test
  digits (binarised with ``bernoulli``, seed 0). Truth: IWAE with ``--truth-k`` (2^18)
  samples per datapoint from q(z | x), seed 12345. Why that is trustworthy to ~0.003 nats:
  IWAE_K is a lower bound whose bias falls as 1/K when the weights have finite variance;
  the script prints the 2^18 estimate's Monte Carlo SE, its difference from the IWAE of the
  first 1/64 of the same columns (under the 1/K law the remaining bias is that difference
  / 63), and the PSIS k-hat of the rows. The long rungs of both AIS ladders, which share
  nothing with it, land on it within their SEs (printed in the table).
* **linear-Gaussian** -- ``LinearGaussianModel.random(64, 8, seed=0)`` with a proposal that is
  the exact posterior shifted by one posterior sd in every latent dimension and widened 1.5x
  (as in ``tests/test_ais.py``), 64 datapoints from the model. Truth: the exact log p(x).
* **linear-gaussian-narrow** (``--models``, not in the defaults) -- the same with the proposal
  narrowed to 0.7x the posterior sd: heavy-tailed weights (PSIS k-hat above 1), where IWAE-K
  stays far off and AIS is the tool.

Methods, each on a ladder of its cost parameter, every rung one run from a fresh seed:

* **evalkit** -- ``ais_run(model, x, steps=T)`` at its defaults (16 chains from q(z | x), sigmoid
  schedule, 2 leapfrog steps, step size tuned and adapted from 2 pilot chains; float32; worker
  threads over calls);
* **reference** -- lxuechen/BDMC's ``ais.py``/``hmc.py`` as widely copied: chains from the prior,
  linear schedule, 10 leapfrog steps, a step size per chain from 0.01, x1.02 when that chain's
  acceptance so far exceeds 0.65 and x0.98 otherwise (clamped to [1e-4, 0.5]), gradients by
  autograd clamped as there, its defaults of 100 chains and 100 datapoints per batch, float32,
  torch's intra-op threads (its one kindness here: the last, wasted transition is skipped).
  ``bench_ais.reference_ais`` is the same loop as session 5 wrote it, with the Hamiltonians of
  the accept/reject test evaluated under autograd recording; lxuechen/BDMC runs
  ``ais_trajectory`` under ``@torch.no_grad()``, as :func:`reference_bdmc_ais` does, so this one
  is the faithful (and faster) copy; ``bench_ais.py`` keeps its own so its history stays comparable;
* **IWAE-K** -- ``evalkit.log_weights(model, x, K)`` and IWAE over the K samples: the cheap
  alternative.

Error of a rung = mean over datapoints of (estimate - truth), the estimate being IWAE over a
datapoint's chains (or samples); its SE combines the delta-method Monte Carlo SE of the mean
estimate and the truth's. A rung *reaches* a tolerance e when ``|error| + 2 SE <= e`` (the
error is below e with about 95 % confidence). Time to e = the wall time of the first rung
that reaches it; when no rung of a ladder does and its last bound is within 10x of e, it is
extrapolated (marked ``~``) from the last two rungs on a log-log line of that bound against
time. A ladder stops early when its next rung would not fit the time left (``--budget-s``).
Timings at 2 threads mean something only on an otherwise idle machine: the reference's two
OpenMP threads meet at a barrier after every op and lose up to 10x when another process takes
a core (measured: its 10-step rung 1.4 s idle, 20 s beside one other job). On a shared machine
use ``--threads 1``.

Last line: ``time-to-accuracy: evalkit X s, reference Y s, ratio R`` (digits, e = 0.01).

Run from the repository root::

    python benchmarks/bench_ais_accuracy.py                     # defaults: under 10 min on 2 cores
    python benchmarks/bench_ais_accuracy.py --reference-ladder 10,30,100,300,1000,3000,10000 --budget-s 7200
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import evalkit  # noqa: E402
from bench_engine import load_average, print_run_header  # noqa: E402
from evalkit.estimators import bounds, psis_khat  # noqa: E402
from evalkit.models import LinearGaussianModel  # noqa: E402
from evalkit.sampling.ais import ais_run  # noqa: E402

TOLERANCES = (0.05, 0.01)

EXTRAPOLATE_WITHIN = 10.0
"""A ladder that did not reach a tolerance is extrapolated only if its last bound is within this factor of it."""


@dataclass
class Rung:
    method: str
    cost: int  # T (AIS steps) or K (IWAE samples)
    seconds: float
    error: float
    se: float
    note: str = ""

    @property
    def bound(self) -> float:
        """About 95 % upper bound on |error|: ``|error| + 2 SE``."""
        return abs(self.error) + 2 * self.se


def reference_bdmc_ais(model, x: torch.Tensor, *, steps: int, chains: int = 100, leapfrog: int = 10,
                       batch_size: int = 100) -> torch.Tensor:
    """lxuechen/BDMC's forward AIS with the model's prior and likelihood; return ``[N, chains]`` log-weights."""
    schedule = torch.linspace(0.0, 1.0, steps + 1).tolist()
    out = []
    for start in range(0, len(x), batch_size):
        data = x[start:start + batch_size]
        batch = data.repeat_interleave(chains, 0)
        n_rows, latent = batch.shape[0], model.prior().event_shape[0]
        epsilon = torch.full((n_rows,), 0.01)
        accept_hist = torch.zeros(n_rows)
        logw = torch.zeros(n_rows)
        z = torch.randn(n_rows, latent)

        def log_f(z, t):
            return model.prior().log_prob(z) + t * model.likelihood(z.unsqueeze(1)).log_prob(batch.unsqueeze(1)).squeeze(1)

        def grad_u(z, t):
            with torch.enable_grad():
                z = z.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(-log_f(z, t).sum(), z)
            limit = n_rows * latent * 100.0
            return grad.clamp(-limit, limit)

        for j, (t0, t1) in enumerate(zip(schedule[:-1], schedule[1:]), 1):
            logw += log_f(z, t1) - log_f(z, t0)
            if j == steps:
                break  # the reference makes one more (wasted) transition here
            v0 = torch.randn_like(z)
            eps = epsilon.view(-1, 1)
            zp, v = z, v0 - 0.5 * eps * grad_u(z, t1)
            for i in range(1, leapfrog + 1):
                zp = zp + eps * v
                if i != leapfrog:
                    v = v - eps * grad_u(zp, t1)
            v = -(v - 0.5 * eps * grad_u(zp, t1))
            current = -log_f(z, t1) + 0.5 * (v0 * v0).sum(1)
            proposed = -log_f(zp, t1) + 0.5 * (v * v).sum(1)
            accept = torch.exp(current - proposed).clamp(max=1.0) > torch.rand(n_rows)
            z = torch.where(accept.view(-1, 1), zp, z)
            accept_hist += accept
            up = accept_hist / j > 0.65
            epsilon = (epsilon * torch.where(up, 1.02, 0.98)).clamp(1e-4, 0.5)
        out.append(logw.view(len(data), chains))
    return torch.cat(out).double()


def error_and_se(log_w: torch.Tensor, truth: np.ndarray, truth_se: float) -> tuple[float, float]:
    """Mean over datapoints of IWAE over the row minus the truth, and its SE (delta method + truth's)."""
    rows = log_w.double().numpy()
    estimate = bounds.iwae(rows)
    variance = bounds.iwae_mc_variance(rows) if rows.shape[1] > 1 else np.full(len(rows), np.nan)
    se = math.sqrt(float(np.nansum(variance))) / len(rows)
    return float(np.mean(estimate - truth)), math.sqrt(se * se + truth_se * truth_se)


def run_ladder(method: str, costs: list[int], draw: Callable[[int, int], tuple[torch.Tensor, str]],
               truth: np.ndarray, truth_se: float, deadline: float, label: str) -> list[Rung]:
    """Run ``draw(cost, seed)`` for each cost (seed = rung number) while the projected time fits the deadline."""
    rungs: list[Rung] = []
    for seed, cost in enumerate(costs, start=1):
        if rungs:
            projected = rungs[-1].seconds * cost / rungs[-1].cost
            if time.perf_counter() + projected > deadline:
                print(f"#   {label} {method}: stopping before {cost} (about {projected:.0f} s projected, "
                      f"{max(deadline - time.perf_counter(), 0):.0f} s left in --budget-s)", flush=True)
                break
        start = time.perf_counter()
        log_w, note = draw(cost, seed)
        seconds = time.perf_counter() - start
        error, se = error_and_se(log_w, truth, truth_se)
        rung = Rung(method, cost, seconds, error, se, note)
        rungs.append(rung)
        print(f"| {label} | {method} | {cost} | {seconds:.2f} | {error:+.4f} | {se:.4f} | {rung.bound:.4f} | {note} |",
              flush=True)
    return rungs


def time_to(rungs: list[Rung], tolerance: float) -> tuple[Optional[float], bool]:
    """Seconds of the first rung whose bound is within ``tolerance``; else extrapolated (flag True), or None."""
    for rung in rungs:
        if rung.bound <= tolerance:
            return rung.seconds, False
    if len(rungs) < 2:
        return None, True
    a, b = rungs[-2], rungs[-1]
    if not (b.bound < a.bound and b.seconds > a.seconds) or b.bound > EXTRAPOLATE_WITHIN * tolerance:
        return None, True
    slope = math.log(b.bound / a.bound) / math.log(b.seconds / a.seconds)
    return b.seconds * (tolerance / b.bound) ** (1 / slope), True


def digits_problem(n: int, truth_k: int, threads: int):
    """The bundled model, ``n`` test digits and the IWAE-``truth_k`` truth per datapoint (with its checks)."""
    model = evalkit.load_model(REPO / "examples" / "digits_iwae.pt")
    x = evalkit.data.load_data("digits", split="test", binarize="bernoulli", seed=0)[:n]
    start = time.perf_counter()
    log_w = evalkit.log_weights(model, x, truth_k, seed=12345, progress=False, threads=threads).numpy()
    seconds = time.perf_counter() - start
    truth = bounds.iwae(log_w)
    se = math.sqrt(float(bounds.iwae_mc_variance(log_w).sum())) / n
    sub = bounds.iwae(log_w[:, : truth_k // 64])
    khat = psis_khat(log_w)
    print(f"# digits truth: IWAE-{truth_k} from q(z|x), mean {truth.mean():.5f}, MC SE {se:.5f} ({seconds:.1f} s); "
          f"IWAE-{truth_k} - IWAE-{truth_k // 64} on the same columns {truth.mean() - sub.mean():+.5f} "
          f"(1/K law: remaining bias ~{(truth.mean() - sub.mean()) / 63:.5f}); PSIS k-hat median {np.median(khat):.2f}, "
          f"max {khat.max():.2f}, {int((khat > 0.7).sum())} of {n} rows above 0.7", flush=True)
    return model, x, truth, se


def linear_gaussian_problem(n: int, width: float = 1.5):
    """A 64-d, 8-latent linear-Gaussian model with a shifted proposal ``width`` x the posterior's sd; its exact log p(x).

    ``width`` 1.5 (the default problem): q wider than the posterior, light-tailed weights.
    ``width`` 0.7 (``linear-gaussian-narrow``): q narrower, heavy-tailed weights (PSIS k-hat
    above 1 on most rows), the case where IWAE-K converges too slowly to be usable.
    """
    model = LinearGaussianModel.random(64, 8, seed=0)
    weight, bias, scale_tril = model.exact_posterior_params()
    model = model.with_proposal(weight, bias + scale_tril.sum(1), width * scale_tril)
    generator = torch.Generator().manual_seed(1)
    marginal = model.marginal()
    x = marginal.loc + torch.randn(n, 64, generator=generator, dtype=torch.float64) @ marginal.scale_tril.T
    truth = model.log_marginal(x).numpy()
    khat = psis_khat(evalkit.log_weights(model, x, 10_000, seed=12345, progress=False).numpy())
    print(f"# linear-Gaussian (proposal {width} x the posterior sd) truth: exact log p(x), mean {truth.mean():.5f}; "
          f"PSIS k-hat of IWAE-10000 median {np.median(khat):.2f}, {int((khat > 0.7).sum())} of {n} rows above 0.7",
          flush=True)
    return model, x, truth, 0.0


def methods(model, x, threads: int):
    """The three draw functions ``(cost, seed) -> (log_w, note)`` on one problem."""
    reference_model = copy.deepcopy(model).float()  # a float32 copy of the networks, as the reference runs them
    x32 = x.float()

    def ours(steps, seed):
        result = ais_run(model, x, steps=steps, seed=seed, progress=False, threads=threads)
        return result.log_weights, f"acceptance {float(result.acceptance_rate.mean()):.2f}"

    def reference(steps, seed):
        torch.manual_seed(seed)
        with torch.no_grad():
            return reference_bdmc_ais(reference_model, x32, steps=steps), ""

    def iwae(k, seed):
        return evalkit.log_weights(model, x, k, seed=seed, progress=False, threads=threads), ""

    return {"IWAE-K": iwae, "evalkit AIS": ours, "reference AIS": reference}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ints = lambda text: [int(v) for v in text.split(",")]  # noqa: E731
    parser.add_argument("--n", type=int, default=64, help="datapoints per model (default 64)")
    parser.add_argument("--ladder", type=ints, default=[10, 30, 100, 300, 1000, 3000], help="evalkit's T")
    parser.add_argument("--reference-ladder", type=ints, default=[10, 30, 100, 300, 1000], help="the reference's T")
    parser.add_argument("--ks", type=ints, default=[10, 100, 1000, 10_000, 100_000], help="IWAE's K")
    parser.add_argument("--truth-k", type=int, default=2**18, help="IWAE samples of the digits truth (default 2^18)")
    parser.add_argument("--budget-s", type=float, default=540.0,
                        help="seconds for the whole run; a ladder stops before a rung that would not fit (default 540)")
    parser.add_argument("--models", default="digits,linear-gaussian",
                        help="comma-separated, from digits, linear-gaussian, linear-gaussian-narrow "
                             "(a proposal narrower than the posterior: where AIS pays; default digits,linear-gaussian)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="cores for every method: torch's intra-op threads (the reference) and evalkit's "
                             "worker threads (default torch's thread count; 1 is the fair choice on a shared machine)")
    parser.add_argument("--reserve-s", type=float, default=120.0,
                        help="seconds of --budget-s kept for the models after the first (default 120)")
    args = parser.parse_args()
    deadline = time.perf_counter() + args.budget_s
    torch.set_num_threads(args.threads)
    print_run_header(__file__)
    print(f"# threads {args.threads} for every method; a rung reaches e when |error| + 2 SE <= e")
    problems = {"digits": lambda: digits_problem(args.n, args.truth_k, args.threads),
                "linear-gaussian": lambda: linear_gaussian_problem(args.n),
                "linear-gaussian-narrow": lambda: linear_gaussian_problem(args.n, width=0.7)}
    ladders = {"evalkit AIS": args.ladder, "reference AIS": args.reference_ladder, "IWAE-K": args.ks}
    results = {}
    names = args.models.split(",")
    for position, name in enumerate(names):
        model, x, truth, truth_se = problems[name]()
        print("| model | method | T or K | wall s | mean error (nats) | SE | abs(error) + 2 SE | |")
        print("|---|---|---|---|---|---|---|---|")
        # the reference's long rungs take what is left, less a reserve for the models still to come
        model_deadline = deadline - args.reserve_s * (len(names) - 1 - position)
        for method, draw in methods(model, x, args.threads).items():
            results[name, method] = run_ladder(method, ladders[method], draw, truth, truth_se, model_deadline, name)
    summarise(results)
    print(f"# {load_average()} (end)")
    evalkit_s, _ = time_to(results.get(("digits", "evalkit AIS"), []), 0.01)
    reference_s, _ = time_to(results.get(("digits", "reference AIS"), []), 0.01)
    ratio = reference_s / evalkit_s if evalkit_s and reference_s else float("nan")
    print(f"time-to-accuracy: evalkit {_seconds(evalkit_s)} s, reference {_seconds(reference_s)} s, ratio {ratio:.1f}")


def _seconds(value: Optional[float]) -> str:
    return "nan" if value is None else f"{value:.1f}"


def summarise(results: dict) -> None:
    """Print the time-to-accuracy table: per model and tolerance, each method's seconds and the ratio."""
    print("\n| model | tolerance (nats) | evalkit AIS s (T) | reference AIS s (T) | IWAE-K s (K) | reference / evalkit |")
    print("|---|---|---|---|---|---|")
    for name in sorted({model for model, _ in results}):
        for tolerance in TOLERANCES:
            cells, seconds = [], {}
            for method in ("evalkit AIS", "reference AIS", "IWAE-K"):
                rungs = results.get((name, method), [])
                value, extrapolated = time_to(rungs, tolerance)
                seconds[method] = value
                if value is None:
                    best = min(rungs, key=lambda r: r.bound) if rungs else None
                    cells.append("not reached" + (f" (best {best.bound:.3g} at {best.cost})" if best else ""))
                elif extrapolated:
                    cells.append(f"~{value:.3g} (extrapolated)")
                else:
                    cost = next(r.cost for r in rungs if r.seconds == value)
                    cells.append(f"{value:.2f} ({cost})")
            ours, theirs = seconds["evalkit AIS"], seconds["reference AIS"]
            ratio = f"{theirs / ours:.1f}" if ours and theirs else "n/a"
            print(f"| {name} | {tolerance} | " + " | ".join(cells) + f" | {ratio} |")


if __name__ == "__main__":
    main()
