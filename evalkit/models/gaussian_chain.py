"""A Markov chain of diagonal Gaussians over concatenated blocks, as one torch Distribution.

The IWAE paper's models with several stochastic layers have hierarchical proposals and priors,
``q(h_1 | x) q(h_2 | h_1) ...`` and ``p(h_L) p(h_{L-1} | h_L) ...``, over ``z = (h_1, ..., h_L)``.
AIS needs their log-density (differentiable) and samples made from standard-normal noise;
this class gives both without a new class per model.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from .densities import normal_log_density

Conditional = Callable[[Tensor], tuple[Tensor, Tensor]]


class GaussianChain(Distribution):
    """``prod_i N(z_{order[i]}; mu_i, exp(log_sigma_i)^2)`` with ``(mu_i, log_sigma_i)`` from the previous block.

    Parameters
    ----------
    dims : sequence of int
        Widths of the blocks of ``z`` (``z = concat(blocks)`` along the last dimension).
    order : sequence of int
        Order in which the blocks are generated (a permutation of ``range(len(dims))``).
    loc, log_scale : Tensor, shape (*batch, dims[order[0]])
        The first block's diagonal Gaussian (log standard deviation).
    conditionals : sequence of callables
        ``conditionals[i](z_{order[i]}) -> (mu, log_sigma)`` of block ``order[i + 1]``; they act
        row-wise on any leading shape.

    Notes
    -----
    ``log_prob`` is the full normalised log-density summed over every block, in the input's
    dtype; it broadcasts like a torch Distribution (sample dimensions on the left).
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, dims: Sequence[int], order: Sequence[int], loc: Tensor, log_scale: Tensor,
                 conditionals: Sequence[Conditional]) -> None:
        self.dims = [int(d) for d in dims]
        self.order = [int(i) for i in order]
        self.loc, self.log_scale = loc, log_scale
        self.conditionals = list(conditionals)
        super().__init__(loc.shape[:-1], torch.Size([sum(self.dims)]), validate_args=False)

    def expand(self, batch_shape, _instance=None) -> "GaussianChain":
        shape = torch.Size(batch_shape) + self.loc.shape[-1:]
        return GaussianChain(self.dims, self.order, self.loc.expand(shape), self.log_scale.expand(shape),
                             self.conditionals)

    def log_prob(self, value: Tensor) -> Tensor:
        blocks = value.split(self.dims, dim=-1)
        first = blocks[self.order[0]]
        log_p = normal_log_density(first, self.loc, self.log_scale)
        for i, conditional in enumerate(self.conditionals):
            mu, log_sigma = conditional(blocks[self.order[i]])
            log_p = log_p + normal_log_density(blocks[self.order[i + 1]], mu, log_sigma)
        return log_p

    def log_prob_and_grad(self, value: Tensor):
        """Return ``log_prob(value)`` and its gradient in ``value`` for a single block, else None (use autograd).

        With ``u = (value - mu) exp(-log_sigma)`` the gradient is ``-u exp(-log_sigma)``, computed
        in the order autograd differentiates :func:`~evalkit.models.densities.normal_log_density`
        (``-0.5 u + -0.5 u = -u`` exactly), so the bits are autograd's.
        """
        if len(self.dims) != 1:
            return None
        inverse_scale = torch.exp(-self.log_scale)
        standardised = (value - self.loc) * inverse_scale
        return self.log_prob(value), -standardised * inverse_scale

    def from_noise(self, noise: Tensor) -> Tensor:
        """Return ``z`` from standard-normal ``noise`` of shape ``(*batch, C, sum(dims))``."""
        eps = noise.split(self.dims, dim=-1)
        loc, log_scale = self.loc.unsqueeze(-2), self.log_scale.unsqueeze(-2)
        blocks: list = [None] * len(self.dims)
        blocks[self.order[0]] = loc + log_scale.exp() * eps[self.order[0]]
        for i, conditional in enumerate(self.conditionals):
            mu, log_sigma = conditional(blocks[self.order[i]])
            blocks[self.order[i + 1]] = mu + log_sigma.exp() * eps[self.order[i + 1]]
        return torch.cat(blocks, dim=-1)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        shape = torch.Size(sample_shape)
        noise = torch.randn(self.batch_shape + shape + self.event_shape, dtype=self.loc.dtype, device=self.loc.device)
        flat = noise.reshape(self.batch_shape + (shape.numel(),) + self.event_shape)
        z = self.from_noise(flat).reshape(self.batch_shape + shape + self.event_shape)
        return z.movedim(tuple(range(len(self.batch_shape))), tuple(range(len(shape), len(shape) + len(self.batch_shape))))


__all__ = ["GaussianChain"]
