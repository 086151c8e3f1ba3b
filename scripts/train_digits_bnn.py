"""Train the bundled Bayes-by-backprop example: a 64-50-10 classifier on scikit-learn's 8x8 digits.

    python scripts/train_digits_bnn.py            # writes examples/digits_bnn.pt

:class:`~evalkit.models.BayesianMLP` (ReLU), scale-mixture prior pi = 0.5, sigma1 = 1,
sigma2 = exp(-6), trained on the digits train split (1438 images, pixels / 16) by minimising the
minibatch free energy of Blundell et al. (2015), eq. (8)-(9):
``F_i = pi_i (log q(w) - log P(w)) - log p(D_i | w)`` with one weight sample per step and the
paper's weighting ``pi_i = 2^(M-i) / (2^M - 1)`` over the M minibatches of an epoch (early
minibatches carry most of the complexity cost; sum_i pi_i = 1, so an epoch counts the KL once).

Seeded, single-threaded, on the CPU in about a minute; bitwise reproducibility across machines is
not promised (BLAS kernels differ).
"""
from __future__ import annotations

import argparse
import time

import torch

import evalkit
from evalkit.data import load_labelled_data
from evalkit.models import BayesianMLP
from evalkit.models.bnn_priors import ScaleMixturePrior


def free_energy(model: BayesianMLP, x: torch.Tensor, y: torch.Tensor, kl_weight: float) -> torch.Tensor:
    """One-sample minibatch free energy ``kl_weight * (log q(w) - log P(w)) - sum log p(y | x, w)``."""
    noise = torch.randn(1, model.n_params, dtype=torch.float64)
    weights = model.weights_from_noise(noise)
    complexity = model.log_q_from_noise(noise) - model.log_prior(weights)
    log_lik = model.log_likelihood(model.forward_weights(x, [(w.float(), b.float()) for w, b in weights]), y)
    return kl_weight * complexity.squeeze(0) - log_lik.sum().double()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="examples/digits_bnn.pt")
    parser.add_argument("--hidden", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    x, y = load_labelled_data("digits", split="train")
    prior = ScaleMixturePrior(pi=0.5, sigma1=1.0, sigma2=float(torch.tensor(-6.0).exp()))
    model = BayesianMLP([64, args.hidden, 10], activation="relu", likelihood="categorical", prior=prior, init_rho=-5.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    n_batches = -(-len(x) // args.batch_size)
    kl_weights = [2.0 ** (n_batches - i) / (2.0**n_batches - 1) for i in range(1, n_batches + 1)]
    started = time.perf_counter()
    for epoch in range(args.epochs):
        order = torch.randperm(len(x))
        total = 0.0
        for i in range(n_batches):
            rows = order[i * args.batch_size:(i + 1) * args.batch_size]
            loss = free_energy(model, x[rows], y[rows], kl_weights[i])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        if epoch % 50 == 0 or epoch == args.epochs - 1:
            print(f"epoch {epoch:4d}  free energy {total:10.2f}  ({time.perf_counter() - started:.0f} s)")
    model.eval()
    path = evalkit.save_model(model, args.output, overwrite=args.overwrite)
    print(f"wrote {path} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
