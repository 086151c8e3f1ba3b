"""The IWAE paper's MLP architectures with one or more stochastic layers.

Burda, Grosse & Salakhutdinov (2016), "Importance Weighted Autoencoders", section 5:

* one stochastic layer: encoder 784-200-200-50 (tanh), decoder 50-200-200-784;
* two stochastic layers: encoder 784-200-200-100 then 100-100-100-50, decoder
  50-100-100-100 then 100-200-200-784.

Parameter names follow the widely used PyTorch reference implementation (classes ``IWAE_1``,
``IWAE_2``), so its state_dicts load directly: a Gaussian block is
``transform = Linear-Tanh-Linear-Tanh`` then heads ``fc_mu`` and ``fc_logsigma`` with
``sigma = exp(logsigma)`` (a standard deviation); ``encoder_h{l}`` gives q(h_l | h_{l-1})
(``h_0 = x``), ``decoder_h{l}`` gives p(h_l | h_{l+1}), and ``decoder_x`` is
``Linear-Tanh-Linear-Tanh-Linear`` whose output are Bernoulli logits (the reference applies a
Sigmoid, which has no parameters, so the state_dict keys are the same).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal

from ..errors import CheckpointError, InputError
from .base import LatentVariableModel, working_bytes
from .gaussian_chain import GaussianChain
from .base import log_joint_from_factories
from .densities import (
    Tanh,
    bernoulli_log_likelihood,
    normal_log_density,
    reparameterised_normal_log_density,
    standard_normal_log_density,
)
from .row_pieces import map_row_pieces
from .tanh_chain import chain_layers, sigmoid_form, sigmoid_form_applies


class GaussianBlock(nn.Module):
    """Two tanh layers, then mean and log-standard-deviation heads (the reference ``BasicBlock``)."""

    def __init__(self, input_dim: int, hidden_dims: Sequence[int], output_dim: int) -> None:
        super().__init__()
        first, second = hidden_dims
        self.transform = nn.Sequential(nn.Linear(input_dim, first), Tanh(), nn.Linear(first, second), Tanh())
        self.fc_mu = nn.Linear(second, output_dim)
        self.fc_logsigma = nn.Linear(second, output_dim)

    def forward(self, h: Tensor) -> Normal:
        """Return the diagonal Gaussian N(mu(h), exp(logsigma(h))^2), batch shape ``h.shape[:-1] + [out]``."""
        mu, log_sigma = self.params(h)
        return Normal(mu, log_sigma.exp(), validate_args=False)

    def params(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(mu(h), logsigma(h))``, each of shape ``h.shape[:-1] + [out]``.

        On the CPU (no autograd) the two tanh layers and both heads run as one chain in
        sigmoid form (:mod:`evalkit.models.tanh_chain`), bitwise equal to the modules.
        """
        linears = chain_layers(self.transform)
        if linears is not None and len(self.transform) == 2 * len(linears) and sigmoid_form_applies(h, self):
            return sigmoid_form(self, "params", [*linears, (self.fc_mu, self.fc_logsigma)], h)
        hidden = self.transform(h)
        return self.fc_mu(hidden), self.fc_logsigma(hidden)


