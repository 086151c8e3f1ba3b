"""Chain-steps per second of evalkit's AIS against a reference-style loop, on the same model.

The reference style is the layout of the widely copied PyTorch BDMC code (lxuechen/BDMC,
``ais.py`` / ``hmc.py``): one batch of datapoints x chains at a time, a Python loop over the
schedule, per step two log-density evaluations for the weight update, ``L + 1`` gradients by
``torch.autograd.grad`` for the leapfrog trajectory, two more evaluations of U for the
accept/reject test, and a per-chain step size adapted from its acceptance history. evalkit
does ``L`` gradient evaluations per transition and nothing else (the end point's density and
gradient carry over; the weight update re-uses the kept endpoint densities).

Both run the same model, n datapoints, steps, chains, leapfrog steps and initial distribution (the prior,
as the reference does), in float32; first on one core (one intra-op thread each), then on all the
cores torch uses by default (the reference with that many intra-op threads, as it would run;
evalkit with as many worker threads, its default). Run:
``python benchmarks/bench_ais.py [--steps 50] [--chains 16] [--n 64]``.
"""
from __future__ import annotations

import argparse
import math
import platform
import time

import torch

import evalkit
from evalkit.models import IWAE
from evalkit.sampling.ais import ais_run


def reference_ais(model, x, *, steps, chains, leapfrog, batch_size):
    """The reference code's control flow, with the model's prior and likelihood as its log-densities."""
    schedule = torch.linspace(0.0, 1.0, steps + 1).tolist()
    out = []
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size].repeat_interleave(chains, 0)
        n_rows = batch.shape[0]
        epsilon = torch.full((n_rows,), 0.01)
        accept_hist = torch.zeros(n_rows)
        logw = torch.zeros(n_rows)
        z = model.prior().sample((n_rows,)).requires_grad_()

        def log_f(z, t):
            return model.prior().log_prob(z) + t * model.likelihood(z.unsqueeze(1)).log_prob(batch.unsqueeze(1)).squeeze(1)

        for j, (t0, t1) in enumerate(zip(schedule[:-1], schedule[1:]), 1):
            logw = logw + (log_f(z, t1) - log_f(z, t0)).detach()
            if j == steps:
                break

            def U(z):
                return -log_f(z, t1)

            def grad_U(z):
                grad = torch.autograd.grad(U(z), z, grad_outputs=torch.ones(n_rows))[0]
                return grad.clamp(-n_rows * z.shape[1] * 100, n_rows * z.shape[1] * 100)  # as the reference does

            v0 = torch.randn_like(z)
            eps = epsilon.view(-1, 1)
            zp, v = z, v0 - 0.5 * eps * grad_U(z)
            for i in range(1, leapfrog + 1):
                zp = (zp + eps * v).detach().requires_grad_()
                if i < leapfrog:
                    v = v - eps * grad_U(zp)
            v = -(v - 0.5 * eps * grad_U(zp))
            # The reference evaluates both Hamiltonians with autograd recording, as here.
            h0 = U(z) + 0.5 * (v0 * v0).sum(1)
            h1 = U(zp) + 0.5 * (v * v).sum(1)
            with torch.no_grad():
                accept = (torch.rand(n_rows) < torch.exp(h0 - h1).clamp(max=1)).float()
                z = (zp * accept[:, None] + z * (1 - accept[:, None])).detach()
                accept_hist += accept
                up = (accept_hist / j > 0.65).float()
                epsilon = (epsilon * (1.02 * up + 0.98 * (1 - up))).clamp(1e-4, 0.5)
            z.requires_grad_()
        out.append(logw.view(-1, chains))
    return torch.cat(out)


def gradient_cost(model, x, chains):
    """Time of log_joint with its gradient (autograd; evalkit's path) over log_joint alone, on ``len(x) * chains`` rows."""
    z = model.prior().sample((len(x), chains))

    def forward():
        with torch.no_grad():
            model.log_joint(x, z)

    def backward():
        zz = z.detach().requires_grad_()
        torch.autograd.grad(model.log_joint(x, zz).sum(), zz)

    def fast():
        with torch.no_grad():
            model.log_joint_and_grad(x, z)

    times = []
    for fn in (forward, backward, fast):
        fn()
        start = time.perf_counter()
        for _ in range(20):
            fn()
        times.append(time.perf_counter() - start)
    return times[1] / times[0], times[2] / times[0]


def bench(name, model, x, args, threads):
    """Interleaved best-of-``repeats`` times at ``threads`` cores; print chain-steps per second and the ratios.

    The reference runs once per batch size of ``args.reference_batches`` (datapoints per batch):
    the copied code's default is 100 datapoints x 100 chains per batch, so with ``n <= 100``
    the largest setting runs all the data in one batch, like evalkit's calls.
    """
    chain_steps = len(x) * args.chains * (args.steps - 1)
    t_ref = {batch: math.inf for batch in args.reference_batches}
    t_ours = math.inf
    for _ in range(args.repeats):  # interleaved, best of each: the machine is shared
        torch.set_num_threads(threads)
        for batch in args.reference_batches:
            torch.manual_seed(0)
            start = time.perf_counter()
            reference_ais(model, x, steps=args.steps, chains=args.chains, leapfrog=args.leapfrog, batch_size=batch)
            t_ref[batch] = min(t_ref[batch], time.perf_counter() - start)
        start = time.perf_counter()
        ais_run(model, x, steps=args.steps, chains=args.chains, leapfrog=args.leapfrog, init="prior", progress=False,
                device="cpu", threads=threads)
        t_ours = min(t_ours, time.perf_counter() - start)
    torch.set_num_threads(1)
    autograd_cost, evalkit_cost = gradient_cost(model, x[:16], args.chains)
    references = "   ".join(f"reference ({batch:3d}/batch) {chain_steps / t:8.0f} -> ratio {t / t_ours:5.2f}x"
                           for batch, t in t_ref.items())
    print(f"{name:34s} {threads} core{'s' if threads > 1 else ' '}  evalkit {chain_steps / t_ours:8.0f} chain-steps/s   "
          f"{references}   value+gradient = {autograd_cost:.2f} x forward (autograd), {evalkit_cost:.2f} x (evalkit's "
          "written-out backward)", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--chains", type=int, default=16)
    parser.add_argument("--leapfrog", type=int, default=5)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-batches", type=lambda text: [int(b) for b in text.split(",")], default=[16, 100],
                        help="datapoints per reference batch, comma-separated (default 16,100; the copied code uses 100)")
    args = parser.parse_args()
    cores = torch.get_num_threads()
    print(f"bench_ais: {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 and {cores} cores, float32, "
          f"steps={args.steps}, chains={args.chains}, leapfrog={args.leapfrog}, n={args.n}, "
          f"reference batches={args.reference_batches} datapoints (evalkit: its default plan), best of {args.repeats}")
    digits = evalkit.load_model("examples/digits_iwae.pt").float()
    x = evalkit.data.load_data("digits", split="test", binarize="bernoulli")[: args.n]
    torch.manual_seed(0)
    burda = IWAE.burda_one_layer()
    x784 = (torch.rand(args.n, 784) < 0.3).float()
    for threads in sorted({1, cores}):
        bench("digits_iwae.pt (64-100-100-8)", digits, x, args, threads)
        bench("IWAE.burda_one_layer (784, random)", burda, x784, args, threads)


if __name__ == "__main__":
    main()
