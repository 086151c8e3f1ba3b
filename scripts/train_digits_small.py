"""Train the second bundled example: a smaller IWAE on the digits, to compare with examples/digits_iwae.pt.

    python scripts/train_digits_small.py              # writes examples/digits_iwae_small.pt

The same recipe as ``scripts/train_digits_example.py`` (IWAE bound at k = 10, dynamic
binarisation, Adam with a cosine schedule, seeded, one CPU thread), with one stochastic layer of
the same 8 latent dimensions but 50-unit hidden layers instead of 100 (64-50-50-8 encoder,
mirrored decoder) and 500 epochs instead of 800. Same latent size means the same noise shape,
so ``evalkit compare`` evaluates both models on common random numbers (README, "Comparing
models"). It runs in about 40 s on one core and the checkpoint is about 60 kB.
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from evalkit.data import load_data  # noqa: E402
from evalkit.models import IWAE  # noqa: E402
from train_digits_example import train_and_save, training_arguments  # noqa: E402


def main() -> None:
    parser = training_arguments(__doc__.splitlines()[0], output="examples/digits_iwae_small.pt", epochs=500)
    parser.add_argument("--hidden", type=int, default=50, help="units in each hidden layer")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # small matrices: one thread is faster and makes the run repeatable
    train = load_data("digits", split="train")
    model = IWAE(data_dim=train.shape[1], latent_dims=[8], encoder_hidden_dims=[[args.hidden, args.hidden]])
    train_and_save(model, train, args)


if __name__ == "__main__":
    main()
