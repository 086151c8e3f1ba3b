"""A convolutional VAE for image data with discrete, binary or dequantised decoders."""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal

from ..errors import InputError
from .base import EncoderDecoderModel, standard_normal_prior
from .densities import reparameterised_normal_log_density, standard_normal_log_density
from .discrete import DequantizedDensity, DiscretizedLogistic, DiscretizedLogisticMixture, PixelCategorical
from .vae import ACTIVATIONS

DECODERS = ("logistic", "logistic_mixture", "categorical", "bernoulli", "dequantized_gaussian")
"""Decoder families of :class:`ConvVAE` (see its docstring)."""


class ConvVAE(EncoderDecoderModel):
    """VAE with a convolutional encoder and a transposed-convolution decoder.

    .. math::

        q(z \\mid x) = \\mathcal{N}(\\mu(x), \\operatorname{diag}\\sigma(x)^2), \\quad
        p(z) = \\mathcal{N}(0, I), \\quad
        p(x \\mid z) = \\prod_{c, h, w} p(x_{chw} \\mid \\theta_{chw}(z)).

    Encoder: per entry of ``channels`` a ``Conv2d(kernel 4, stride 2, padding 1)`` and the
    activation (each halves H and W), then linear heads for ``mu`` and ``log sigma``. Decoder:
    a linear layer to the last feature map, then the mirrored ``ConvTranspose2d`` layers, the
    last of which outputs the decoder's parameters per pixel.

    Data are integer images ``x`` in ``0..levels-1`` (flattened to ``[B, C*H*W]``,
    channel-major, by the engine); the encoder sees ``2 x / (levels - 1) - 1``.

    Parameters
    ----------
    image_shape : (C, H, W)
        H and W divisible by ``2 ** len(channels)``.
    latent_dim : int
    channels : sequence of int, default (32, 64)
        Feature maps of the encoder's convolutions (the decoder mirrors them).
    decoder : {"logistic", "logistic_mixture", "categorical", "bernoulli", "dequantized_gaussian"}
        ``"logistic"``: :class:`~evalkit.models.discrete.DiscretizedLogistic` (loc, log-scale
        per pixel, on the ``[-1, 1]`` scale); ``"logistic_mixture"``: its mixture with
        ``n_components``; ``"categorical"``: ``levels`` logits per pixel; ``"bernoulli"``:
        binary data (``levels`` must be 2); ``"dequantized_gaussian"``: a Gaussian density on
        ``y = (x + u) / levels`` with ``u ~ U(0, 1)`` drawn with ``z`` (the noise has
        ``latent_dim + C*H*W`` entries, ``u = Phi(noise)``), so each log-weight includes the
        change of units ``-D log(levels)`` and IWAE converges to the log mass of x's bin.
    levels : int, default 256
        Values a pixel takes (``data_levels``).
    n_components : int, default 5
        Mixture components (``"logistic_mixture"`` only).
    activation : {"relu", "tanh", "softplus"}
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (1, 8, 8),
        latent_dim: int = 8,
        channels: Sequence[int] = (32, 64),
        *,
        decoder: str = "logistic",
        levels: int = 256,
        n_components: int = 5,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self._check_args(image_shape, channels, decoder, levels, n_components, activation)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.latent_dim, self.channels = int(latent_dim), [int(c) for c in channels]
        self.decoder_name, self.data_levels, self.n_components = decoder, int(levels), int(n_components)
        self.activation = activation
        self.data_dim = math.prod(self.image_shape)
        self.requires_binary_data = decoder == "bernoulli"
        extra = self.data_dim if decoder == "dequantized_gaussian" else 0
        self.noise_shape = (self.latent_dim + extra,)

        n_channels, height, width = self.image_shape
        shrink = 2 ** len(self.channels)
        self._feature_shape = (self.channels[-1], height // shrink, width // shrink)
        features = math.prod(self._feature_shape)
        encoder: list[nn.Module] = []
        for c_in, c_out in zip([n_channels, *self.channels[:-1]], self.channels):
            encoder += [nn.Conv2d(c_in, c_out, 4, 2, 1), ACTIVATIONS[activation]()]
        self.encoder = nn.Sequential(*encoder, nn.Flatten())
        self.encoder_loc = nn.Linear(features, self.latent_dim)
        self.encoder_log_scale = nn.Linear(features, self.latent_dim)
        decoder_layers: list[nn.Module] = [nn.Linear(self.latent_dim, features), ACTIVATIONS[activation](),
                                           nn.Unflatten(1, self._feature_shape)]
        widths = self.channels[::-1]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            decoder_layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1), ACTIVATIONS[activation]()]
        decoder_layers.append(nn.ConvTranspose2d(widths[-1], n_channels * self.params_per_pixel, 4, 2, 1))
        self.decoder = nn.Sequential(*decoder_layers)

    @staticmethod
    def _check_args(image_shape, channels, decoder, levels, n_components, activation) -> None:
        if decoder not in DECODERS:
            raise InputError(f"Expected argument `decoder` to be one of {list(DECODERS)}, got {decoder!r}.")
        if activation not in ACTIVATIONS:
            raise InputError(f"Expected argument `activation` to be one of {sorted(ACTIVATIONS)}, got {activation!r}.")
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise InputError(f"Expected argument `image_shape` to be (C, H, W) of positive ints, got {tuple(image_shape)}.")
        shrink = 2 ** len(channels)
        if not channels or image_shape[1] % shrink or image_shape[2] % shrink:
            raise InputError(
                f"Expected H and W of image_shape {tuple(image_shape)} to be divisible by 2 ** len(channels) = {shrink} "
                "(each convolution halves them); use fewer channels entries."
            )
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2 or (decoder == "bernoulli" and levels != 2):
            raise InputError(f"Expected argument `levels` to be an int >= 2 (exactly 2 for decoder='bernoulli'), got {levels!r}.")
        if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
            raise InputError(f"Expected argument `n_components` to be a positive int, got {n_components!r}.")

    @property
    def params_per_pixel(self) -> int:
        """Decoder outputs per pixel and channel."""
        return {"logistic": 2, "logistic_mixture": 3 * self.n_components, "categorical": self.data_levels,
                "bernoulli": 1, "dequantized_gaussian": 2}[self.decoder_name]

    def scale_input(self, x: Tensor) -> Tensor:
        """Return the encoder's input ``2 x / (levels - 1) - 1`` as images ``[B, C, H, W]``."""
        return (x.reshape(-1, *self.image_shape) * (2.0 / (self.data_levels - 1)) - 1.0).to(self.encoder_loc.weight.dtype)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(mu, log sigma)`` of q(z | x), each ``[B, latent_dim]``, for ``x: [B, C*H*W]``."""
        hidden = self.encoder(self.scale_input(x))
        return self.encoder_loc(hidden), self.encoder_log_scale(hidden)

    def proposal(self, x: Tensor) -> Distribution:
        loc, log_scale = self.encode(x)
        return Independent(Normal(loc, log_scale.exp(), validate_args=False), 1)

    def prior(self) -> Distribution:
        return standard_normal_prior(self.latent_dim, self.encoder_loc.weight)

    def likelihood(self, z: Tensor) -> Distribution:
        """Return p(x | z) with batch shape ``z.shape[:-1]`` and event shape ``(C, H, W)``.

        For ``"dequantized_gaussian"`` it is a density of ``w = x + u`` on the integer scale
        (:class:`~evalkit.models.discrete.DequantizedDensity`), not a probability of ``x``.
        """
        batch = z.shape[:-1]
        out = self.decoder(z.reshape(-1, self.latent_dim))
        # [N, P * C, H, W] -> [..., C, H, W, P]: parameters of one pixel last.
        params = out.reshape(*batch, self.params_per_pixel, *self.image_shape).movedim(len(batch), -1)
        name, levels = self.decoder_name, self.data_levels
        if name == "logistic":
            dist: Distribution = DiscretizedLogistic(params[..., 0], params[..., 1].exp(), levels, validate_args=False)
        elif name == "logistic_mixture":
            logits, loc, log_scale = params.chunk(3, dim=-1)
            dist = DiscretizedLogisticMixture(logits, loc, log_scale.exp(), levels, validate_args=False)
        elif name == "categorical":
            dist = PixelCategorical(params, validate_args=False)
        elif name == "bernoulli":
            dist = Bernoulli(logits=params[..., 0], validate_args=False)
        else:
            base = Normal(params[..., 0], params[..., 1].exp(), validate_args=False)
            dist = DequantizedDensity(base, levels, validate_args=False)
        return Independent(dist, 3, validate_args=False)

    def log_weights(self, x: Tensor, noise: Tensor) -> Tensor:
        """Return ``log p(x | z) + log p(z) - log q(z | x)``, shape ``[B, k]``.

        ``z = mu(x) + sigma(x) * noise[..., :latent_dim]``; for the dequantised decoder
        ``u = Phi(noise[..., latent_dim:])`` (uniform, with density 1, so ``log q`` is
        unchanged) and the likelihood is evaluated at ``x + u``. Terms are added in float64.
        """
        n_batch = x.shape[0]
        eps = noise[..., : self.latent_dim]
        loc, log_scale = self.encode(x)
        log_scale = log_scale.unsqueeze(1)
        z = loc.unsqueeze(1) + log_scale.exp() * eps
        log_q = reparameterised_normal_log_density(eps, log_scale)
        log_prior = standard_normal_log_density(z)
        value = x.reshape(n_batch, 1, *self.image_shape).to(z.dtype)
        if self.decoder_name == "dequantized_gaussian":
            value = value + torch.special.ndtr(noise[..., self.latent_dim:]).reshape(*noise.shape[:2], *self.image_shape)
        log_likelihood = self.likelihood(z).log_prob(value)
        return log_likelihood.double() + log_prior.double() - log_q.double()

    def get_config(self) -> dict[str, Any]:
        return {
            "image_shape": list(self.image_shape),
            "latent_dim": self.latent_dim,
            "channels": list(self.channels),
            "decoder": self.decoder_name,
            "levels": self.data_levels,
            "n_components": self.n_components,
            "activation": self.activation,
        }


__all__ = ["ConvVAE", "DECODERS"]
