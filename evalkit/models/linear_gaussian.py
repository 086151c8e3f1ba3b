"""A linear-Gaussian latent model (factor analysis) with an exact marginal likelihood."""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal

from ..errors import InputError
from .base import EncoderDecoderModel, standard_normal_prior


class LinearGaussianModel(EncoderDecoderModel):
    """Factor analysis with an explicit Gaussian proposal.

    .. math::

        z \\sim \\mathcal{N}(0, I_d), \\qquad
        x \\mid z \\sim \\mathcal{N}(W z + b, \\operatorname{diag}\\psi), \\qquad
        q(z \\mid x) = \\mathcal{N}(A x + c,\\; L L^\\top),

    so that :math:`p(x) = \\mathcal{N}(x;\\, b,\\, W W^\\top + \\operatorname{diag}\\psi)` exactly
    (:meth:`log_marginal`). By default ``q`` is the exact posterior

    .. math::

        \\Sigma = (I + W^\\top \\Psi^{-1} W)^{-1}, \\quad A = \\Sigma W^\\top \\Psi^{-1}, \\quad
        c = -A b, \\quad L = \\operatorname{chol}(\\Sigma),

    for which every log-weight equals ``log p(x)``; pass ``proposal_*`` (or use
    :meth:`with_proposal`) for an imperfect ``q``.

    Parameters
    ----------
    weight : Tensor, shape (D, d)
    bias : Tensor, shape (D,)
    noise_variance : Tensor, shape (D,)
        psi, positive.
    proposal_weight : Tensor, shape (d, D), optional
    proposal_bias : Tensor, shape (d,), optional
    proposal_scale_tril : Tensor, shape (d, d), optional
        Lower-triangular with positive diagonal. Give all three proposal tensors or none.

    Notes
    -----
    All tensors are stored as buffers in the dtype of ``weight``; the engine casts a copy to
    its compute dtype.
    """

    requires_binary_data = False

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor,
        noise_variance: Tensor,
        *,
        proposal_weight: Optional[Tensor] = None,
        proposal_bias: Optional[Tensor] = None,
        proposal_scale_tril: Optional[Tensor] = None,
    ) -> None:
        super().__init__()
        weight = torch.as_tensor(weight)
        if not weight.is_floating_point():
            weight = weight.double()
        data_dim, latent_dim = weight.shape
        as_weight = dict(dtype=weight.dtype, device=weight.device)
        bias = torch.as_tensor(bias, **as_weight)
        noise_variance = torch.as_tensor(noise_variance, **as_weight)
        if bias.shape != (data_dim,) or noise_variance.shape != (data_dim,):
            raise InputError(
                f"Expected `bias` and `noise_variance` of shape ({data_dim},) to match weight {tuple(weight.shape)}, "
                f"got {tuple(bias.shape)} and {tuple(noise_variance.shape)}."
            )
        if not bool((noise_variance > 0).all()):
            raise InputError("Expected `noise_variance` to be positive everywhere, got a value <= 0.")
        self.data_dim = int(data_dim)
        self.latent_dim = int(latent_dim)
        self.noise_shape = (self.latent_dim,)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.register_buffer("noise_variance", noise_variance)

        given = [t is not None for t in (proposal_weight, proposal_bias, proposal_scale_tril)]
        if any(given) and not all(given):
            raise InputError("Give all of `proposal_weight`, `proposal_bias`, `proposal_scale_tril`, or none of them.")
        if not any(given):
            proposal_weight, proposal_bias, proposal_scale_tril = self.exact_posterior_params()
        proposal_weight = torch.as_tensor(proposal_weight, **as_weight)
        proposal_bias = torch.as_tensor(proposal_bias, **as_weight)
        proposal_scale_tril = torch.as_tensor(proposal_scale_tril, **as_weight)
        expected = {"proposal_weight": (latent_dim, data_dim), "proposal_bias": (latent_dim,),
                    "proposal_scale_tril": (latent_dim, latent_dim)}
        for name, tensor in zip(expected, (proposal_weight, proposal_bias, proposal_scale_tril)):
            if tuple(tensor.shape) != expected[name]:
                raise InputError(f"Expected `{name}` of shape {expected[name]}, got {tuple(tensor.shape)}.")
        self.register_buffer("proposal_weight", proposal_weight)
        self.register_buffer("proposal_bias", proposal_bias)
        self.register_buffer("proposal_scale_tril", proposal_scale_tril)

    @classmethod
    def random(cls, data_dim: int, latent_dim: int, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> "LinearGaussianModel":
        """Return a model with random W ~ N(0, 1), b ~ N(0, 1), psi ~ U(0.2, 1.2) (exact-posterior q)."""
        generator = torch.Generator().manual_seed(seed)
        weight = torch.randn(data_dim, latent_dim, generator=generator, dtype=dtype)
        bias = torch.randn(data_dim, generator=generator, dtype=dtype)
        noise_variance = 0.2 + torch.rand(data_dim, generator=generator, dtype=dtype)
        return cls(weight, bias, noise_variance)

    def exact_posterior_params(self) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(A, c, L)`` of the exact posterior ``p(z | x) = N(A x + c, L L^T)``, in float64."""
        weight = self.weight.double()
        scaled = weight / self.noise_variance.double().unsqueeze(1)  # Psi^{-1} W, (D, d)
        precision = torch.eye(self.latent_dim, dtype=torch.float64, device=weight.device) + weight.T @ scaled
        covariance = torch.cholesky_inverse(torch.linalg.cholesky(precision))
        proposal_weight = covariance @ scaled.T
        return proposal_weight, -proposal_weight @ self.bias.double(), torch.linalg.cholesky(covariance)

    def with_proposal(self, weight: Tensor, bias: Tensor, scale_tril: Tensor) -> "LinearGaussianModel":
        """Return the same generative model with proposal ``N(weight @ x + bias, scale_tril @ scale_tril.T)``."""
        return type(self)(self.weight, self.bias, self.noise_variance, proposal_weight=weight,
                          proposal_bias=bias, proposal_scale_tril=scale_tril)

    def proposal(self, x: Tensor) -> Distribution:
        loc = F.linear(x, self.proposal_weight, self.proposal_bias)
        return MultivariateNormal(loc, scale_tril=self.proposal_scale_tril, validate_args=False)

    def prior(self) -> Distribution:
        return standard_normal_prior(self.latent_dim, self.weight)

    def likelihood(self, z: Tensor) -> Distribution:
        loc = F.linear(z, self.weight, self.bias)
        return Independent(Normal(loc, self.noise_variance.sqrt().expand_as(loc), validate_args=False), 1)

    def marginal(self) -> MultivariateNormal:
        """Return ``p(x) = N(b, W W^T + diag psi)`` in float64."""
        weight = self.weight.double()
        covariance = weight @ weight.T + torch.diag(self.noise_variance.double())
        return MultivariateNormal(self.bias.double(), covariance_matrix=covariance)

    def log_marginal(self, x: Tensor) -> Tensor:
        """Return the exact ``log p(x)``.

        Parameters
        ----------
        x : Tensor, shape (B, D)

        Returns
        -------
        Tensor, shape (B,), float64
        """
        return self.marginal().log_prob(x.double())

    def posterior(self, x: Tensor) -> MultivariateNormal:
        """Return the exact posterior ``p(z | x)`` in float64, batch shape ``[B]``."""
        weight, bias, scale_tril = self.exact_posterior_params()
        return MultivariateNormal(F.linear(x.double(), weight, bias), scale_tril=scale_tril)

    def get_config(self) -> dict[str, Any]:
        return {"data_dim": self.data_dim, "latent_dim": self.latent_dim}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "LinearGaussianModel":
        """Return a placeholder model of the configured shape (W = 0, psi = 1) for loading weights into."""
        data_dim, latent_dim = int(config["data_dim"]), int(config["latent_dim"])
        return cls(torch.zeros(data_dim, latent_dim, dtype=torch.float64), torch.zeros(data_dim, dtype=torch.float64),
                   torch.ones(data_dim, dtype=torch.float64))
