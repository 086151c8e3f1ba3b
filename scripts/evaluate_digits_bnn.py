"""Evaluate the bundled Bayes-by-backprop example: accuracy, predictive and evidence estimates at K.

    python scripts/evaluate_digits_bnn.py [--model examples/digits_bnn.pt] [-k 1000]

Prints the test accuracy of the predictive mean, the test-split mean log p(y | x) (IWAE, JVI-1,
JVI-2, DVI over K shared weight samples, with the shared-column jackknife MC SE beside the
independent-rows formula), and log p(D_train) (ELBO, IWAE, JVI-1 over K weight samples with the
PSIS k-hat of those K weights), each with the time it took.
"""
from __future__ import annotations

import argparse
import math
import time

import torch

import evalkit
from evalkit.data import load_labelled_data
from evalkit.estimators import get, iwae_mc_variance, psis_khat
from evalkit.sampling.bnn_weights import evidence_log_weights, predictive_log_likelihoods
from evalkit.estimators.shared_columns import independent_rows_mc_se, shared_column_mc_se


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="examples/digits_bnn.pt")
    parser.add_argument("-k", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = evalkit.load_model(args.model)
    x, y = load_labelled_data("digits", split="test")
    started = time.perf_counter()
    log_p = predictive_log_likelihoods(model, x, y, k=args.k, seed=args.seed)
    took = time.perf_counter() - started
    accuracy = _accuracy(model, x, y, args.k, args.seed)
    print(f"test split: N = {len(y)}, K = {args.k} weight samples, seed = {args.seed}, {took:.2f} s")
    print(f"accuracy of the predictive mean: {accuracy:.4f}")
    print(f"{'estimator':>9} {'mean log p(y|x)':>16} {'se_data':>8} {'se_mc(shared)':>14} {'se_mc(indep rows)':>18}")
    for name in ("elbo", "iwae", "jvi1", "jvi2", "dvi"):
        values = torch.as_tensor(get(name)(log_p))
        se_data = float(values.std() / math.sqrt(len(values)))
        naive = independent_rows_mc_se(get(name).mc_variance(log_p))
        print(f"{name:>9} {float(values.mean()):16.4f} {se_data:8.4f} {shared_column_mc_se(log_p, name):14.4f} {naive:18.4f}")
    x_train, y_train = load_labelled_data("digits", split="train")
    started = time.perf_counter()
    log_w = evidence_log_weights(model, x_train, y_train, k=args.k, seed=args.seed)
    took = time.perf_counter() - started
    print(f"train split evidence: N = {len(y_train)}, K = {args.k}, {took:.2f} s; "
          f"PSIS k-hat of the K weights = {float(psis_khat(log_w)[0]):.2f} (> 0.7: the MC SEs below are not trustworthy)")
    for name in ("elbo", "iwae", "jvi1"):
        value = float(get(name)(log_w)[0])
        se = math.sqrt(float(get(name).mc_variance(log_w)[0]))
        print(f"{name:>9} log p(D) = {value:12.2f}  (MC SE {se:.2f})")


def _accuracy(model, x, y, k, seed) -> float:
    """Accuracy of argmax_c (1/K) sum_k p(c | x, w_k), the predictive mean over the same K samples."""
    from evalkit.sampling.bnn_weights import weight_noise

    with torch.inference_mode():
        log_mean = None
        for k0 in range(0, k, 100):
            noise = weight_noise(seed, k0, min(k, k0 + 100), model.n_params)
            weights = [(w.float(), b.float()) for w, b in model.weights_from_noise(noise)]
            log_probs = torch.log_softmax(model.forward_weights(x, weights), -1).double()
            chunk = torch.logsumexp(log_probs, 0)
            log_mean = chunk if log_mean is None else torch.logaddexp(log_mean, chunk)
        correct = (log_mean.argmax(1) == y).double()
    return float(correct.mean())


if __name__ == "__main__":
    main()
