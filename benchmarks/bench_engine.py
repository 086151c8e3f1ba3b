"""Engine throughput against a bare batched forward pass of the same networks (the roofline proxy).

For each model the script times, interleaved in one process and best of ``--repeats``:

* **engine** -- ``evalkit.log_weights(model, x, K)``: per-datapoint noise streams, the call
  layout that makes results batching-invariant, every log-density, float64 output;
* **bare** -- the least a sampler must do with the same networks: the encoder once per
  datapoint, ``torch.randn`` noise, the reparameterised samples and every per-sample network
  (for two stochastic layers also ``q(h2 | h1)`` and ``p(h1 | h2)``'s networks) up to the
  decoder's logits; float32, no likelihood, no log-density, nothing kept. A scan over
  several call sizes (rows = datapoints x samples per call) picks the fastest, which is then
  timed like every other variant (the same number of repeats);
* **bare, torch.tanh** -- the same with ``torch.tanh`` (``nn.Tanh``), as a plain PyTorch
  module would compute its activations; evalkit's built-in models compute tanh as
  ``2 sigmoid(2x) - 1`` on the CPU (see :mod:`evalkit.models.densities`); here every network of
  the pass runs through its modules as written (before session 7 the Gaussian blocks of this
  column still took evalkit's sigmoid form, only the decoder ran ``torch.tanh``);
* **expert** -- the loop a competent user writes by hand for the same networks, the issue's
  bar (``expert_pass``): encoder once per datapoint, ``torch.randn`` from the global
  generator, reparameterised samples, calls of 8 datapoints x 500 samples in float32,
  closed-form Gaussian log-densities of the samples, ``binary_cross_entropy_with_logits`` for
  the Bernoulli likelihood, log-weights cast to float64 into an ``[N, K]`` tensor. Its networks
  are the modules with ``nn.Tanh`` (``torch.tanh``), as plain PyTorch would run them; with two
  threads the faster of the engine's scheme (two Python threads, one intra-op thread each) and
  one loop on torch's two intra-op threads counts. The targets are judged on this column;
* **expert, own modules** -- the same loop through the model's own networks (evalkit's
  sigmoid-form tanh, as the engine runs them), so that the comparison is fair both ways.

Each row also checks that the expert's log-weights have the engine's distribution: the mean
IWAE-K over the data of both, and their paired difference in standard errors (|z| of a few
at most is agreement; the noise differs, so the bits do not).

and prints log-weight samples per second and the ratios engine / bare and engine / expert. Both sides run with
the same threads: ``--threads 1`` pins everything to one core (the cleanest measure of the
engine's own overhead); with more threads the engine uses its worker threads and the bare
pass the same scheme (one intra-op thread per worker).

Models: the bundled example (``examples/digits_iwae.pt``, the digits test split binarised
with ``bernoulli``, seed 0) and the IWAE paper's MNIST-size architectures with random
weights on 784-dimensional Bernoulli(0.13) data (``IWAE.burda_one_layer()``,
``IWAE.burda_two_layer()``).

Run from the repository root::

    python benchmarks/bench_engine.py                  # K = 1000, threads 1 and 2
    python benchmarks/bench_engine.py --paired 9       # also the medians of 9 back-to-back ratios per row
    python benchmarks/bench_engine.py --device cuda --n 10000 --k 5000 --threads 16

With ``--device cuda`` (when a GPU is present) the bare pass runs on the GPU too and the
script also reports the seconds for the full run.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import evalkit  # noqa: E402
from evalkit.data import load_data  # noqa: E402
from evalkit.models import IWAE  # noqa: E402
from evalkit.models.densities import Tanh  # noqa: E402
from evalkit.models.row_pieces import map_row_pieces  # noqa: E402
from evalkit.noise import NoiseBlocks  # noqa: E402

BARE_ROWS = (1024, 2048, 4096, 8192)
"""Call sizes (datapoints x samples) tried for the bare pass on the CPU; the fastest counts."""


def machine() -> str:
    """One line: CPU model, cores, torch and Python versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}, Python {platform.python_version()}, "
            f"CPU capability {torch.backends.cpu.get_cpu_capability()}")


