"""A multilayer-perceptron VAE with a diagonal-Gaussian encoder."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal

from ..errors import InputError
from .base import EncoderDecoderModel, standard_normal_prior, working_bytes
from .densities import (
    Tanh,
    bernoulli_log_likelihood,
    normal_log_density,
    reparameterised_normal_log_density,
    standard_normal_log_density,
)
from .row_pieces import map_row_pieces
from .tanh_chain import chain_layers, sigmoid_form, sigmoid_form_applies

ACTIVATIONS = {"tanh": Tanh, "relu": nn.ReLU, "softplus": nn.Softplus}
LIKELIHOODS = ("bernoulli", "gaussian")


def mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """Return Linear-activation layers through ``sizes`` (an activation after every Linear)."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), ACTIVATIONS[activation]()]
    return nn.Sequential(*layers)


class MLPVAE(EncoderDecoderModel):
    """VAE with MLP encoder and decoder.

    .. math::

        q(z \\mid x) = \\mathcal{N}(z;\\, \\mu(x), \\operatorname{diag} \\sigma(x)^2), \\quad
        p(z) = \\mathcal{N}(0, I), \\quad
        p(x \\mid z) = \\prod_j \\mathrm{Bernoulli}(x_j;\\, \\mathrm{logits}_j(z))
        \\ \\text{or}\\ \\prod_j \\mathcal{N}(x_j;\\, m_j(z), s_j(z)^2),

    with ``sigma = exp(log_scale)`` from a linear head.

    Parameters
    ----------
    data_dim : int
        Length of a datapoint.
    latent_dim : int
        Dimension of z.
    hidden_dims : sequence of int, default (200, 200)
        Hidden layer widths of the encoder; the decoder mirrors them.
    likelihood : {"bernoulli", "gaussian"}
        Decoder family: Bernoulli with logits, or a diagonal Gaussian with a mean head and a
        log-standard-deviation head.
    activation : {"tanh", "relu", "softplus"}
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        hidden_dims: Sequence[int] = (200, 200),
        *,
        likelihood: str = "bernoulli",
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise InputError(f"Expected argument `likelihood` to be one of {list(LIKELIHOODS)}, got {likelihood!r}.")
        if activation not in ACTIVATIONS:
            raise InputError(f"Expected argument `activation` to be one of {sorted(ACTIVATIONS)}, got {activation!r}.")
        hidden_dims = [int(h) for h in hidden_dims]
        if not hidden_dims:
            raise InputError("Expected argument `hidden_dims` to name at least one hidden layer, got [].")
        self.data_dim = int(data_dim)
        self.latent_dim = int(latent_dim)
        self.hidden_dims = hidden_dims
        self.likelihood_name = likelihood
        self.activation = activation
        self.noise_shape = (self.latent_dim,)
        self.requires_binary_data = likelihood == "bernoulli"

        self.encoder = mlp([self.data_dim, *hidden_dims], activation)
        self.encoder_loc = nn.Linear(hidden_dims[-1], self.latent_dim)
        self.encoder_log_scale = nn.Linear(hidden_dims[-1], self.latent_dim)
        self.decoder = mlp([self.latent_dim, *reversed(hidden_dims)], activation)
        self.decoder_loc = nn.Linear(hidden_dims[0], self.data_dim)  # logits for Bernoulli
        self.decoder_log_scale = nn.Linear(hidden_dims[0], self.data_dim) if likelihood == "gaussian" else None

    def proposal(self, x: Tensor) -> Distribution:
        hidden = self.encoder(x)
        scale = self.encoder_log_scale(hidden).exp()
        return Independent(Normal(self.encoder_loc(hidden), scale, validate_args=False), 1)

    def prior(self) -> Distribution:
        return standard_normal_prior(self.latent_dim, self.encoder_loc.weight)

    def likelihood(self, z: Tensor) -> Distribution:
        hidden = self.decoder(z)
        if self.decoder_log_scale is None:
            return Independent(Bernoulli(logits=self.decoder_loc(hidden), validate_args=False), 1)
        scale = self.decoder_log_scale(hidden).exp()
        return Independent(Normal(self.decoder_loc(hidden), scale, validate_args=False), 1)

    def log_weights(self, x: Tensor, noise: Tensor) -> Tensor:
        """Return ``log p(x | z) + log p(z) - log q(z | x)`` at ``z = mu(x) + sigma(x) * noise``, shape ``[B, k]``.

        The same densities as :meth:`proposal`, :meth:`prior` and :meth:`likelihood`, written
        out (:mod:`evalkit.models.densities`); each term is reduced in the compute dtype and
        the three are added in float64.
        """
        loc, log_scale = self._encoder_heads(x)
        loc, log_scale = loc.unsqueeze(1), log_scale.unsqueeze(1)
        z = loc + log_scale.exp() * noise
        log_q = reparameterised_normal_log_density(noise, log_scale)
        log_prior = standard_normal_log_density(z)
        return self._log_likelihood(z, x).double() + log_prior.double() - log_q.double()

    def _log_likelihood(self, z: Tensor, x: Tensor) -> Tensor:
        """Return ``log p(x | z)``, shape ``z.shape[:2]``; on the CPU in cache-sized pieces (:mod:`evalkit.models.row_pieces`)."""
        def log_likelihood(z_piece: Tensor, x_piece: Tensor) -> Tensor:
            heads = self._decoder_heads(z_piece)
            if self.decoder_log_scale is None:
                return bernoulli_log_likelihood(heads[0], x_piece, overwrite=True)
            return normal_log_density(x_piece.unsqueeze(1), *heads)

        if sigmoid_form_applies(z, self):
            n_heads = 1 if self.decoder_log_scale is None else 2
            return map_row_pieces(log_likelihood, z, x, n_heads * self.data_dim)
        return log_likelihood(z, x)

    def _encoder_heads(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(loc, log_scale)`` of q(z | x); tanh networks run in sigmoid form on the CPU (bitwise the same)."""
        linears = chain_layers(self.encoder)
        if linears is not None and len(self.encoder) == 2 * len(linears) and sigmoid_form_applies(x, self):
            return sigmoid_form(self, "encoder", [*linears, (self.encoder_loc, self.encoder_log_scale)], x)
        hidden = self.encoder(x)
        return self.encoder_loc(hidden), self.encoder_log_scale(hidden)

    def _decoder_heads(self, z: Tensor) -> tuple[Tensor, ...]:
        """Return the decoder's ``(logits,)`` or ``(loc, log_scale)``, like :meth:`_encoder_heads`."""
        heads = [self.decoder_loc] + ([self.decoder_log_scale] if self.decoder_log_scale is not None else [])
        linears = chain_layers(self.decoder)
        if linears is not None and len(self.decoder) == 2 * len(linears) and sigmoid_form_applies(z, self):
            return sigmoid_form(self, "decoder", [*linears, heads], z)
        hidden = self.decoder(z)
        return tuple(head(hidden) for head in heads)

    def bytes_per_sample(self, dtype: torch.dtype) -> int:
        """Working memory per importance sample (the engine's planning hook): the decoder's activations."""
        heads = [self.decoder_loc] + ([self.decoder_log_scale] if self.decoder_log_scale is not None else [])
        return working_bytes([self.decoder, *heads], dtype, extra_floats=4 * self.latent_dim) + 32

    def bytes_per_datapoint(self, dtype: torch.dtype) -> int:
        """Working memory per datapoint: the data row and the encoder's activations."""
        return working_bytes([self.encoder, self.encoder_loc, self.encoder_log_scale], dtype,
                             extra_floats=2 * self.data_dim)

    def get_config(self) -> dict[str, Any]:
        return {
            "data_dim": self.data_dim,
            "latent_dim": self.latent_dim,
            "hidden_dims": list(self.hidden_dims),
            "likelihood": self.likelihood_name,
            "activation": self.activation,
        }
