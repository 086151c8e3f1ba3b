"""evalkit's engine against a reference-style evaluation loop: same model, same data, same K.

The reference loop is how common IWAE reference code evaluates log p(x): one datapoint at a
time, the datapoint expanded K times (so the encoder also runs K times), the model in
float64, ``torch.distributions`` densities, ``torch.randn`` noise, no chunking, then
``logsumexp(log_w) - log K``. It uses the networks as a plain module would (``nn.Tanh``).

Both sides run in this process with torch's default threads, interleaved, best of
``--repeats``. The reference loop runs on the first ``--n-reference`` datapoints only (it is
slow); rates are per datapoint, and the script extrapolates both to 10 000 datapoints. The
script also checks that both give the same mean IWAE-K on those datapoints (within 4 Monte
Carlo standard errors: the noise differs).

Run from the repository root::

    python benchmarks/bench_reference.py                       # K = 5000, CPU
    python benchmarks/bench_reference.py --device cuda --n 2000 --n-reference 20
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from torch.distributions import Bernoulli, Independent, Normal

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import load_average, models, print_run_header, with_torch_tanh  # noqa: E402

import evalkit  # noqa: E402


def reference_log_weights(model, x: torch.Tensor, k: int) -> torch.Tensor:
    """log w for one datapoint, the reference way: ``x`` repeated ``k`` times through the whole model."""
    x_rep = x.expand(k, -1)
    q = model.encoder_h1(x_rep)  # Normal, one row per sample
    h = [q.rsample()]
    log_q = q.log_prob(h[0]).sum(-1)
    for layer in range(1, len(model.latent_dims)):
        q = getattr(model, f"encoder_h{layer + 1}")(h[-1])
        h.append(q.rsample())
        log_q = log_q + q.log_prob(h[-1]).sum(-1)
    top = h[-1]
    log_p = Normal(torch.zeros_like(top), torch.ones_like(top)).log_prob(top).sum(-1)
    for layer in range(len(model.latent_dims) - 1):
        log_p = log_p + getattr(model, f"decoder_h{layer + 1}")(h[layer + 1]).log_prob(h[layer]).sum(-1)
    likelihood = Independent(Bernoulli(logits=model.decoder_x(h[0])), 1)
    return log_p + likelihood.log_prob(x_rep) - log_q


def reference_iwae(model, data: torch.Tensor, k: int) -> torch.Tensor:
    """IWAE-k per datapoint, one datapoint at a time (the reference evaluation loop)."""
    out = []
    with torch.no_grad():
        for x in data:
            log_w = reference_log_weights(model, x, k)
            out.append(torch.logsumexp(log_w, 0) - math.log(k))
    return torch.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--n", type=int, default=128, help="datapoints for evalkit (MNIST-size models)")
    parser.add_argument("--n-reference", type=int, default=16, help="datapoints for the reference loop")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    device = torch.device(args.device)

    print_run_header(__file__, machine_note=f"; torch threads {torch.get_num_threads()}")
    print("| model | K | evalkit datapoints/s | reference datapoints/s | evalkit / reference "
          "| 10 000 datapoints: evalkit s, reference s | mean IWAE evalkit, reference (same datapoints) |")
    print("|" + "---|" * 7)
    for name, model, x in models(args.n):
        model = model.eval().to(device)
        x = x.to(device)
        reference_model = with_torch_tanh(model).double()
        x_reference = x[: args.n_reference].double()
        torch.manual_seed(0)
        n_engine = len(x)

        def run_engine():
            return evalkit.log_weights(model, x, args.k, seed=0, device=device, progress=False)

        def run_reference():
            result = reference_iwae(reference_model, x_reference, args.k)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return result

        engine_log_w, reference_values = run_engine(), run_reference()  # warm-up, and the values compared
        best_engine = best_reference = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            run_engine()
            best_engine = min(best_engine, time.perf_counter() - start)
            start = time.perf_counter()
            run_reference()
            best_reference = min(best_reference, time.perf_counter() - start)
        engine_rate, reference_rate = n_engine / best_engine, args.n_reference / best_reference
        iwae = torch.logsumexp(engine_log_w[: args.n_reference], 1) - math.log(args.k)
        # Monte Carlo SE of IWAE-K per datapoint from the normalised weights' variance.
        weights = torch.softmax(engine_log_w[: args.n_reference], 1) * args.k
        se = float(torch.sqrt((weights.var(1) / args.k).sum()) / args.n_reference)
        diff = float(iwae.mean() - reference_values.mean().cpu())
        agree = "agree" if abs(diff) < 4 * math.sqrt(2) * se else "DIFFER"
        print(f"| {name} | {args.k} | {engine_rate:,.1f} | {reference_rate:,.2f} | **{engine_rate / reference_rate:.1f}x** "
              f"| {10_000 / engine_rate:,.0f}, {10_000 / reference_rate:,.0f} "
              f"| {float(iwae.mean()):.3f}, {float(reference_values.mean()):.3f} ({agree}, MC SE {se:.3f}) |")
        sys.stdout.flush()
    print(f"# {load_average()} (end)")


if __name__ == "__main__":
    main()
