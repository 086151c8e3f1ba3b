"""Closed forms for Bayesian linear regression with a diagonal Gaussian q (oracle for the BNN tests).

Model: ``y_n = x~_n^T w + e_n``, ``e_n ~ N(0, s^2)``, ``x~ = [x, 1]`` (the bias is the last
weight, as a one-layer :class:`BayesianMLP` lays out its noise: weight row-major, then bias),
prior ``w ~ N(0, a^2 I)``, variational ``q(w) = N(m, diag(v))`` (not the posterior).

* ``log p(D) = log N(y; 0, s^2 I + a^2 X~ X~^T)`` (w integrated out);
* ``E_q[log p(D|w) + log P(w) - log q(w)]`` (the ELBO's expectation):
  ``sum_n [-log(2 pi s^2)/2 - ((y_n - x~_n^T m)^2 + sum_j x~_nj^2 v_j) / (2 s^2)]
  + sum_j [-log(2 pi a^2)/2 - (m_j^2 + v_j) / (2 a^2)] + sum_j [log(2 pi v_j)/2 + 1/2]``;
* ``log E_q[p(y*|x*, w)] = log N(y*; x~*^T m, s^2 + sum_j x~*_j^2 v_j)``
  (x~*^T w is Gaussian under q; a Gaussian convolution);
* ``E_q[log p(y*|x*, w)] = -log(2 pi s^2)/2 - ((y* - x~*^T m)^2 + sum_j x~*_j^2 v_j) / (2 s^2)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from evalkit.models.bnn import BayesianMLP, GaussianPrior

LOG_2PI = math.log(2 * math.pi)


@dataclass
class Problem:
    x: np.ndarray        # [N, D] training inputs
    y: np.ndarray        # [N]
    x_test: np.ndarray   # [M, D]
    y_test: np.ndarray   # [M]
    s: float             # noise standard deviation
    a: float             # prior standard deviation
    m: np.ndarray        # [D + 1] q mean (weights, then bias)
    v: np.ndarray        # [D + 1] q variances

    @staticmethod
    def tilde(x: np.ndarray) -> np.ndarray:
        return np.column_stack([x, np.ones(len(x))])

    def posterior(self) -> tuple[np.ndarray, np.ndarray]:
        xt = self.tilde(self.x)
        precision = xt.T @ xt / self.s**2 + np.eye(xt.shape[1]) / self.a**2
        cov = np.linalg.inv(precision)
        return cov @ xt.T @ self.y / self.s**2, cov

    def log_evidence(self) -> float:
        xt = self.tilde(self.x)
        cov = self.s**2 * np.eye(len(self.y)) + self.a**2 * xt @ xt.T
        _, logdet = np.linalg.slogdet(cov)
        return float(-0.5 * (len(self.y) * LOG_2PI + logdet + self.y @ np.linalg.solve(cov, self.y)))

    def elbo(self) -> float:
        xt = self.tilde(self.x)
        resid = (self.y - xt @ self.m) ** 2 + (xt**2) @ self.v
        likelihood = np.sum(-0.5 * math.log(2 * math.pi * self.s**2) - resid / (2 * self.s**2))
        prior = np.sum(-0.5 * math.log(2 * math.pi * self.a**2) - (self.m**2 + self.v) / (2 * self.a**2))
        entropy = np.sum(0.5 * np.log(2 * math.pi * self.v) + 0.5)
        return float(likelihood + prior + entropy)

    def log_predictive(self) -> np.ndarray:
        xt = self.tilde(self.x_test)
        var = self.s**2 + (xt**2) @ self.v
        return -0.5 * (LOG_2PI + np.log(var) + (self.y_test - xt @ self.m) ** 2 / var)

    def expected_log_likelihood(self) -> np.ndarray:
        xt = self.tilde(self.x_test)
        resid = (self.y_test - xt @ self.m) ** 2 + (xt**2) @ self.v
        return -0.5 * math.log(2 * math.pi * self.s**2) - resid / (2 * self.s**2)

    def evidence_log_weights(self, w: np.ndarray) -> np.ndarray:
        """``log p(D|w) + log P(w) - log q(w)`` for weights ``w [S, D + 1]`` (brute force)."""
        xt = self.tilde(self.x)
        pred = w @ xt.T
        log_lik = np.sum(-0.5 * math.log(2 * math.pi * self.s**2) - (self.y - pred) ** 2 / (2 * self.s**2), axis=1)
        log_prior = np.sum(-0.5 * math.log(2 * math.pi * self.a**2) - w**2 / (2 * self.a**2), axis=1)
        log_q = np.sum(-0.5 * np.log(2 * math.pi * self.v) - (w - self.m) ** 2 / (2 * self.v), axis=1)
        return log_lik + log_prior - log_q

    def predictive_log_likelihoods(self, w: np.ndarray) -> np.ndarray:
        """``log p(y*_n | x*_n, w_k)``, shape [M, S] (brute force)."""
        pred = self.tilde(self.x_test) @ w.T
        return -0.5 * math.log(2 * math.pi * self.s**2) - (self.y_test[:, None] - pred) ** 2 / (2 * self.s**2)

    def model(self) -> BayesianMLP:
        d = self.x.shape[1]
        net = BayesianMLP([d, 1], likelihood="gaussian", noise_scale=self.s, prior=GaussianPrior(self.a)).double()
        rho = np.log(np.expm1(np.sqrt(self.v)))
        with torch.no_grad():
            layer = net.layers[0]
            layer.weight_mu.copy_(torch.from_numpy(self.m[:d]).view(1, d))
            layer.bias_mu.copy_(torch.from_numpy(self.m[d:]))
            layer.weight_rho.copy_(torch.from_numpy(rho[:d]).view(1, d))
            layer.bias_rho.copy_(torch.from_numpy(rho[d:]))
        return net.eval()

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(a) for a in (self.x, self.y, self.x_test, self.y_test))


def make_problem(*, n: int = 12, d: int = 2, n_test: int = 8, seed: int = 0, scale: float = 1.5, shift: float = 0.5) -> Problem:
    """A regression problem and a q that is the posterior's diagonal, widened by ``scale`` and moved by ``shift`` SDs."""
    rng = np.random.default_rng(seed)
    s, a = 0.5, 1.0
    w_true = rng.normal(size=d + 1)
    x = rng.normal(size=(n, d))
    y = Problem.tilde(x) @ w_true + s * rng.normal(size=n)
    x_test = rng.normal(size=(n_test, d))
    y_test = Problem.tilde(x_test) @ w_true + s * rng.normal(size=n_test)
    problem = Problem(x, y, x_test, y_test, s, a, np.zeros(d + 1), np.ones(d + 1))
    mean, cov = problem.posterior()
    sd = np.sqrt(np.diag(cov))
    problem.m = mean + shift * sd * np.where(np.arange(d + 1) % 2 == 0, 1.0, -1.0)
    problem.v = scale * np.diag(cov)
    # Finite variance of the evidence weights p(D, w) / q(w): 2 Sigma_post^-1 - V^-1 positive definite.
    assert np.linalg.eigvalsh(2 * np.linalg.inv(cov) - np.diag(1 / problem.v)).min() > 0
    return problem
