"""Train the bundled example: an IWAE on scikit-learn's 8x8 digits, saved as an evalkit checkpoint.

    python scripts/train_digits_example.py            # writes examples/digits_iwae.pt

The model is evalkit's built-in :class:`~evalkit.models.IWAE` with one stochastic layer
(64-100-100-8 encoder, mirrored Bernoulli decoder), trained with the IWAE bound (Burda et al.
2016) at k = 10 on the digits train split, dynamically binarised (a fresh Bernoulli draw of every
image each epoch). Evaluate it on the test split with ``--binarize bernoulli``.

Training runs on the CPU in about a minute and is seeded; bitwise reproducibility across
machines is not promised (BLAS kernels differ), numbers to a few hundredths of a nat are.
"""
from __future__ import annotations

import argparse
import math
import time

import torch

import evalkit
from evalkit.data import load_data
from evalkit.models import IWAE


def iwae_bound(model: IWAE, x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over the batch of the IWAE-k bound, log mean_i w_i, differentiable in the parameters."""
    noise = torch.randn(x.shape[0], k, *model.noise_shape)
    log_w = model.log_weights(x, noise)
    return (torch.logsumexp(log_w, dim=1) - math.log(k)).mean()


def train_and_save(model: IWAE, train: torch.Tensor, args: argparse.Namespace) -> None:
    """The recipe: the IWAE-``args.k`` bound, dynamic binarisation (a new draw each epoch), Adam
    with a cosine schedule over ``args.epochs``; then ``args.output``. The second bundled model
    (scripts/train_digits_small.py) is trained by this same function."""
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    started = time.perf_counter()
    for epoch in range(args.epochs):
        binary = torch.bernoulli(train)  # dynamic binarisation: a new draw each epoch
        order = torch.randperm(binary.shape[0])
        total = 0.0
        for start in range(0, binary.shape[0], args.batch_size):
            batch = binary[order[start:start + args.batch_size]]
            loss = -iwae_bound(model, batch, args.k)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += -loss.item() * batch.shape[0]
        schedule.step()
        if epoch % 50 == 0 or epoch == args.epochs - 1:
            print(f"epoch {epoch:4d}  train IWAE-{args.k} {total / binary.shape[0]:.3f}  "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    model.eval()
    evalkit.save_model(model, args.output, overwrite=True)
    print(f"saved {args.output}")


def training_arguments(description: str, *, output: str, epochs: int) -> argparse.ArgumentParser:
    """The command line of a digits IWAE training script: output file, epochs, k, batch size, lr, seed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--output", default=output)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--k", type=int, default=10, help="importance samples in the training bound")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main() -> None:
    parser = training_arguments(__doc__.splitlines()[0], output="examples/digits_iwae.pt", epochs=800)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    # Small matrices: one thread is faster than several and makes the run repeatable.
    torch.set_num_threads(1)
    train = load_data("digits", split="train")  # grey levels in [0, 1]
    model = IWAE(data_dim=train.shape[1], latent_dims=[8], encoder_hidden_dims=[[100, 100]])
    train_and_save(model, train, args)


if __name__ == "__main__":
    main()