def load_average() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def print_run_header(script: str, *, machine_note: str = "") -> None:
    """Print a run's comment lines: script and UTC time, machine, the command as typed, load average."""
    print(f"# {Path(script).stem}  {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"# machine: {machine()}{machine_note}")
    print(f"# command: python benchmarks/{Path(script).name} {' '.join(sys.argv[1:])}")
    print(f"# {load_average()} (start)")


def models(n_mnist: int):
    """Yield (name, model, data) for the three benchmark models."""
    digits = evalkit.load_model(REPO / "examples" / "digits_iwae.pt")
    yield "digits example (64-100-100-8)", digits, load_data("digits", split="test", binarize="bernoulli", seed=0)
    generator = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((n_mnist, 784), 0.13), generator=generator)
    torch.manual_seed(0)
    yield "IWAE 1 layer (784-200-200-50)", IWAE.burda_one_layer(), x
    torch.manual_seed(1)
    yield "IWAE 2 layers (784-200-200-100-100-100-50)", IWAE.burda_two_layer(), x


def with_torch_tanh(model: nn.Module) -> nn.Module:
    """A copy whose activations are ``nn.Tanh`` (torch.tanh) instead of evalkit's CPU tanh."""
    clone = copy.deepcopy(model)
    for module in clone.modules():
        for name, child in module.named_children():
            if isinstance(child, Tanh):
                setattr(module, name, nn.Tanh())
    return clone


def bare_call(model: IWAE, x: torch.Tensor, n_samples: int, generator: torch.Generator, plain: bool = False) -> None:
    """The bare forward pass of one call: encoder once per datapoint, noise, per-sample networks.

    ``plain``: the Gaussian blocks through their modules as written (``plain_params``), for a
    ``with_torch_tanh`` copy; otherwise ``params`` (on the CPU evalkit's sigmoid form).
    """
    params = plain_params if plain else (lambda block, h: block.params(h))
    mu, log_sigma = params(model.encoder_h1, x)
    eps = torch.randn(x.shape[0], n_samples, mu.shape[-1], generator=generator, device=x.device)
    h = mu.unsqueeze(1) + log_sigma.exp().unsqueeze(1) * eps
    top = h
    for layer in range(1, len(model.latent_dims)):
        mu, log_sigma = params(getattr(model, f"encoder_h{layer + 1}"), top)
        eps = torch.randn(mu.shape, generator=generator, device=x.device)
        top = mu + log_sigma.exp() * eps
    for layer in reversed(range(len(model.latent_dims) - 1)):
        params(getattr(model, f"decoder_h{layer + 1}"), top)  # p(h_l | h_{l+1})'s network
    model.decoder_x(h)


