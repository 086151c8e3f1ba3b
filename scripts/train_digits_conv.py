"""Train the bundled image example: a convolutional VAE on the digits' 17 grey levels.

    python scripts/train_digits_conv.py            # writes examples/digits_conv_vae.pt

The model is evalkit's built-in :class:`~evalkit.models.ConvVAE` (two stride-2 convolutions
with 32 and 64 feature maps, latent dimension 8, mirrored transposed convolutions) with a
discretised-logistic decoder over the 17 values 0..16 of scikit-learn's 8x8 digits, trained
with the IWAE bound at k = 5 on the train split (integer images from
``evalkit.data.load_images("digits", split="train")``). Evaluate it on the test split with
``evalkit.estimate(model, evalkit.data.load_images("digits"), k=1000)``.

Training runs on one CPU thread in about three minutes and is seeded; bitwise
reproducibility across machines is not promised (BLAS kernels differ).
"""
from __future__ import annotations

import argparse
import math
import time

import torch

import evalkit
from evalkit.data import load_images
from evalkit.models import ConvVAE


def iwae_bound(model: ConvVAE, x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over the batch of the IWAE-k bound, log mean_i w_i, differentiable in the parameters."""
    noise = torch.randn(x.shape[0], k, *model.noise_shape)
    log_w = model.log_weights(x, noise)
    return (torch.logsumexp(log_w, dim=1) - math.log(k)).mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="examples/digits_conv_vae.pt")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--k", type=int, default=5, help="importance samples in the training bound")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (1 is fastest for these small convolutions)")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    images = load_images("digits", split="train")  # uint8 [1438, 1, 8, 8], values 0..16
    train = images.reshape(images.shape[0], -1).float()  # the engine's layout: [N, C*H*W]
    model = ConvVAE(image_shape=images.shape[1:], latent_dim=8, channels=(32, 64), decoder="logistic", levels=17)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    started = time.perf_counter()
    for epoch in range(args.epochs):
        order = torch.randperm(train.shape[0])
        total = 0.0
        for start in range(0, train.shape[0], args.batch_size):
            batch = train[order[start:start + args.batch_size]]
            loss = -iwae_bound(model, batch, args.k)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * batch.shape[0]
        schedule.step()
        if epoch % 10 == 0 or epoch == args.epochs - 1:
            print(f"epoch {epoch:4d}  train IWAE-{args.k} {-total / train.shape[0]:9.3f} nats  "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    evalkit.save_model(model.eval(), args.output, overwrite=True)
    print(f"saved {args.output} after {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