class IWAE(LatentVariableModel):
    """Hierarchical MLP VAE with ``L`` Gaussian stochastic layers and a Bernoulli decoder.

    .. math::

        q(h_1, \\dots, h_L \\mid x) = \\prod_{l=1}^{L} q(h_l \\mid h_{l-1}), \\quad h_0 = x, \\qquad
        p(x, h) = p(h_L) \\prod_{l=1}^{L-1} p(h_l \\mid h_{l+1})\\; p(x \\mid h_1),

    with ``p(h_L) = N(0, I)``, diagonal-Gaussian conditionals and Bernoulli ``p(x | h_1)``.
    Noise: ``noise_shape = (sum(latent_dims),)``; the first ``latent_dims[0]`` columns drive
    ``h_1``, the next ``latent_dims[1]`` drive ``h_2``, and so on.

    Parameters
    ----------
    data_dim : int
    latent_dims : sequence of int
        ``[d_1, ..., d_L]`` from the data upwards.
    encoder_hidden_dims : sequence of (int, int)
        Hidden widths of ``encoder_h1 .. encoder_hL``.
    decoder_hidden_dims : sequence of (int, int)
        Hidden widths of ``decoder_h1 .. decoder_h{L-1}`` then ``decoder_x``; default: mirror
        the encoder (``decoder_h{l}`` like ``encoder_h{l+1}``, ``decoder_x`` like ``encoder_h1``).

    See Also
    --------
    IWAE.burda_one_layer, IWAE.burda_two_layer
    """

    requires_binary_data = True

    def __init__(
        self,
        data_dim: int,
        latent_dims: Sequence[int],
        encoder_hidden_dims: Sequence[Sequence[int]],
        decoder_hidden_dims: Sequence[Sequence[int]] | None = None,
    ) -> None:
        super().__init__()
        latent_dims = [int(d) for d in latent_dims]
        encoder_hidden_dims = [[int(h) for h in pair] for pair in encoder_hidden_dims]
        n_layers = len(latent_dims)
        if n_layers < 1 or len(encoder_hidden_dims) != n_layers or any(len(p) != 2 for p in encoder_hidden_dims):
            raise InputError(
                "Expected one (width, width) pair in `encoder_hidden_dims` per stochastic layer in `latent_dims`, "
                f"got latent_dims={latent_dims} and encoder_hidden_dims={encoder_hidden_dims}."
            )
        if decoder_hidden_dims is None:
            decoder_hidden_dims = encoder_hidden_dims[1:] + encoder_hidden_dims[:1]
        decoder_hidden_dims = [[int(h) for h in pair] for pair in decoder_hidden_dims]
        if len(decoder_hidden_dims) != n_layers or any(len(p) != 2 for p in decoder_hidden_dims):
            raise InputError(
                f"Expected {n_layers} (width, width) pairs in `decoder_hidden_dims` (decoder_h1..decoder_h"
                f"{n_layers - 1}, then decoder_x), got {decoder_hidden_dims}."
            )
        self.data_dim = int(data_dim)
        self.latent_dims = latent_dims
        self.encoder_hidden_dims = encoder_hidden_dims
        self.decoder_hidden_dims = decoder_hidden_dims
        self.noise_shape = (sum(latent_dims),)

        inputs = [self.data_dim, *latent_dims[:-1]]
        for layer in range(n_layers):
            block = GaussianBlock(inputs[layer], encoder_hidden_dims[layer], latent_dims[layer])
            self.add_module(f"encoder_h{layer + 1}", block)
        for layer in range(n_layers - 1):
            block = GaussianBlock(latent_dims[layer + 1], decoder_hidden_dims[layer], latent_dims[layer])
            self.add_module(f"decoder_h{layer + 1}", block)
        first, second = decoder_hidden_dims[-1]
        self.decoder_x = nn.Sequential(
            nn.Linear(latent_dims[0], first), Tanh(), nn.Linear(first, second), Tanh(),
            nn.Linear(second, self.data_dim),
        )

    @classmethod
    def burda_one_layer(cls, data_dim: int = 784) -> "IWAE":
        """Return the paper's one-stochastic-layer model: 784-200-200-50 and back."""
        return cls(data_dim, [50], [[200, 200]])

    @classmethod
    def burda_two_layer(cls, data_dim: int = 784) -> "IWAE":
        """Return the paper's two-stochastic-layer model: 784-200-200-100-100-100-50 and back."""
        return cls(data_dim, [100, 50], [[200, 200], [100, 100]])

    def log_weights(self, x: Tensor, noise: Tensor) -> Tensor:
        """Return ``log p(x, h) - log q(h | x)`` at ``h = reparameterised(noise)``, shape ``[B, k]``.

        The densities are written out (:mod:`evalkit.models.densities`): ``log q`` of a
        reparameterised Gaussian uses the noise itself, and each layer's terms are reduced in
        the compute dtype and added in float64.
        """
        eps = noise.split(self.latent_dims, dim=-1)
        n_layers = len(self.latent_dims)
        # q(h_1 | x) runs once per datapoint, then broadcasts over the k samples.
        mu, log_sigma = self.encoder_h1.params(x)
        mu, log_sigma = mu.unsqueeze(1), log_sigma.unsqueeze(1)
        h = [mu + log_sigma.exp() * eps[0]]
        log_q = reparameterised_normal_log_density(eps[0], log_sigma).double()
        for layer in range(1, n_layers):
            mu, log_sigma = getattr(self, f"encoder_h{layer + 1}").params(h[-1])
            h.append(mu + log_sigma.exp() * eps[layer])
            log_q = log_q + reparameterised_normal_log_density(eps[layer], log_sigma).double()

        log_p = standard_normal_log_density(h[-1]).double()
        for layer in range(n_layers - 1):
            mu, log_sigma = getattr(self, f"decoder_h{layer + 1}").params(h[layer + 1])
            log_p = log_p + normal_log_density(h[layer], mu, log_sigma).double()
        log_p = log_p + self._log_likelihood(h[0], x).double()
        return log_p - log_q

    # The annealed-importance-sampling protocol (evalkit.models.base), over z = concat(h_1, ..., h_L).
    # These run the modules themselves (not the sigmoid-form fast path) so that autograd reaches z.

    def proposal(self, x: Tensor) -> GaussianChain:
        """Return q(h_1 | x) q(h_2 | h_1) ... over ``z = concat(h_1, ..., h_L)``, batch shape ``[B]``."""
        mu, log_sigma = self.encoder_h1.params(x)
        conditionals = [_block_conditional(getattr(self, f"encoder_h{layer + 1}")) for layer in range(1, len(self.latent_dims))]
        return GaussianChain(self.latent_dims, range(len(self.latent_dims)), mu, log_sigma, conditionals)

    def prior(self) -> GaussianChain:
        """Return p(h_L) p(h_{L-1} | h_L) ... p(h_1 | h_2) over ``z = concat(h_1, ..., h_L)``, batch shape ``[]``."""
        n_layers = len(self.latent_dims)
        weight = self.decoder_x[0].weight
        zeros = torch.zeros(self.latent_dims[-1], dtype=weight.dtype, device=weight.device)
        conditionals = [_block_conditional(getattr(self, f"decoder_h{layer}")) for layer in range(n_layers - 1, 0, -1)]
        return GaussianChain(self.latent_dims, range(n_layers - 1, -1, -1), zeros, zeros, conditionals)

    def likelihood(self, z: Tensor) -> Distribution:
        """Return p(x | h_1) = Bernoulli(logits=decoder_x(h_1)), batch shape ``z.shape[:-1]``."""
        logits = self.decoder_x(z[..., : self.latent_dims[0]])
        return Independent(Bernoulli(logits=logits, validate_args=False), 1)

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """Return ``log p(h_L) + sum_l log p(h_l | h_{l+1}) + log p(x | h_1)``, shape ``[B, C]``, float64."""
        return log_joint_from_factories(self, x, z)

    def log_joint_and_grad(self, x: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """Return :meth:`log_joint` ``[B, C]`` (float64) and its gradient in ``z``, without autograd when possible.

        One stochastic layer: the decoder's backward pass written out (three matmuls with the
        transposed weights and the tanh and Bernoulli derivatives, ``d/dl log sigmoid(s l) =
        s (1 - sigmoid(s l))``), about half the cost of autograd on the CPU. Otherwise autograd.
        The value equals :meth:`log_joint` up to rounding.
        """
        linears = chain_layers(self.decoder_x)
        if len(self.latent_dims) != 1 or linears is None or len(linears) != 3 or torch.is_grad_enabled():
            with torch.enable_grad():
                z = z.detach().requires_grad_(True)
                value = self.log_joint(x, z)
                (grad,) = torch.autograd.grad(value.sum(), z)
            return value.detach(), grad
        first, second, third = linears
        # tanh(a) = 2 sigmoid(2a) - 1, 1 - tanh(a)^2 = 4 s (1 - s): sigmoid is the fast one on CPUs (densities.Tanh).
        s1 = F.linear(z, first.weight, first.bias).mul_(2).sigmoid_()
        t1 = s1 * 2 - 1
        s2 = F.linear(t1, second.weight, second.bias).mul_(2).sigmoid_()
        t2 = s2 * 2 - 1
        signed = F.linear(t2, third.weight, third.bias).mul_((2 * x - 1).unsqueeze(1))
        log_likelihood = F.logsigmoid(signed).sum(-1)  # stable where a pixel is confidently wrong
        prob = torch.sigmoid(signed)  # sigmoid(s l): the probability of the observed pixel
        grad_logits = prob.neg_().add_(1).mul_((2 * x - 1).unsqueeze(1))
        grad_t2 = F.linear(grad_logits, third.weight.T).mul_(s2 * (1 - s2)).mul_(4)
        grad_t1 = F.linear(grad_t2, second.weight.T).mul_(s1 * (1 - s1)).mul_(4)
        grad = F.linear(grad_t1, first.weight.T) - z
        value = standard_normal_log_density(z).double() + log_likelihood.double()
        return value, grad

    def reparameterize(self, q: GaussianChain, noise: Tensor) -> Tensor:
        """Return samples of :meth:`proposal` or :meth:`prior` (batch ``[B]``) from noise ``[B, C, sum(latent_dims)]``."""
        return q.from_noise(noise)

    def _log_likelihood(self, h1: Tensor, x: Tensor) -> Tensor:
        """Return ``log p(x | h1)``, shape ``h1.shape[:2]``; on the CPU in cache-sized pieces (:mod:`evalkit.models.row_pieces`)."""
        def log_likelihood(h1_piece: Tensor, x_piece: Tensor) -> Tensor:
            return bernoulli_log_likelihood(self.logits(h1_piece), x_piece, overwrite=True)

        if sigmoid_form_applies(h1, self):
            return map_row_pieces(log_likelihood, h1, x, self.data_dim)
        return log_likelihood(h1, x)

    def logits(self, h1: Tensor) -> Tensor:
        """Return ``decoder_x(h1)``, the Bernoulli logits, shape ``h1.shape[:-1] + [data_dim]``.

        In sigmoid form on the CPU (:mod:`evalkit.models.tanh_chain`).
        """
        linears = chain_layers(self.decoder_x)
        if linears is not None and len(self.decoder_x) == 2 * len(linears) - 1 and sigmoid_form_applies(h1, self):
            return sigmoid_form(self, "decoder_x", linears, h1)
        return self.decoder_x(h1)

    def bytes_per_sample(self, dtype: torch.dtype) -> int:
        """Working memory per importance sample (the engine's planning hook): the per-sample networks' activations."""
        n_layers = len(self.latent_dims)
        per_sample = [getattr(self, f"encoder_h{layer + 1}") for layer in range(1, n_layers)]
        per_sample += [getattr(self, f"decoder_h{layer + 1}") for layer in range(n_layers - 1)] + [self.decoder_x]
        # Noise, samples and their squares; the float64 terms of the result.
        return working_bytes(per_sample, dtype, extra_floats=4 * sum(self.latent_dims)) + 32

    def bytes_per_datapoint(self, dtype: torch.dtype) -> int:
        """Working memory per datapoint: the data row and ``q(h_1 | x)``'s activations."""
        return working_bytes([self.encoder_h1], dtype, extra_floats=2 * self.data_dim)

    def get_config(self) -> dict[str, Any]:
        return {
            "data_dim": self.data_dim,
            "latent_dims": list(self.latent_dims),
            "encoder_hidden_dims": [list(p) for p in self.encoder_hidden_dims],
            "decoder_hidden_dims": [list(p) for p in self.decoder_hidden_dims],
        }


def _block_conditional(block: GaussianBlock):
    """Return ``h -> (mu, logsigma)`` of a Gaussian block through its modules (autograd-friendly)."""
    def conditional(h: Tensor) -> tuple[Tensor, Tensor]:
        hidden = block.transform(h)
        return block.fc_mu(hidden), block.fc_logsigma(hidden)

    return conditional


def _block_dims(state_dict: Mapping[str, Tensor], name: str) -> tuple[int, list[int], int]:
    """Return (input, [hidden, hidden], output) widths of a Gaussian block from its weights."""
    try:
        first = state_dict[f"{name}.transform.0.weight"]
        second = state_dict[f"{name}.transform.2.weight"]
        mu = state_dict[f"{name}.fc_mu.weight"]
        logsigma = state_dict[f"{name}.fc_logsigma.weight"]
    except KeyError as missing:
        raise CheckpointError(
            f"IWAE reference checkpoint block '{name}' lacks key {missing}; a block needs transform.0, transform.2, "
            "fc_mu and fc_logsigma weights and biases."
        ) from None
    if second.shape[1] != first.shape[0] or mu.shape[1] != second.shape[0] or logsigma.shape != mu.shape:
        raise CheckpointError(
            f"IWAE reference checkpoint block '{name}' has inconsistent weight shapes "
            f"{tuple(first.shape)}, {tuple(second.shape)}, {tuple(mu.shape)}, {tuple(logsigma.shape)}; "
            "expected Linear(a, b), Linear(b, c) and two Linear(c, d) heads."
        )
    return int(first.shape[1]), [int(first.shape[0]), int(second.shape[0])], int(mu.shape[0])


def config_from_reference_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """Infer :class:`IWAE` constructor arguments from a reference-layout state_dict.

    Parameters
    ----------
    state_dict : mapping
        Keys ``encoder_h1.transform.{0,2}.{weight,bias}``, ``encoder_h1.fc_mu.*``,
        ``encoder_h1.fc_logsigma.*``, ``decoder_x.{0,2,4}.*`` and, for ``L`` layers,
        ``encoder_h2..encoder_hL`` and ``decoder_h1..decoder_h{L-1}`` blocks (no prefix).

    Returns
    -------
    dict
        ``data_dim``, ``latent_dims``, ``encoder_hidden_dims``, ``decoder_hidden_dims``.
    """
    n_layers = 0
    while f"encoder_h{n_layers + 1}.fc_mu.weight" in state_dict:
        n_layers += 1
    if n_layers == 0:
        raise CheckpointError("IWAE reference checkpoint has no 'encoder_h1.fc_mu.weight'; it is not in the reference layout.")
    encoder = [_block_dims(state_dict, f"encoder_h{layer + 1}") for layer in range(n_layers)]
    decoder = [_block_dims(state_dict, f"decoder_h{layer + 1}") for layer in range(n_layers - 1)]
    data_dim = encoder[0][0]
    latent_dims = [block[2] for block in encoder]
    for layer in range(1, n_layers):
        if encoder[layer][0] != latent_dims[layer - 1]:
            raise CheckpointError(
                f"IWAE reference checkpoint: encoder_h{layer + 1} takes {encoder[layer][0]} inputs but encoder_h{layer} "
                f"gives {latent_dims[layer - 1]}; the blocks do not chain."
            )
    for layer, (n_in, _, n_out) in enumerate(decoder):
        if (n_in, n_out) != (latent_dims[layer + 1], latent_dims[layer]):
            raise CheckpointError(
                f"IWAE reference checkpoint: decoder_h{layer + 1} maps {n_in} -> {n_out}, expected "
                f"{latent_dims[layer + 1]} -> {latent_dims[layer]} (mirroring the encoder)."
            )
    try:
        x_weights = [state_dict[f"decoder_x.{i}.weight"] for i in (0, 2, 4)]
    except KeyError as missing:
        raise CheckpointError(
            f"IWAE reference checkpoint lacks {missing}; decoder_x must be Linear-Tanh-Linear-Tanh-Linear(-Sigmoid)."
        ) from None
    expected_in = [latent_dims[0], x_weights[0].shape[0], x_weights[1].shape[0]]
    if [w.shape[1] for w in x_weights] != expected_in or x_weights[2].shape[0] != data_dim:
        raise CheckpointError(
            "IWAE reference checkpoint: decoder_x weight shapes "
            f"{[tuple(w.shape) for w in x_weights]} do not map {latent_dims[0]} latent units to {data_dim} pixels."
        )
    return {
        "data_dim": data_dim,
        "latent_dims": latent_dims,
        "encoder_hidden_dims": [block[1] for block in encoder],
        "decoder_hidden_dims": [block[1] for block in decoder] + [[int(x_weights[0].shape[0]), int(x_weights[1].shape[0])]],
    }


def is_reference_layout(keys: Sequence[str]) -> bool:
    """Return True when state_dict ``keys`` (prefix removed) are in the IWAE reference layout."""
    keys = set(keys)
    return {"encoder_h1.transform.0.weight", "encoder_h1.fc_mu.weight", "encoder_h1.fc_logsigma.weight",
            "decoder_x.0.weight", "decoder_x.4.weight"} <= keys


REFERENCE_ANCHOR_KEY = "encoder_h1.transform.0.weight"
"""A key every reference-layout state_dict has; used to find a wrapper prefix."""

__all__ = ["GaussianBlock", "IWAE", "config_from_reference_state_dict", "is_reference_layout", "REFERENCE_ANCHOR_KEY"]