def bare_pass(model: IWAE, x: torch.Tensor, k: int, rows: int, threads: int, plain: bool = False) -> None:
    """Run the bare pass over all datapoints and samples in calls of about ``rows`` rows."""
    n_samples = min(k, rows)
    batch = max(1, rows // n_samples)
    calls = [(start, k0) for start in range(0, len(x), batch) for k0 in range(0, k, n_samples)]

    def run(my_calls, seed):
        generator = torch.Generator(device=x.device).manual_seed(seed)
        with torch.inference_mode():
            for start, k0 in my_calls:
                bare_call(model, x[start:start + batch], min(n_samples, k - k0), generator, plain)

    if threads == 1 or x.device.type == "cuda":
        run(calls, 0)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        return

    run_on_threads(calls, run, threads)


def run_on_threads(calls: list, run, threads: int) -> None:
    """Call ``run(calls[i::threads], i)`` on ``threads`` Python threads with one intra-op thread each."""
    def worker(i):
        torch.set_num_threads(1)
        run(calls[i::threads], i)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    torch.set_num_threads(threads)


EXPERT_CHUNK = 500
"""Samples per datapoint per decoder call of the expert pass (the issue's hand-written loop)."""

EXPERT_BATCH = 8
"""Datapoints per call of the expert pass: 8 x 500 = 4000 rows, in the bare pass's best range."""

LOG_2PI = math.log(2 * math.pi)


def plain_params(block, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mu, log_sigma)`` of a Gaussian block through its modules as written (nn.Tanh: torch.tanh)."""
    hidden = block.transform(h)
    return block.fc_mu(hidden), block.fc_logsigma(hidden)


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """``Normal(mu, exp(log_sigma)).log_prob(z).sum(-1)`` in closed form, as torch.distributions computes it."""
    return (-((z - mu) ** 2) / (2 * torch.exp(2 * log_sigma)) - log_sigma - 0.5 * LOG_2PI).sum(-1)


def expert_call(model: IWAE, x: torch.Tensor, n_samples: int, own: bool) -> torch.Tensor:
    """Log-weights ``[B, n_samples]`` (float32) of one hand-written call: what a competent user writes.

    Encoder once per datapoint, ``torch.randn`` (global generator), reparameterised samples,
    closed-form Gaussian densities from the samples, ``binary_cross_entropy_with_logits`` for the
    Bernoulli likelihood. ``own``: the model's own (sigmoid-form) networks, as the engine runs
    them; otherwise the modules with ``nn.Tanh`` (pass a ``with_torch_tanh`` copy).
    """
    params = (lambda block, h: block.params(h)) if own else plain_params
    mu, log_sigma = params(model.encoder_h1, x)
    mu, log_sigma = mu.unsqueeze(1), log_sigma.unsqueeze(1)
    h = [mu + log_sigma.exp() * torch.randn(x.shape[0], n_samples, mu.shape[-1], device=x.device)]
    log_q = gaussian_log_prob(h[0], mu, log_sigma)
    for layer in range(1, len(model.latent_dims)):
        mu, log_sigma = params(getattr(model, f"encoder_h{layer + 1}"), h[-1])
        h.append(mu + log_sigma.exp() * torch.randn(mu.shape, device=x.device))
        log_q = log_q + gaussian_log_prob(h[-1], mu, log_sigma)
    log_p = (-0.5 * h[-1] ** 2 - 0.5 * LOG_2PI).sum(-1)
    for layer in range(len(model.latent_dims) - 1):
        mu, log_sigma = params(getattr(model, f"decoder_h{layer + 1}"), h[layer + 1])
        log_p = log_p + gaussian_log_prob(h[layer], mu, log_sigma)
    logits = model.logits(h[0]) if own else model.decoder_x(h[0])
    target = x.unsqueeze(1).expand_as(logits)
    log_p = log_p - F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)
    return log_p - log_q


def expert_pass(model: IWAE, x: torch.Tensor, k: int, threads: int, *, own: bool,
                workers: bool = True) -> torch.Tensor:
    """The expert's ``[N, K]`` float64 log-weights, in calls of EXPERT_BATCH datapoints x EXPERT_CHUNK samples.

    With ``threads > 1``: ``workers`` splits the calls over that many Python threads with one
    intra-op thread each (the engine's scheme); otherwise one loop with torch's intra-op threads.
    """
    out = torch.empty(len(x), k, dtype=torch.float64, device=x.device)
    calls = [(start, k0) for start in range(0, len(x), EXPERT_BATCH) for k0 in range(0, k, EXPERT_CHUNK)]

    def run(my_calls):
        with torch.inference_mode():
            for start, k0 in my_calls:
                k1 = min(k0 + EXPERT_CHUNK, k)
                out[start:start + EXPERT_BATCH, k0:k1] = expert_call(model, x[start:start + EXPERT_BATCH], k1 - k0, own)

    if threads == 1 or not workers:
        run(calls)
        return out
    run_on_threads(calls, lambda my_calls, _: run(my_calls), threads)
    return out


def paired_iwae_check(engine: torch.Tensor, expert: torch.Tensor) -> tuple[float, float, float]:
    """Mean IWAE-K over the data of both, and the paired difference in units of its standard error."""
    k = engine.shape[1]
    a = torch.logsumexp(engine, 1) - math.log(k)
    b = torch.logsumexp(expert, 1) - math.log(k)
    diff = a - b
    se = float(diff.std() / math.sqrt(len(diff)))
    return float(a.mean()), float(b.mean()), float(diff.mean()) / se if se > 0 else 0.0


def noise_costs(model, n_rows: int, k: int, repeats: int) -> tuple[float, float]:
    """Seconds per sample to draw the noise: evalkit's per-datapoint streams (SFC64 seeded from Philox), and torch.randn."""
    shape = tuple(model.noise_shape)
    buffer = torch.empty(32, k, *shape)

    def evalkit_noise():
        for start in range(0, n_rows, 32):
            NoiseBlocks(0, range(start, start + 32), shape).write_columns(0, k, buffer)

    def torch_noise():
        for _ in range(0, n_rows, 32):
            torch.randn(32, k, *shape)

    samples = -(-n_rows // 32) * 32 * k
    return (min(timed(evalkit_noise) for _ in range(repeats)) / samples,
            min(timed(torch_noise) for _ in range(repeats)) / samples)


def call_shapes(model, x: torch.Tensor, k: int) -> list[tuple[int, int]]:
    """``(slots, columns)`` of every model call of ``evalkit.log_weights(model, x, k, threads=1)``, padding included."""
    shapes = []
    method = type(model).log_weights

    def recording(self, data, noise):
        shapes.append(tuple(noise.shape[:2]))
        return method(self, data, noise)

    type(model).log_weights = recording
    try:
        evalkit.log_weights(model, x, k, seed=0, threads=1, progress=False)
    finally:
        type(model).log_weights = method
    return shapes


def likelihood_cost(model: IWAE, x: torch.Tensor, shape: tuple[int, int], repeats: int) -> tuple[float, float]:
    """Seconds per sample of the engine's Bernoulli likelihood alone, in a call of ``shape`` (slots, columns).

    The model's piecewise logits-and-likelihood (what the engine runs) minus the same pieces'
    logits alone (the bare pass computes the logits, not the likelihood); and, as the floor of
    any likelihood built from torch's CPU kernels, one in-place ``sigmoid_`` over the same
    pieces' logits (one pass, no reduction; torch.compile's fused logsigmoid-sum measured slower
    than evalkit's form here, 1.57 against 0.69 us per 784-pixel sample in cache).
    """
    slots, columns = shape
    data = x[torch.arange(slots) % len(x)]
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        # Samples of q(h1 | x), as in the engine: how many rows take the likelihood's slower
        # (split) form depends on how well the logits fit the data.
        mu, log_sigma = model.encoder_h1.params(data)
        eps = torch.randn(slots, columns, mu.shape[-1], generator=generator)
        h1 = mu.unsqueeze(1) + log_sigma.exp().unsqueeze(1) * eps

    def pieces(fn):
        return lambda: map_row_pieces(lambda h, _: fn(model.logits(h))[..., 0], h1, data, model.data_dim)

    variants = (lambda: model._log_likelihood(h1, data), pieces(torch.Tensor.sigmoid_), pieces(lambda t: t))
    with torch.inference_mode():
        for fn in variants:
            fn()  # warm-up
        times = [[timed(fn) for fn in variants] for _ in range(max(5 * repeats, 25))]
    likelihood, sigmoid, logits = (min(column) for column in zip(*times))
    return max(0.0, likelihood - logits) / (slots * columns), max(0.0, sigmoid - logits) / (slots * columns)


def print_budget(model, x, args, bare_us: float, streams_us: float, randn_us: float) -> None:
    """One row: what 0.85x the bare pass leaves for the work the bare pass omits, and what that work costs here."""
    shapes = call_shapes(model, x, args.k)
    padding = sum(slots * columns for slots, columns in shapes) / (len(x) * args.k) - 1
    allowance = (1 / 0.85 - 1) * bare_us
    likelihood, sigmoid = likelihood_cost(model, x, max(set(shapes), key=shapes.count), args.repeats)
    # Padded slots and columns run the whole network; cost them at the bare pass's rate.
    parts = {"likelihood": likelihood * 1e6, "noise streams over torch.randn": streams_us - randn_us,
             f"padding ({padding:.1%} more rows)": padding * bare_us}
    print(f"|   budget at 0.85x bare: {allowance:.2f} us/sample for all the bare pass omits; "
          + ", ".join(f"{name} {us:.2f}" for name, us in parts.items())
          + f": {sum(parts.values()):.2f} us before the densities, casts and float64 output "
          f"(one in-place sigmoid over the logits alone: {sigmoid * 1e6:.2f}) |" + " |" * 11)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def row_variants(model, plain, x, args, threads: int, device: torch.device) -> dict:
    """The timed variants of one row: name -> callable (engine and expert variants return their log-weights)."""
    variants = {"engine": lambda: evalkit.log_weights(model, x, args.k, seed=0, threads=threads,
                                                      device=device, progress=False)}
    if args.compile:
        variants["engine compile"] = lambda: evalkit.log_weights(
            model, x, args.k, seed=0, threads=threads, device=device, compile=True, progress=False)
    if args.tf32 and device.type == "cuda":
        variants["engine tf32"] = lambda: evalkit.log_weights(
            model, x, args.k, seed=0, threads=threads, device=device, tf32=True, progress=False)
    for r in BARE_ROWS if device.type == "cpu" else (2**17,):
        variants[f"bare {r}"] = lambda r=r: bare_pass(model, x, args.k, r, threads)
        variants[f"plain {r}"] = lambda r=r: bare_pass(plain, x, args.k, r, threads, plain=True)
    variants["expert workers"] = lambda: expert_pass(plain, x, args.k, threads, own=False)
    if threads > 1:
        variants["expert intra-op"] = lambda: expert_pass(plain, x, args.k, threads, own=False, workers=False)
    variants["own workers"] = lambda: expert_pass(model, x, args.k, threads, own=True)
    return variants


def keep_fastest_call_sizes(variants: dict, rounds: int = 2) -> dict:
    """Drop all but the fastest call size of the bare and plain passes (best of ``rounds`` scan runs each).

    Why a scan first: a variant timed at four call sizes gets four times the draws of the
    engine, and on a noisy machine the best of 20 runs is faster than the best of 5 of the
    same thing; after the scan every kept variant gets the same ``--repeats``.
    """
    scan = {key: fn for key, fn in variants.items() if key.split()[0] in ("bare", "plain")}
    for fn in scan.values():
        fn()  # warm-up
    best = {key: min(timed(fn) for _ in range(rounds)) for key, fn in scan.items()}
    fastest = {kind: min((key for key in best if key.startswith(kind)), key=best.get) for kind in ("bare", "plain")}
    return {key: fn for key, fn in variants.items() if key not in scan or key in fastest.values()}


def time_variants(variants: dict, repeats: int) -> tuple[dict, dict]:
    """Best seconds per variant over ``repeats`` interleaved runs (after a warm-up), and each one's last result."""
    results = {key: fn() for key, fn in variants.items()}  # warm-up (and compilation)
    best = {key: float("inf") for key in variants}
    for _ in range(repeats):
        for key, fn in variants.items():
            start = time.perf_counter()
            results[key] = fn()
            best[key] = min(best[key], time.perf_counter() - start)
    return best, results


def print_row(name, x, args, threads, best, results) -> float:
    """Print one table row (and the sanity check of the expert's log-weights); return the engine's samples/s."""
    rate = {key: len(x) * args.k / seconds for key, seconds in best.items()}
    fastest = {kind: max((key for key in rate if key.startswith(kind)), key=rate.get)
               for kind in ("bare", "plain", "expert", "own")}
    bare, plain, expert, own = (rate[fastest[kind]] for kind in ("bare", "plain", "expert", "own"))
    engine = rate["engine"]
    print(f"| {name} | {len(x)} x {args.k} | {threads} | {engine:,.0f} | {bare:,.0f} ({fastest['bare'].split()[1]}) "
          f"| **{engine / bare:.2f}** | {plain:,.0f} | {engine / plain:.2f} | {expert:,.0f} "
          f"({fastest['expert'].split(maxsplit=1)[1]}) | **{engine / expert:.2f}** | {own:,.0f} | {engine / own:.2f} |")
    for key in rate:
        if key.startswith("engine "):
            print(f"|   {key} | | {threads} | {rate[key]:,.0f} | | {rate[key] / bare:.2f} | | | | | | |")
    checks = []
    for label, key in (("expert", fastest["expert"]), ("expert own modules", "own workers")):
        ours, theirs, z = paired_iwae_check(results["engine"].cpu(), results[key].cpu())
        checks.append(f"{label} {theirs:.3f} (paired z {z:+.1f})")
    print(f"|   check: mean IWAE-{args.k} engine {ours:.3f}, " + ", ".join(checks) + " |" + " |" * 11)
    return engine


def print_paired(variants: dict, best: dict, rounds: int, threads: int) -> None:
    """Alternate the engine with the fastest bare and expert variants ``rounds`` times; print the per-round ratios' medians.

    Best-of-N figures of separate variants move by 10-20 % on a shared machine; the ratio of two
    runs made back to back sees nearly the same load, so its median over rounds is the steadier
    figure for a target near the line.
    """
    others = {kind: min((key for key in best if key.startswith(kind)), key=best.get) for kind in ("bare", "expert")}
    ratios = {kind: [] for kind in others}
    for _ in range(rounds):
        engine_s = timed(variants["engine"])
        for kind, key in others.items():
            ratios[kind].append(timed(variants[key]) / engine_s)
    cells = []
    for kind, values in ratios.items():
        low, _, high = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
        cells.append(f"engine / {kind} median {statistics.median(values):.2f} (quartiles {low:.2f}-{high:.2f})")
    print(f"|   paired, {rounds} rounds, {threads} thread(s): " + "; ".join(cells) + " |" + " |" * 11)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=1000, help="samples per datapoint (default 1000)")
    parser.add_argument("--n", type=int, default=128, help="datapoints of the MNIST-size models (default 128)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default 1 2)")
    parser.add_argument("--repeats", type=int, default=5, help="best of this many interleaved runs (default 5)")
    parser.add_argument("--paired", type=int, default=0, metavar="ROUNDS",
                        help="also alternate the engine with the bare and expert passes ROUNDS times and print the "
                             "medians of the per-round ratios (steadier on a shared machine; default off)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--compile", action="store_true", help="also time the engine with compile=True")
    parser.add_argument("--tf32", action="store_true", help="CUDA: also time the engine with tf32=True")
    args = parser.parse_args()
    device = torch.device(args.device)

    print_run_header(__file__)
    print("| model | N x K | threads | engine samples/s | bare samples/s (best rows) | engine / bare "
          "| bare torch.tanh samples/s | engine / bare torch.tanh | expert samples/s (scheme) | engine / expert "
          "| expert own modules samples/s | engine / expert own |")
    print("|" + "---|" * 12)
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, model, x in models(args.n):
            model = model.eval().to(device)
            x = x.to(device)
            torch.manual_seed(0)
            variants = keep_fastest_call_sizes(row_variants(model, with_torch_tanh(model), x, args, threads, device))
            best, results = time_variants(variants, args.repeats)
            engine = print_row(name, x, args, threads, best, results)
            if args.paired:
                print_paired(variants, best, args.paired, threads)
            if device.type == "cuda":
                print(f"# {name}: engine {best['engine']:.2f} s for {len(x)} x {args.k} on {device}")
            elif threads == 1:
                bare = len(x) * args.k / min(v for key, v in best.items() if key.startswith("bare"))
                streams, randn = noise_costs(model, len(x), args.k, args.repeats)
                print(f"|   noise alone: evalkit (per-datapoint streams, float64 -> float32) {streams * 1e6:.2f} us/sample, "
                      f"torch.randn {randn * 1e6:.2f} us/sample; engine {1e6 / engine:.2f}, bare "
                      f"{1e6 / bare:.2f} us/sample |" + " |" * 11)
                print_budget(model, x, args, 1e6 / bare, streams * 1e6, randn * 1e6)
            sys.stdout.flush()
    print(f"# {load_average()} (end)")


if __name__ == "__main__":
    main()
